"""Print this page's tables: last-session accuracy per seed, paired with the recorded rows.

Run from the repository root: ``python benchmarks/results/compute_matched/paired.py``.
Reads the ``runs/<strategy>/seed<k>.json`` files of the recorded pages named below (all AMD EPYC).
"""

from __future__ import annotations

import json
import statistics as st
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent

# (stream, row label, folder under benchmarks/results, strategy)
ROWS = [
    ("omniglot_fscil", "prototype, 8 base epochs (recorded)", "omniglot_fscil_fscl_la", "prototype"),
    ("omniglot_fscil", "prototype, 12 base epochs (1.5x)", "compute_matched/omniglot_fscil_proto_be12", "prototype"),
    ("omniglot_fscil", "prototype, 24 base epochs (3x)", "compute_matched/omniglot_fscil_proto_be24", "prototype"),
    ("omniglot_fscil", "fscl (recorded; base session ~1.45x)", "omniglot_fscil_fscl_la", "fscl"),
    ("omniglot_fscil", "raml (recorded; base session ~4x)", "omniglot_fscil_raml_lr003/amd", "raml"),
    ("omniglot_fscil", "raml over the 12-epoch base (base session ~5.5x)", "compute_matched/omniglot_raml_be12_s01", "raml"),
    ("tiny_imagenet_fscil", "prototype, 8 base epochs (recorded)", "tiny_imagenet_fscil_fscl_rows", "prototype"),
    ("tiny_imagenet_fscil", "prototype, 12 base epochs (1.5x)", "compute_matched/tiny_imagenet_fscil_proto_be12", "prototype"),
    ("tiny_imagenet_fscil", "prototype, 24 base epochs (3x)", "compute_matched/tiny_imagenet_fscil_proto_be24", "prototype"),
    ("tiny_imagenet_fscil", "fscl (recorded; base session ~1.45x)", "tiny_imagenet_fscil_fscl_rows", "fscl"),
    ("tiny_imagenet_fscil", "raml (recorded; base session ~3x)", "tiny_imagenet_fscil_raml_amd/seeds01", "raml"),
    ("tiny_imagenet_fscil", "raml, 600 episodes at meta_lr 0.1 (base session ~5x)", "compute_matched/tiny_raml_e600_s01", "raml"),
]
EXTRA = {"tiny_imagenet_fscil_raml_amd/seeds01": "tiny_imagenet_fscil_raml_amd/seed2",
         "compute_matched/tiny_raml_e600_s01": "compute_matched/tiny_raml_e600_s2",
         "compute_matched/omniglot_raml_be12_s01": "compute_matched/omniglot_raml_be12_s2"}


def load(folder: str, strategy: str) -> dict[int, dict]:
    """Run JSONs of one strategy by seed, from ``folder`` (and its second half, if split)."""
    out = {}
    for f in [folder] + ([EXTRA[folder]] if folder in EXTRA else []):
        for path in sorted((RESULTS / f / "runs" / strategy).glob("seed*.json")):
            run = json.loads(path.read_text())
            out[int(run["seed"])] = run
    return out


def fmt(xs: list[float]) -> str:
    return f"{st.mean(xs):.2f} ± {st.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def main() -> None:
    for stream in dict.fromkeys(r[0] for r in ROWS):
        rows = [r for r in ROWS if r[0] == stream]
        runs = {label: load(folder, strategy) for _, label, folder, strategy in rows}
        refs = [next(r for label, r in runs.items() if f"{e} base epochs" in label) for e in (12, 24)]
        print(f"\n{stream}\n")
        print("| row | last (seeds 0 / 1 / 2) | last | novel (last) | PD | minus `prototype` at 12 epochs, paired | at 24 epochs, paired | held-out 5w5s (last) | session 0 in that run (s) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, r in runs.items():
            if not r:
                print(f"| {label} | (not run) | | | | | | | |")
                continue
            seeds = sorted(r)
            last = [100 * r[s]["table"]["sessions"][-1]["acc"] for s in seeds]
            novel = [100 * r[s]["table"]["sessions"][-1]["novel"] for s in seeds]
            pd = [100 * (r[s]["table"]["sessions"][0]["acc"] - r[s]["table"]["sessions"][-1]["acc"]) for s in seeds]
            diffs = [[100 * (r[s]["table"]["sessions"][-1]["acc"] - ref[s]["table"]["sessions"][-1]["acc"])
                      for s in seeds if s in ref] if ref and r is not ref else [] for ref in refs]
            base = [r[s]["session_times_s"][0] for s in seeds]
            held = [100 * r[s]["columns"]["heldout_5w5s"]["values"][-1] for s in seeds]
            print(f"| {label} | {' / '.join(f'{x:.2f}' for x in last)} | {fmt(last)} | {fmt(novel)} | {fmt(pd)} | "
                  f"{' | '.join(fmt(d) if d else '' for d in diffs)} | {fmt(held)} | {min(base):.0f}-{max(base):.0f} |")


if __name__ == "__main__":
    main()
