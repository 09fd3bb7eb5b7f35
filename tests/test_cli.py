"""The command line a new user meets: every bad input is one line naming the problem, exit
status 2, nothing written, found before Avalanche is imported where possible."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from avalanche_fscl.benchmarks.cli import main

TINY = ["--set", "train.base_epochs=1", "--set", "train.novel_epochs=1", "--strategy", "finetune"]


def _one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "--seeds", "-1"], "seeds: must be integers >= 0, got -1"),
        (["run", "--set", "stream.args.image_size=abc"], "stream.args.image_size: expected int, got 'abc' (str)"),
        (["run", "--set", "stream.args.image_size=0"], "stream.args.image_size: must be >= 1, got 0"),
        (["run", "--set", "stream.args.ways=100"], "sessions=3 x ways=100 needs 300 classes after the 4 base classes"),
        (["run", "--set", "stream.args.shots=[1"], "--set stream.args.shots=[1: not a YAML value"),
        (["run", "--set", "train.base_epochs"], "--set 'train.base_epochs': expected KEY=VALUE"),
        (["run", "--strategy", "nope"], "strategies: unknown 'nope'; allowed:"),
        (["run", "--config", "nope_fscil"], "shipped configs: cifar100_fscil"),
        (["run", "--stream", "mnist_fscil"], "stream.name: unknown 'mnist_fscil'"),
    ],
)
def test_bad_run_inputs_are_one_line(capsys, tmp_path, argv, expected):
    err = _one_line_error(capsys, [*argv, "--output", str(tmp_path / "out")])
    assert err.startswith("avalanche-fscl: error: ") and expected in err
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: x\ntrain: {base_epochs: 3\nseeds: [0]\n")
    err = _one_line_error(capsys, ["run", "--config", str(bad)])
    assert f"--config {bad}: invalid YAML at line" in err
    bad.write_text("- just\n- a list\n")
    assert "a config must be a mapping" in _one_line_error(capsys, ["run", "--config", str(bad)])
    bad.write_text("suite: x\ntrain: {base_epochs: -1}\n")
    assert "train.base_epochs: must be >= 0" in _one_line_error(capsys, ["run", "--config", str(bad)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, tmp_path):
    err = _one_line_error(capsys, ["run", "--device", "cuda", "--output", str(tmp_path / "o")])
    assert "device: 'cuda' requested but torch sees no CUDA GPU on this machine; use --device cpu" in err


def test_every_device_flag_is_checked_before_anything_runs(capsys, tmp_path):
    from avalanche_fscl.benchmarks.machine import device_problem

    assert device_problem("cpu") is None and device_problem("cuda:1", check_available=False) is None
    for bad in ("gpu", "cuda:x", "CPU", ""):
        assert device_problem(bad) == f"{bad!r} is not allowed; allowed: cpu, cuda, cuda:N, mps"
    for cmd in (["pretrain-clip", "--config", "rn_64"], ["meta-train-gram", "--output", str(tmp_path / "m")],
                ["base-to-new", "--output", str(tmp_path / "b")]):
        err = _one_line_error(capsys, [*cmd, "--device", "tpu"])
        assert f"{cmd[0]}: --device 'tpu' is not allowed; allowed: cpu, cuda, cuda:N, mps" in err
    assert not any(tmp_path.iterdir()), "nothing written"
    if not torch.cuda.is_available():
        assert "sees no CUDA GPU" in device_problem("cuda")
        assert "sees no CUDA GPU" in _one_line_error(capsys, ["pretrain-clip", "--config", "rn_64", "--device", "cuda"])


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_long_commands_take_no_progress(monkeypatch, tmp_path, flag):
    """pretrain-clip, meta-train-gram and base-to-new pass --no-progress to the function they run
    (as ``run`` does), so their logs hold no progress bar."""
    import avalanche_fscl.models.gram as gram
    from avalanche_fscl.benchmarks import base_to_new, pretrain_clip

    seen = {}

    def fake(name, out):
        def f(*args, **kwargs):
            seen[name] = kwargs["progress"]
            return out
        return f

    summary = {"steps": 1, "total_steps": 1, "wall_minutes": 0.0, "finished": False}
    monkeypatch.setattr(pretrain_clip, "pretrain_clip", fake("pretrain-clip", summary))
    monkeypatch.setattr(gram, "meta_train_gram", fake("meta-train-gram", tmp_path / "gram.pt"))
    monkeypatch.setattr(base_to_new, "run_base_to_new", fake("base-to-new", {}))
    assert main(["pretrain-clip", "--config", "test_tiny", "--output", str(tmp_path / "p"), *flag]) == 0
    assert main(["meta-train-gram", "--output", str(tmp_path / "m"), *flag]) == 0
    assert main(["base-to-new", "--output", str(tmp_path / "b"), *flag]) == 0
    assert seen == dict.fromkeys(("pretrain-clip", "meta-train-gram", "base-to-new"), not flag)


def test_argparse_errors_are_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--wandb", "cloud"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'cloud'" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["run", *TINY, "--output", str(out), "--no-progress"]) == 0
    return out


def test_resume_refuses_flags_that_would_change_the_run(capsys, finished_run):
    err = _one_line_error(capsys, ["run", "--resume", str(finished_run), "--strategy", "lwf", "--seeds", "1"])
    assert f"--resume continues {finished_run} with its saved config; it cannot take --strategy, --seeds" in err
    err = _one_line_error(capsys, ["run", "--resume", str(finished_run), "--wandb", "offline"])
    assert "--wandb offline: the run in" in err and "logs with --wandb off" in err
    # the same mode is fine, and resuming a finished run rewrites its report
    assert main(["run", "--resume", str(finished_run), "--wandb", "off", "--no-progress"]) == 0
    res = json.loads((finished_run / "results.json").read_text())
    assert len(res["invocations"]) == 2 and res["command"].startswith("avalanche-fscl run --set")


def test_report_errors_name_report(capsys, tmp_path):
    err = _one_line_error(capsys, ["report", str(tmp_path / "missing")])
    assert f"report {tmp_path / 'missing'}: no run there" in err and "--resume" not in err
    err = _one_line_error(capsys, ["run", "--resume", str(tmp_path / "missing")])
    assert f"--resume {tmp_path / 'missing'}: no run there" in err


def test_config_errors_come_before_avalanche_is_imported(tmp_path):
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from avalanche_fscl.benchmarks.cli import main\n"
        f"rc = main(['run', '--set', 'stream.args.image_size=abc', '--output', {str(tmp_path / 'o')!r}])\n"
        "print(rc, 'avalanche' in sys.modules, round(time.perf_counter() - t, 2))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    rc, imported, _seconds = res.stdout.split()
    assert (rc, imported) == ("2", "False"), res.stderr
    assert res.stderr.strip().splitlines() == [
        "avalanche-fscl: error: stream.args.image_size: expected int, got 'abc' (str)"]


def test_cli_flags_override_the_shipped_config(tmp_path):
    from avalanche_fscl.benchmarks.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "run", "--stream", "omniglot_fscil", "--strategy", "finetune", "--strategy", "prototype",
        "--seeds", "3", "4", "--device", "cpu", "--wandb", "offline", "--wandb-project", "p",
        "--set", "train.base_epochs=2", "--output", str(tmp_path / "o"), "--base-cache", "refresh",
    ])
    cfg = config_from_args(args)
    assert cfg.stream.name == "omniglot_fscil" and cfg.model.backbone == "conv4"
    assert cfg.strategies == ["finetune", "prototype"] and cfg.seeds == [3, 4]
    assert cfg.train.base_epochs == 2 and cfg.train.novel_epochs == 20
    assert cfg.wandb.mode == "offline" and cfg.wandb.project == "p" and cfg.base_cache == "refresh"


def test_list_names_streams_strategies_backbones_and_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["digits_fscil", "tiny_imagenet_fscil", "finetune", "prototype", "joint", "conv4",
                 "resnet12", "omniglot_fscil", "fscl", "fscl_no_step1", "omniglot_tasks"]:
        assert name in out
    assert out.index("strategies:") < out.index("backbones:") < out.index("configs:")
    assert ("fscl-rn-64-w32  kept checkpoints: pretrained='fscl', pretrained='fscl:prototypes', "
            "pretrained='fscl:prototypes_ls', pretrained='fscl:warm_color2'") in out


def test_every_shipped_config_is_valid():
    from avalanche_fscl.benchmarks.config import CONFIG_DIR, load_config
    from avalanche_fscl.benchmarks.runner import check_config

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == ["cifar100_fscil", "cub200_fscil", "digits_fscil", "mini_imagenet_fscil",
                     "omniglot_fscil", "omniglot_tasks", "tiny_imagenet_fscil", "tiny_imagenet_fscil_clip"]
    for name in names:
        cfg = load_config(name)
        if cfg.device.startswith("cuda"):
            cfg.device = "cpu"  # the GPU configs are checked here as CPU ones
        check_config(cfg)
        assert cfg.stream.name == {"omniglot_tasks": "omniglot_fscil", "tiny_imagenet_fscil_clip": "tiny_imagenet_fscil"}.get(name, name)


def test_sigterm_stops_a_command_like_ctrl_c_and_restores_the_handler():
    """kill PID (SIGTERM) raises KeyboardInterrupt inside a command, so its Ctrl-C path (checkpoint,
    how to resume) runs; the exit status then says SIGTERM (143); outside a command the previous
    handler is back. (End to end, with a checkpointed run: test_runner's slow Ctrl-C test.)"""
    import os
    import signal

    from avalanche_fscl.benchmarks.cli import _StopOnSIGTERM

    before = signal.getsignal(signal.SIGTERM)
    with _StopOnSIGTERM() as stop:
        assert stop.status(130) == 130  # a plain Ctrl-C keeps 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes of the main thread
                pass
        assert (stop.status(130), stop.status(0), stop.status(2)) == (143, 0, 2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_top_level_help_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert "avalanche-fscl: run continual few-shot benchmark suites" in out and "``" not in out
    for command in ("run", "report", "list", "pretrain-clip", "meta-train-gram", "base-to-new"):
        assert command in out
    assert out.rstrip().endswith("every command has --help, e.g. avalanche-fscl run --help")
