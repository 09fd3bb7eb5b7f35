"""The suite report: per-session comparison table (mean ± sample std over seeds) and plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_path, write_json, write_text

__all__ = ["aggregate", "format_table", "flat_table", "write_report", "plot_sessions", "session_figure"]

Stat = tuple[float | None, float | None]  # (mean, sample std); std is None for one seed


def _stats(values: Sequence[float | None]) -> Stat:
    """Mean and sample standard deviation (ddof=1; ``None`` with fewer than two values)."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def _padded(values: list, n: int) -> list:
    return values + [None] * (n - len(values))


def aggregate(runs: list[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    """Mean and sample std over seeds of every session's accuracy, AA, PD, last
    base/novel/HM, the extra columns and the costs.

    Returns ``{"columns": [...], "rows": [[strategy, (mean, std), ...], ...],
    "per_strategy": {name: {...}}, "extra_columns": {name: title}}``; accuracies are fractions.
    """
    per: dict[str, Any] = {}
    extra: dict[str, str] = {}
    n_sessions = 0
    for name in strategies:
        mine = [r for r in runs if r["strategy"] == name]
        if not mine:
            continue
        tables = [r["table"] for r in mine]
        accs = [[row["acc"] for row in t["sessions"]] for t in tables]
        n = max(len(a) for a in accs)
        n_sessions = max(n_sessions, n)
        last = [t["sessions"][-1] for t in tables]
        cols: dict[str, list[Stat]] = {}
        for r in mine:
            for col, info in r.get("columns", {}).items():
                extra.setdefault(col, info["title"])
        for col in extra:
            values = [_padded(r.get("columns", {}).get(col, {}).get("values", []), n) for r in mine]
            if any(v is not None for vs in values for v in vs):
                cols[col] = [_stats([vs[s] for vs in values]) for s in range(n)]
        per[name] = {
            "seeds": [r["seed"] for r in mine],
            "session_acc": [_stats([a[s] if s < len(a) else None for a in accs]) for s in range(n)],
            "AA": _stats([t.get("aa") for t in tables]),
            "PD": _stats([t.get("pd") for t in tables]),
            "last_base": _stats([r["base"] for r in last]),
            "last_novel": _stats([r["novel"] for r in last]),
            "last_hm": _stats([r["hm"] for r in last]),
            "columns": cols,
            "wall_time_s": _stats([r["wall_time_s"] for r in mine]),
            "base_session_s": _stats([r["session_times_s"][0] for r in mine if r["session_times_s"]]),
            "base_trained": sum(r.get("base_session", {}).get("source") != "cache" for r in mine),
            "incremental_session_s": _stats(
                [float(np.mean(r["session_times_s"][1:])) for r in mine if len(r["session_times_s"]) > 1]
            ),
            "peak_rss_mb": _stats([r["peak_memory"]["cpu_rss_mb"] for r in mine]),
        }
    columns = (["strategy"] + [f"S{s}" for s in range(n_sessions)]
               + ["AA", "PD", "Base (last)", "Novel (last)", "HM (last)"]
               + [f"{title} (last)" for title in extra.values()])
    rows = []
    for name, p in per.items():
        sess = _padded(p["session_acc"], n_sessions)
        last_extra = [p["columns"][c][-1] if c in p["columns"] else (None, None) for c in extra]
        rows.append([name, *[s or (None, None) for s in sess], p["AA"], p["PD"],
                     p["last_base"], p["last_novel"], p["last_hm"], *last_extra])
    return {"columns": columns, "rows": rows, "per_strategy": per, "extra_columns": extra}


def _cell(stat: Stat, scale: float = 100.0, digits: int = 2) -> str:
    mean, std = stat
    if mean is None:
        return "-"
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def format_table(summary: dict[str, Any]) -> str:
    """Markdown table: rows = strategies, columns = sessions, AA, PD, last base/novel/HM and
    the extra columns at the last session (in %)."""
    cols = summary["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for row in summary["rows"]:
        lines.append("| " + " | ".join([row[0], *(_cell(c) for c in row[1:])]) + " |")
    return "\n".join(lines)


def _column_tables(summary: dict[str, Any]) -> list[str]:
    """One per-session Markdown table per extra column."""
    out = []
    for col, title in summary.get("extra_columns", {}).items():
        rows = {n: p["columns"][col] for n, p in summary["per_strategy"].items() if col in p["columns"]}
        if not rows:
            continue
        n = max(len(v) for v in rows.values())
        lines = [f"### {title} after each session (%)", "",
                 "| strategy | " + " | ".join(f"S{s}" for s in range(n)) + " |", "|---|" + "---:|" * n]
        for name, stats in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(s) for s in _padded(stats, n)) + " |")
        out += ["", *lines]
    return out


def _cost_table(summary: dict[str, Any]) -> list[str]:
    lines = ["", "### Cost per (strategy, seed)", "",
             "| strategy | base session (s) | incremental session (s, mean) | all sessions (s) | peak RSS (MiB) | base session trained |",
             "|---|---:|---:|---:|---:|---|"]
    for name, p in summary["per_strategy"].items():
        n = len(p["seeds"])
        trained = p["base_trained"]
        lines.append(
            f"| {name} | {_cell(p['base_session_s'], 1, 1)} | {_cell(p['incremental_session_s'], 1, 2)} | "
            f"{_cell(p['wall_time_s'], 1, 1)} | {_cell(p['peak_rss_mb'], 1, 0)} | "
            f"{trained} of {n} (else loaded from the cache) |"
        )
    return lines


def flat_table(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The comparison table with separate mean and std columns (for W&B: sortable, plottable)."""
    columns = ["strategy"]
    for c in summary["columns"][1:]:
        columns += [f"{c} mean", f"{c} std"]
    rows = [[row[0], *[v for mean_std in row[1:] for v in mean_std]] for row in summary["rows"]]
    return columns, rows


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
_LINES = ["-", "--", "-.", ":"]


def session_figure(summary: dict[str, Any], title: str):
    """The ``sessions.png`` figure: accuracy per session, one line per strategy (distinct
    marker and line style; shaded: ± std over seeds). Integer session ticks; the y-range
    spans at least 20 points, so small differences are not stretched to the full height."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.subplots()
    values = []
    for i, (name, p) in enumerate(summary["per_strategy"].items()):
        mean = np.array([m if m is not None else np.nan for m, _ in p["session_acc"]]) * 100
        std = np.array([s if s is not None else np.nan for _, s in p["session_acc"]]) * 100
        x = np.arange(len(mean))
        ax.plot(x, mean, marker=_MARKERS[i % len(_MARKERS)], linestyle=_LINES[i % len(_LINES)],
                ms=4, lw=1.4, label=name, alpha=0.9)
        if np.isfinite(std).any():
            ax.fill_between(x, mean - std, mean + std, alpha=0.12)
        values += [v for v in mean if np.isfinite(v)]
    n = max((len(p["session_acc"]) for p in summary["per_strategy"].values()), default=1)
    ax.set_xticks(range(n))
    ax.set_xlim(-0.3, n - 0.7)
    lo, hi = (min(values), max(values)) if values else (0.0, 100.0)
    lo, hi = math.floor((lo - 2) / 5) * 5, math.ceil((hi + 2) / 5) * 5
    if hi - lo < 20:
        mid = (hi + lo) / 2
        lo, hi = mid - 10, mid + 10
    lo, hi = max(0.0, lo), min(100.0, hi)
    if hi - lo < 20:
        lo, hi = (0.0, 20.0) if lo == 0 else (80.0, 100.0)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("session")
    ax.set_ylabel("accuracy on all classes seen (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_sessions(summary: dict[str, Any], path: Path, title: str) -> None:
    """Write :func:`session_figure` to ``path`` (PNG, atomically)."""
    fig = session_figure(summary, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _machines(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Machine -> the ``strategy/seed`` runs with a session computed there, or whose cached base
    session was trained there (runs recorded before these fields existed count for none)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        name, here = f"{r['strategy']}/seed{r['seed']}", dict.fromkeys(m for m in r.get("session_machines") or [] if m)
        for m in here:
            out.setdefault(m, []).append(name)
        base = (r.get("base_session") or {}).get("trained_on")
        if base and base not in here:  # session 0 loaded weights another machine trained
            out.setdefault(base, []).append(f"{name} (base session)")
    return out


def _provenance_lines(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    lines = [
        f"- Command: `{results['command']}`" if results.get("command") else "- Command: (Python API)",
        f"- Machine: {env.get('cpu_model') or env['processor']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, "
        f"device {env['device_name']}; torch {env['torch']}, avalanche {env['avalanche']}; "
        f"commit {env.get('git_commit') or 'unknown'}",
    ]
    first = env.get("cpu_model")
    for inv in results.get("invocations", [])[1:]:
        other = inv["environment"].get("cpu_model")
        where = f" on {other}" if other and other != first else ""
        lines.append(f"- Resumed: `{inv['command']}` (commit {inv['environment'].get('git_commit') or 'unknown'}){where}")
    mixed = _machines(results.get("runs", []))
    if len(mixed) > 1:  # CPU types differ in kernels: the same seed gives other numbers on each
        lines.append("- **Runs on more than one machine** (results pair only within one): " + "; ".join(
            f"{m}: {', '.join(runs)}" for m, runs in mixed.items()))
    lines.append(
        f"- Wall time: {results['wall_time_s_all_sessions']:.1f} s summed over the (strategy, seed) runs"
        + (f"; {results['wall_time_s']:.1f} s of process time over {len(results.get('invocations', []))} invocation(s)"
           if results.get("wall_time_s") is not None else "")
    )
    return lines


def write_report(out: Path, results: dict[str, Any]) -> str:
    """Write ``results.json``, ``results.md`` and ``sessions.png`` into ``out``; return the Markdown table."""
    summary = results["summary"]
    cfg = results["config"]
    table = format_table(summary)
    seeds_per = "; ".join(f"{n}: {p['seeds']}" for n, p in summary["per_strategy"].items())
    md = "\n".join([
        f"# {results['suite']}: {cfg['stream']['name']}",
        "",
        f"Accuracy (%) on all classes seen after each session: mean ± sample standard deviation "
        f"(ddof=1) over seeds {cfg['seeds']} (no ± with one seed). AA = mean over sessions; "
        f"PD = S0 - last. Base/Novel = mean per-class accuracy at the last session.",
        "",
        table,
        *_column_tables(summary),
        *_cost_table(summary),
        "",
        f"- Scenario: {results['scenario']}",
        f"- Model: {cfg['model']['backbone']} + {cfg['model']['head']} head; train: {cfg['train']}",
        f"- Strategy arguments: {cfg.get('strategy_args') or '(defaults)'}",
        *_provenance_lines(results),
        *([f"- **Incomplete**: not finished yet: {', '.join(results['incomplete'])} "
           f"(seeds per strategy: {seeds_per})"] if results.get("incomplete") else []),
        "",
    ])
    write_json(out / "results.json", results)
    write_text(out / "results.md", md)
    plot_sessions(summary, out / "sessions.png", f"{cfg['stream']['name']}: {results['scenario'].split(';')[0]}")
    return table
