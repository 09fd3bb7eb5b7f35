"""The suite report: per-session comparison table (mean ± std over seeds) and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_path, write_json, write_text

__all__ = ["aggregate", "format_table", "write_report", "plot_sessions"]


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def aggregate(runs: list[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """Mean and std over seeds of every session's accuracy, AA, PD and last base/novel/HM.

    Returns ``{"columns": [...], "rows": [[strategy, (mean, std), ...], ...],
    "per_strategy": {name: {...}}}``; accuracies are fractions.
    """
    per: dict[str, Any] = {}
    n_sessions = 0
    for name in strategies:
        tables = [r["table"] for r in runs if r["strategy"] == name]
        if not tables:
            continue
        accs = [[row["acc"] for row in t["sessions"]] for t in tables]
        n_sessions = max(n_sessions, max(len(a) for a in accs))
        last = [t["sessions"][-1] for t in tables]
        per[name] = {
            "seeds": [r["seed"] for r in runs if r["strategy"] == name],
            "session_acc": [_stats([a[s] if s < len(a) else None for a in accs]) for s in range(max(map(len, accs)))],
            "AA": _stats([float(np.mean(a)) for a in accs]),
            "PD": _stats([a[0] - a[-1] for a in accs]),
            "last_base": _stats([r["base"] for r in last]),
            "last_novel": _stats([r["novel"] for r in last]),
            "last_hm": _stats([r["hm"] for r in last]),
            "wall_time_s": _stats([r["wall_time_s"] for r in runs if r["strategy"] == name]),
        }
    columns = ["strategy"] + [f"S{s}" for s in range(n_sessions)] + ["AA", "PD", "Base (last)", "Novel (last)", "HM (last)"]
    rows = []
    for name, p in per.items():
        sess = p["session_acc"] + [(None, None)] * (n_sessions - len(p["session_acc"]))
        rows.append([name, *sess, p["AA"], p["PD"], p["last_base"], p["last_novel"], p["last_hm"]])
    return {"columns": columns, "rows": rows, "per_strategy": per}


def _cell(stat: tuple[float | None, float | None], n_seeds: int) -> str:
    mean, std = stat
    if mean is None:
        return "-"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n_seeds > 1 else "")


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table: rows = strategies, columns = sessions, AA, PD, last base/novel/HM (in %)."""
    cols = summary["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in summary["rows"]:
        n = len(summary["per_strategy"][row[0]]["seeds"])
        lines.append("| " + " | ".join([row[0], *(_cell(c, n) for c in row[1:])]) + " |")
    return "\n".join(lines)


def plot_sessions(summary: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy per session, one line per strategy (shaded: ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, p in summary["per_strategy"].items():
        mean = np.array([m if m is not None else np.nan for m, _ in p["session_acc"]]) * 100
        std = np.array([s if s is not None else np.nan for _, s in p["session_acc"]]) * 100
        x = np.arange(len(mean))
        ax.plot(x, mean, marker="o", ms=3, label=name)
        if len(p["seeds"]) > 1:
            ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("session")
    ax.set_ylabel("accuracy on all classes seen (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Write ``results.json``, ``results.md`` and ``sessions.png`` into ``out``; return the Markdown."""
    summary = results["summary"]
    env = results["environment"]
    seeds = results["config"]["seeds"]
    table = format_table(summary)
    seeds_per = "; ".join(f"{n}: {p['seeds']}" for n, p in summary["per_strategy"].items())
    md = "\n".join([
        f"# {results['suite']}: {results['config']['stream']['name']}",
        "",
        f"Accuracy (%) on all classes seen after each session; mean ± std over seeds {seeds}.",
        f"AA = mean over sessions; PD = S0 - last. Base/Novel = mean per-class accuracy at the last session.",
        "",
        table,
        "",
        f"- Scenario: {results['scenario']}",
        f"- Model: {results['config']['model']['backbone']} + {results['config']['model']['head']} head; "
        f"train: {results['config']['train']}",
        f"- Command: `{results['command']}`" if results.get("command") else "- Command: (Python API)",
        f"- Machine: {env['processor']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, "
        f"device {env['device_name']}; torch {env['torch']}, avalanche {env['avalanche']}",
        f"- Wall time: {results['wall_time_s']:.1f} s (sum over runs: "
        f"{results.get('wall_time_s_all_sessions', results['wall_time_s']):.1f} s)",
        *([f"- **Incomplete**: not finished yet: {', '.join(results['incomplete'])} "
           f"(seeds per strategy: {seeds_per})"] if results.get("incomplete") else []),
        "",
    ])
    write_json(out / "results.json", results)
    write_text(out / "results.md", md)
    plot_sessions(summary, out / "sessions.png", f"{results['suite']} ({results['config']['stream']['name']})")
    return table
