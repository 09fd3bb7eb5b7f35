"""Print this page's tables: every row over the longer base training, paired by seed with
`prototype` on the same base and with the same strategy's recorded row over the 8-epoch base
(one table per folder set: rows pair only within a CPU type).

Run from the repository root: ``python benchmarks/results/longer_base/paired.py``.
Reads ``runs/<strategy>/seed<k>.json`` under ``benchmarks/results``.
"""

from __future__ import annotations

import json
import statistics as st
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent

# table label (its stream first) -> (this page's folders, {strategy: folders of its recorded 8-epoch row}, default recorded folders)
SUITES = {
    "omniglot_fscil": (
        ["longer_base/omniglot_fscil"],
        {"prototype": ["omniglot_fscil_fscl_la"], "fscl": ["omniglot_fscil_fscl_la"],
         "raml": ["omniglot_fscil_raml_lr003/amd"], "knn": ["omniglot_fscil_raml"],
         "fscl_no_meta": ["omniglot_fscil_fscl_la/ablations"], "fscl_slow_only": ["omniglot_fscil_fscl_la/ablations2"]},
        ["omniglot_fscil"],
    ),
    "tiny_imagenet_fscil": (
        ["longer_base/tiny_imagenet_fscil"],
        {"prototype": ["tiny_imagenet_fscil_fscl_rows"], "fscl": ["tiny_imagenet_fscil_fscl_rows"],
         "raml": ["tiny_imagenet_fscil_raml_amd/seeds01", "tiny_imagenet_fscil_raml_amd/seed2"],
         "knn": ["tiny_imagenet_fscil_raml_amd/seeds01", "tiny_imagenet_fscil_raml_amd/seed2"],
         "fscl_no_meta": ["tiny_imagenet_fscil_fscl_rows/ablations"], "fscl_slow_only": ["tiny_imagenet_fscil_fscl_lr01"]},
        ["tiny_imagenet_fscil"],
    ),
    # the seventeenth session's rows on a Zen 3 AMD EPYC: they pair only with each other
    "tiny_imagenet_fscil, Zen 3 (`finetune`, `ewc`, `lwf`, `joint` on 3 seeds)": (
        ["longer_base/tiny_imagenet_fscil_zen3"],
        {"prototype": ["tiny_imagenet_fscil_fscl_rows"]},
        ["tiny_imagenet_fscil"],
    ),
}


def load(folders: list[str], strategy: str) -> dict[int, dict]:
    """Run JSONs of one strategy by seed, gathered from ``folders``."""
    out = {}
    for f in folders:
        for path in sorted((RESULTS / f / "runs" / strategy).glob("seed*.json")):
            run = json.loads(path.read_text())
            out[int(run["seed"])] = run
    return out


def last(run: dict, key: str = "acc") -> float:
    return 100 * run["table"]["sessions"][-1][key]


def pd_points(run: dict) -> float:
    """Performance drop: session-0 minus last-session accuracy, in points."""
    return 100 * (run["table"]["sessions"][0]["acc"] - run["table"]["sessions"][-1]["acc"])


def fmt(xs: list[float]) -> str:
    if not xs:
        return ""
    return f"{st.mean(xs):.2f} ± {st.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def paired(r: dict[int, dict], ref: dict[int, dict]) -> list[float]:
    return [last(r[s]) - last(ref[s]) for s in sorted(r) if s in ref]


def main() -> None:
    for stream, (folders, recorded, default) in SUITES.items():
        strategies = sorted({p.name for f in folders for p in (RESULTS / f / "runs").glob("*") if p.is_dir()})
        runs = {s: load(folders, s) for s in strategies}
        proto = runs.get("prototype", {})
        print(f"\n{stream}\n")
        print("| strategy | last (seeds 0 / 1 / 2) | last | novel (last) | PD | minus `prototype` (same base), paired "
              "| over 8 base epochs (recorded) | gain from the longer base, paired | held-out 5w5s (last) | session 0 (s) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        order = ["prototype"] + [s for s in strategies if s != "prototype"]
        for s in (s for s in order if s in runs):
            r, seeds = runs[s], sorted(runs[s])
            old = load(recorded.get(s, default), s)
            pd = [pd_points(r[k]) for k in seeds]
            held = [100 * r[k]["columns"]["heldout_5w5s"]["values"][-1] for k in seeds]
            base = [r[k]["session_times_s"][0] for k in seeds]
            print(f"| {s} | {' / '.join(f'{last(r[k]):.2f}' for k in seeds)} | {fmt([last(r[k]) for k in seeds])} "
                  f"| {fmt([last(r[k], 'novel') for k in seeds])} | {fmt(pd)} "
                  f"| {fmt(paired(r, proto)) if s != 'prototype' else ''} | {fmt([last(v) for v in old.values()])} "
                  f"| {fmt(paired(r, old))} | {fmt(held)} | {min(base):.0f}-{max(base):.0f} |")


if __name__ == "__main__":
    main()
