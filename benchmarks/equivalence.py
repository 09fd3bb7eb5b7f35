"""Compare two benchmark output folders run by run: are the per-session results identical?

    python -m avalanche_fscl.benchmarks.equivalence RUN_A RUN_B [--output report.md]

Used to show that a change to the runner leaves the numbers unchanged: run the same config
before and after the change on the same machine, then compare. For every (strategy, seed)
in both folders it reports whether the FSCIL tables (every session's accuracy, base, novel,
HM and sample count, and the accuracy matrix) are bit-identical, and the largest absolute
difference of the session accuracies otherwise. Exit status 0 when every shared run is
identical, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .io import write_text

__all__ = ["compare_outputs"]

_ROW_KEYS = ("session", "acc", "base", "novel", "hm", "n_samples")


def _runs(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    files = sorted(folder.glob("runs/*/seed*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no finished runs (runs/<strategy>/seed<k>.json)")
    out = {}
    for f in files:
        r = json.loads(f.read_text())
        out[(r["strategy"], int(r["seed"]))] = r
    return out


def _comparable(table: dict[str, Any]) -> tuple:
    rows = tuple(tuple(row.get(k) for k in _ROW_KEYS) for row in table["sessions"])
    return rows, tuple(map(tuple, table.get("matrix", [])))


def compare_outputs(a: str | Path, b: str | Path) -> tuple[bool, str]:
    """``(all identical, Markdown report)`` for the (strategy, seed) runs both folders hold."""
    ra, rb = _runs(Path(a)), _runs(Path(b))
    shared = sorted(set(ra) & set(rb))
    lines = [f"Runs in `{a}` (A) vs `{b}` (B).", "",
             "| strategy | seed | identical | max abs. difference of session accuracy (points) | last acc A | last acc B |",
             "|---|---|---|---:|---:|---:|"]
    same_all = True
    for key in shared:
        ta, tb = ra[key]["table"], rb[key]["table"]
        same = _comparable(ta) == _comparable(tb)
        same_all &= same
        accs = [(x["acc"], y["acc"]) for x, y in zip(ta["sessions"], tb["sessions"])]
        diff = max((abs(x - y) for x, y in accs), default=0.0)
        lines.append(f"| {key[0]} | {key[1]} | {'yes' if same else 'NO'} | {100 * diff:.2f} | "
                     f"{100 * ta['sessions'][-1]['acc']:.2f} | {100 * tb['sessions'][-1]['acc']:.2f} |")
    only = sorted(set(ra) ^ set(rb))
    if only:
        lines += ["", "Only in one folder: " + ", ".join(f"{s}/seed{k}" for s, k in only)]
    return same_all and bool(shared), "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--output", help="write the Markdown report here too")
    args = p.parse_args(argv)
    try:
        same, md = compare_outputs(args.run_a, args.run_b)
    except FileNotFoundError as e:
        print(f"equivalence: error: {e}", file=sys.stderr)
        return 2
    print(md)
    if args.output:
        write_text(args.output, md)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
