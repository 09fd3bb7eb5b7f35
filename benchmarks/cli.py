"""``avalanche-fscl``: run continual few-shot benchmark suites from the command line.

    avalanche-fscl run                         # embedded default: digits_fscil, all baselines
    avalanche-fscl run --config omniglot_fscil --seeds 0 1 2 --wandb offline
    avalanche-fscl run --resume runs/omniglot_fscil/20261127-101500
    avalanche-fscl report runs/omniglot_fscil/20261127-101500   # report of the finished runs
    avalanche-fscl list
"""

from __future__ import annotations

import argparse
import shlex
import warnings
import sys
from pathlib import Path
from typing import Sequence

import yaml

from .config import CONFIG_DIR, ConfigError, RunConfig, config_from_dict, config_to_dict, list_configs, load_config

__all__ = ["main", "build_parser", "config_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avalanche-fscl", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a benchmark suite")
    run.add_argument("--config", help="YAML config file, or the name of a shipped config (see `list`)")
    run.add_argument("--stream", help="stream preset (its shipped config supplies the defaults)")
    run.add_argument("--strategy", action="append", dest="strategies", metavar="NAME",
                     help="strategy to run (repeatable); default: the config's list")
    run.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="seeds, e.g. --seeds 0 1 2")
    run.add_argument("--device", help="cpu, cuda or cuda:N")
    run.add_argument("--data-root", help="folder holding the datasets (default $AVALANCHE_FSCL_DATA or ../shared/data)")
    run.add_argument("--output", help="output folder (default: the config's, else runs/<suite>/<timestamp>)")
    run.add_argument("--wandb", choices=["off", "offline", "online"], help="W&B tracking mode")
    run.add_argument("--wandb-project", help="W&B project")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key, e.g. --set train.base_epochs=5 (YAML value)")
    run.add_argument("--resume", metavar="OUTPUT_DIR", help="continue the run in OUTPUT_DIR")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    report = sub.add_parser("report", help="write the report of the finished runs in an output folder")
    report.add_argument("output", metavar="OUTPUT_DIR")
    sub.add_parser("list", help="list streams, strategies, backbones and shipped configs")
    return parser


def _set_key(data: dict, dotted: str, value_text: str) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(value_text)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated config: a file or a stream's shipped config (default: digits_fscil), then flags."""
    if args.config:
        data = config_to_dict(load_config(args.config))
    else:
        name = args.stream or "digits_fscil"
        shipped = CONFIG_DIR / f"{name}.yaml"
        data = yaml.safe_load(shipped.read_text(encoding="utf-8")) if shipped.exists() else {"suite": name}
    if args.stream:
        data.setdefault("stream", {})
        if data["stream"].get("name") != args.stream:
            data["stream"] = {"name": args.stream, "args": {}}
    flags = {
        "strategies": args.strategies, "seeds": args.seeds, "device": args.device,
        "data_root": args.data_root, "output": args.output,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.wandb:
        data.setdefault("wandb", {})["mode"] = args.wandb
    if args.wandb_project:
        data.setdefault("wandb", {})["project"] = args.wandb_project
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        _set_key(data, key, value)
    return config_from_dict(data)


def _cmd_list() -> None:
    from ..models import list_backbones
    from ..streams import list_streams
    from ..strategies import list_strategies

    for title, items in [("streams", list_streams()), ("strategies", list_strategies()),
                         ("backbones", list_backbones()), ("configs", list_configs())]:
        print(f"{title}:")
        width = max(map(len, items), default=0)
        for name, doc in items.items():
            print(f"  {name:<{width}}  {doc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Import-time noise of a third-party dependency (avalanche -> qpsolvers), not ours.
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    if args.command == "list":
        _cmd_list()
        return 0
    from .runner import BenchmarkError, report_benchmark, resume_config, run_benchmark

    command = "avalanche-fscl " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "report":
            report_benchmark(args.output, command=command)
            print(f"\nresults: {Path(args.output) / 'results.md'}")
            return 0
        if args.resume:
            cfg = resume_config(args.resume)
            cfg.output = args.resume
            resume = True
        else:
            cfg, resume = config_from_args(args), False
        run_benchmark(cfg, resume=resume, command=command, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, BenchmarkError) as e:
        print(f"avalanche-fscl: error: {e}", file=sys.stderr)
        return 2
    print(f"\nresults: {Path(cfg.output) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
