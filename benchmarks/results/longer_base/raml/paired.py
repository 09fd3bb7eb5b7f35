"""Print this page's tables: RAML and its ablations over the longer base, paired by seed with
`prototype` and with `raml` on the same base sessions.

Run from the repository root: ``python benchmarks/results/longer_base/raml/paired.py``.
Reads ``<stream>/runs/<strategy>/seed<k>.json`` next to this file; the helpers are the parent page's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("longer_base_paired", HERE.parent / "paired.py")
lb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lb)

ORDER = ["prototype", "raml", "raml_no_retrieval", "raml_no_meta"]


def main() -> None:
    for stream in ("omniglot_fscil", "tiny_imagenet_fscil"):
        folder = str((HERE / stream).relative_to(lb.RESULTS))
        runs = {s: lb.load([folder], s) for s in ORDER}
        proto, raml = runs["prototype"], runs["raml"]
        print(f"\n{stream}\n")
        print("| strategy | last (seeds 0 / 1 / 2) | last | novel (last) | PD | minus `prototype`, paired "
              "| `raml` minus row, paired | session 0 (s) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for s in (s for s in ORDER if runs[s]):
            r, seeds = runs[s], sorted(runs[s])
            pd = [lb.pd_points(r[k]) for k in seeds]
            t0 = [r[k]["session_times_s"][0] for k in seeds]
            print(f"| {s} | {' / '.join(f'{lb.last(r[k]):.2f}' for k in seeds)} | {lb.fmt([lb.last(r[k]) for k in seeds])} "
                  f"| {lb.fmt([lb.last(r[k], 'novel') for k in seeds])} | {lb.fmt(pd)} "
                  f"| {lb.fmt(lb.paired(r, proto)) if s != 'prototype' else ''} "
                  f"| {lb.fmt(lb.paired(raml, r)) if s not in ('prototype', 'raml') else ''} | {min(t0):.0f}-{max(t0):.0f} |")


if __name__ == "__main__":
    main()
