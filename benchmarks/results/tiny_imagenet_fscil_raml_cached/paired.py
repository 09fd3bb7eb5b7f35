"""Print this page's table: RAML with cached meta-training, its ablations and the baselines, paired by seed
with `prototype` and with `raml` on the same base sessions.

Run from the repository root: ``python benchmarks/results/tiny_imagenet_fscil_raml_cached/paired.py``.
Reads ``<folder>/runs/<strategy>/seed<k>.json`` next to this file; the helpers are ``longer_base/paired.py``'s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("longer_base_paired", HERE.parent / "longer_base" / "paired.py")
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)

FOLDERS = [str((HERE / f).relative_to(lb.RESULTS)) for f in ("seeds01", "seed2")]
# rows paired by seed: the recorded ones ran on the same CPU type over the same 8-epoch base networks (this page's
# `prototype` reproduces the recorded one to the digit); the longer-trained `prototype` rows have their own bases
RECORDED = {
    "raml, uncached (recorded: 300 episodes, `meta_lr` 0.03)": (["tiny_imagenet_fscil_raml_amd/seeds01", "tiny_imagenet_fscil_raml_amd/seed2"], "raml"),
    "raml, uncached 600 episodes at 0.1 (recorded)": (["compute_matched/tiny_raml_e600_s01", "compute_matched/tiny_raml_e600_s2"], "raml"),
    "prototype, 12 base epochs (recorded)": (["compute_matched/tiny_imagenet_fscil_proto_be12"], "prototype"),
    "prototype, 24 base epochs (recorded)": (["compute_matched/tiny_imagenet_fscil_proto_be24"], "prototype"),
    "prototype, 16 base epochs (this page)": ([str((HERE / "proto_be16" / f"seed{k}").relative_to(lb.RESULTS)) for k in range(3)],
                                              "prototype"),
}
ORDER = ["prototype", "knn", "raml", "raml_external", "raml_no_retrieval", "raml_no_meta", *RECORDED]


def main() -> None:
    print_table(FOLDERS, ORDER, RECORDED)


def print_table(folders: list[str], order: list[str], recorded: dict[str, tuple[list[str], str]]) -> None:
    """One row per strategy of ``order`` (run JSONs under ``folders``; labels of ``recorded`` read their own
    folders and strategy), paired by seed with `prototype` and with `raml`."""
    runs = {s: lb.load(folders, s) for s in order if s not in recorded}
    runs.update({label: lb.load(fs, strategy) for label, (fs, strategy) in recorded.items()})
    proto, raml = runs["prototype"], runs["raml"]
    print("| strategy | last (seeds 0 / 1 / 2) | last | novel (last) | base (last) | PD | minus `prototype`, paired "
          "| `raml` minus row, paired | session 0 (s) | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in (s for s in order if runs[s]):
        r, seeds = runs[s], sorted(runs[s])
        pd = [lb.pd_points(r[k]) for k in seeds]
        t0 = [r[k]["session_times_s"][0] for k in seeds]
        rss = [r[k]["peak_memory"]["cpu_rss_mb"] for k in seeds]
        print(f"| {s} | {' / '.join(f'{lb.last(r[k]):.2f}' for k in seeds)} | {lb.fmt([lb.last(r[k]) for k in seeds])} "
              f"| {lb.fmt([lb.last(r[k], 'novel') for k in seeds])} | {lb.fmt([lb.last(r[k], 'base') for k in seeds])} "
              f"| {lb.fmt(pd)} | {lb.fmt(lb.paired(r, proto)) if s != 'prototype' else ''} "
              f"| {lb.fmt(lb.paired(raml, r)) if s not in ('prototype', 'raml') else ''} | {min(t0):.0f}-{max(t0):.0f} "
              f"| {max(rss):.0f} |")


if __name__ == "__main__":
    main()
