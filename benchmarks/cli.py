"""``avalanche-fscl``: run continual few-shot benchmark suites from the command line.

    avalanche-fscl run                         # embedded default: digits_fscil, all baselines + fscl, knn, raml
    avalanche-fscl run --config omniglot_fscil --seeds 0 1 2 --wandb offline
    avalanche-fscl run --resume runs/omniglot_fscil/20261127-101500
    avalanche-fscl report runs/omniglot_fscil/20261127-101500   # report of the finished runs
    avalanche-fscl list
    avalanche-fscl pretrain-clip --config vit_p8_64               # small CLIP, resumable
    avalanche-fscl meta-train-gram --prompt coop --output runs/gram/coop
    avalanche-fscl base-to-new                                    # CLIP prompt-tuning benchmark

Every input error is one line naming the problem (exit status 2); config, stream and backbone
errors are found before Avalanche is imported. Ctrl-C says where the run stopped and how to
continue it (exit status 130); SIGTERM (``kill PID``, a job scheduler) stops the same way, with
exit status 143: a background job, which a shell without job control starts with Ctrl-C's
SIGINT ignored, can still be stopped at a checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

import yaml

from .config import (
    CLIP_CHECKPOINT_HELP,
    CONFIG_DIR,
    ConfigError,
    RunConfig,
    check_light,
    config_from_dict,
    config_to_dict,
    list_configs,
    load_config,
    read_yaml,
)

__all__ = ["main", "build_parser", "config_from_args"]

# `run` flags that shape a run: a resumed run keeps its saved config, so these are refused with --resume.
_RUN_FLAGS = {
    "config": "--config", "stream": "--stream", "strategies": "--strategy", "seeds": "--seeds",
    "device": "--device", "data_root": "--data-root", "output": "--output",
    "wandb_project": "--wandb-project", "set": "--set", "base_cache": "--base-cache",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other input error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avalanche-fscl", description=__doc__.split("\n")[0].replace("``", ""),
                     epilog="every command has --help, e.g. avalanche-fscl run --help")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    run.add_argument("--base-cache", choices=["on", "off", "refresh"],
                     help="shared base sessions: on (default: load or train and store), off, refresh (retrain)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config key, e.g. --set train.base_epochs=5 (YAML value)")
    run.add_argument("--resume", metavar="OUTPUT_DIR", help="continue the run in OUTPUT_DIR with its saved config")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    report = sub.add_parser("report", help="write the report of the finished runs in an output folder")
    report.add_argument("output", metavar="OUTPUT_DIR")
    sub.add_parser("list", help="list streams, strategies, backbones and shipped configs")
    from . import base_to_new, pretrain_clip

    pretrain_clip.add_parser(sub)
    _add_meta_train_gram(sub)
    base_to_new.add_parser(sub)
    return parser


def _add_meta_train_gram(sub) -> None:
    p = sub.add_parser("meta-train-gram", help="GRAM: meta-learn a prompt init and a gradient regulator (resumable)")
    p.add_argument("--output", required=True, help="folder for gram.pt (an existing last.pt there is resumed)")
    p.add_argument("--clip-model", default="fscl-vit-p8-64")
    p.add_argument("--clip-checkpoint", default="fscl", help=CLIP_CHECKPOINT_HELP)
    p.add_argument("--prompt", default="coop", help="coop, vpt or unigram")
    p.add_argument("--data-root")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any GRAMMetaConfig field, e.g. --set episodes=500 --set regulator=gated (YAML value)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (logs, CI)")


def _run_meta_train_gram(args) -> int:
    from ..models.gram import GRAMMetaConfig, meta_config_overrides, meta_train_gram
    from .machine import device_problem

    why = device_problem(args.device)
    if why:
        raise ValueError(f"meta-train-gram: --device {why}")
    kw = {"clip_model": args.clip_model, "clip_checkpoint": None if args.clip_checkpoint.lower() == "none" else args.clip_checkpoint, "prompt": args.prompt}
    kw |= meta_config_overrides(args.set, "meta-train-gram --set")
    path = meta_train_gram(GRAMMetaConfig(**kw), args.output, args.data_root, args.device, progress=not args.no_progress)
    print(f"gram checkpoint: {path}")
    return 0


def _set_key(data: dict, dotted: str, value_text: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}={value_text}: empty key")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(value_text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {dotted}={value_text}: not a YAML value") from None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated config: a file or a stream's shipped config (default: digits_fscil), then flags."""
    if args.config:
        data = config_to_dict(load_config(args.config))
    else:
        name = args.stream or "digits_fscil"
        shipped = CONFIG_DIR / f"{name}.yaml"
        data = read_yaml(shipped, what="config") if shipped.exists() else {"suite": name}
    if args.stream:
        data.setdefault("stream", {})
        if data["stream"].get("name") != args.stream:
            data["stream"] = {"name": args.stream, "args": {}}
    flags = {
        "strategies": args.strategies, "seeds": args.seeds, "device": args.device,
        "data_root": args.data_root, "output": args.output, "base_cache": args.base_cache,
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


def _resume_config(args: argparse.Namespace) -> RunConfig:
    """The saved config of ``--resume DIR``; flags that would change it are refused."""
    from .runner import resume_config

    given = [flag for attr, flag in _RUN_FLAGS.items() if getattr(args, attr) not in (None, [])]
    if given:
        raise ConfigError(
            f"--resume continues {args.resume} with its saved config; it cannot take {', '.join(given)} "
            f"(start a new run with another --output to change them)"
        )
    cfg = resume_config(args.resume)
    if args.wandb and args.wandb != cfg.wandb.mode:
        raise ConfigError(
            f"--wandb {args.wandb}: the run in {args.resume} logs with --wandb {cfg.wandb.mode}, and a resumed "
            f"run keeps its mode (start a new run with another --output to change it)"
        )
    cfg.output = args.resume
    return cfg


def _cmd_list() -> None:
    from ..models.backbones import list_backbones
    from ..streams.registry import list_streams
    from ..strategies import list_strategies

    from ..models.clip import kept_clip_checkpoints, project_clip_models
    from .pretrain_clip import RECIPE_DIR, list_recipes

    clips = {}
    for n in project_clip_models():
        tags = sorted((k.split(" ", 1)[1] for k in kept_clip_checkpoints(n)), key=lambda t: (t != "fscl", t))
        clips[n] = "kept checkpoints: " + ", ".join(f"pretrained={t!r}" for t in tags) if tags else "config only"
    recipes = {n: str(RECIPE_DIR / f"{n}.yaml") for n in list_recipes()}
    for title, items in [("streams", list_streams()), ("strategies", list_strategies()),
                         ("backbones", list_backbones()), ("configs", list_configs()),
                         ("project CLIP models (plus every open_clip architecture)", clips),
                         ("pretrain-clip recipes", recipes)]:
        print(f"{title}:")
        width = max(map(len, items), default=0)
        for name, doc in items.items():
            print(f"  {name:<{width}}  {doc}")


class _StopOnSIGTERM:
    """While a command runs, SIGTERM raises ``KeyboardInterrupt`` (as Ctrl-C does), so every
    command's own Ctrl-C path (checkpoint, "continue with ...") also serves ``kill PID``; the exit
    status then says SIGTERM (143) instead of SIGINT (130). The previous handler is restored after."""

    def __enter__(self) -> "_StopOnSIGTERM":
        self.received, self.previous = False, None
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def status(self, code: int) -> int:
        return 128 + int(signal.SIGTERM) if code == 130 and self.received else code


def main(argv: Sequence[str] | None = None) -> int:
    with _StopOnSIGTERM() as stop:
        return stop.status(_main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Import-time noise of a third-party dependency (avalanche -> qpsolvers), not ours.
    warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
    command = "avalanche-fscl " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "list":
            _cmd_list()
            return 0
        if args.command == "report":
            from .runner import report_benchmark

            report_benchmark(args.output)
            print(f"\nresults: {Path(args.output) / 'results.md'}")
            return 0
        if args.command in ("pretrain-clip", "meta-train-gram", "base-to-new"):
            from . import base_to_new, pretrain_clip

            run = {"pretrain-clip": pretrain_clip.run_from_args, "base-to-new": base_to_new.run_from_args,
                   "meta-train-gram": _run_meta_train_gram}[args.command]
            try:
                return run(args)
            except KeyboardInterrupt:
                return 130
            except ValueError as e:
                print(f"avalanche-fscl: error: {e}", file=sys.stderr)
                return 2
        resume = bool(args.resume)
        cfg = _resume_config(args) if resume else config_from_args(args)
        check_light(cfg)  # before Avalanche is imported: answers in about a second
        from .runner import run_benchmark

        run_benchmark(cfg, resume=resume, command=command, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("\navalanche-fscl: interrupted before any session finished; nothing to resume", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError) as e:
        print(f"avalanche-fscl: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the runner's own errors get one line, others a traceback
        from .runner import BenchmarkError, RunInterrupted

        if isinstance(e, RunInterrupted):
            print(f"\navalanche-fscl: {e}", file=sys.stderr)
            return 130
        if isinstance(e, BenchmarkError):
            print(f"avalanche-fscl: error: {e}", file=sys.stderr)
            return 2
        raise
    print(f"\nresults: {Path(cfg.output) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
