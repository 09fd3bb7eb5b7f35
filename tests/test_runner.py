"""The benchmark runner end to end on digits_fscil: report files, shared base session,
determinism, kill-and-resume, config validation, W&B offline files and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from avalanche_fscl.benchmarks import ConfigError, config_from_dict, run_benchmark
from avalanche_fscl.benchmarks.cli import main
from avalanche_fscl.benchmarks.runner import BenchmarkError

QUICK = {
    "suite": "digits_quick",
    "stream": {"name": "digits_fscil", "args": {}},
    "model": {"backbone": "conv4_small", "head": "cosine"},
    "train": {"batch_size": 32, "base_epochs": 4, "novel_epochs": 3, "base_lr": 0.1, "novel_lr": 0.01},
    "strategies": ["finetune", "replay", "prototype", "joint"],
    "seeds": [0],
}


def quick_config(tmp: Path, **changes) -> dict:
    data = json.loads(json.dumps(QUICK))
    data["output"] = str(tmp / "out")
    data["base_cache"] = str(tmp / "base_cache")
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    cfg = config_from_dict(quick_config(tmp))
    printed = []
    results = run_benchmark(cfg, command="pytest", progress=False, log=printed.append)
    return tmp, cfg, results, printed[0]


def test_report_files_and_table_contents(suite):
    tmp, cfg, results, table = suite
    out = Path(cfg.output)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"]["columns"] == [
        "strategy", "S0", "S1", "S2", "S3", "AA", "PD", "Base (last)", "Novel (last)", "HM (last)"]
    assert [row[0] for row in on_disk["summary"]["rows"]] == cfg.strategies
    assert on_disk["config"]["seeds"] == [0] and on_disk["command"] == "pytest"
    assert on_disk["environment"]["torch"] and on_disk["wall_time_s"] > 0
    for run in on_disk["runs"]:
        assert len(run["table"]["sessions"]) == 4 and len(run["session_times_s"]) == 4
        assert run["peak_memory"]["cpu_rss_mb"] > 0
    md = (out / "results.md").read_text()
    assert table in md and "| finetune |" in md and "Wall time" in md
    assert (out / "sessions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"
    assert not (out / "checkpoints" / "finetune" / "seed0.pt").exists(), "finished runs drop their checkpoint"


def test_learning_happened_and_baselines_behave(suite):
    _, _, results, _ = suite
    per = results["summary"]["per_strategy"]
    s0 = {name: p["session_acc"][0][0] for name, p in per.items()}
    assert s0["finetune"] > 0.8, "4-class base session, chance 0.25"
    # finetune, replay and joint share one base-session model: identical session-0 accuracy
    assert s0["finetune"] == s0["replay"] == s0["joint"]
    last = {name: p["session_acc"][-1][0] for name, p in per.items()}
    assert last["replay"] > last["finetune"] + 0.05, "replay must forget less than fine-tuning"
    # prototypes recognise novel digits from 5 shots without any gradient step (chance: 0.1)
    assert per["prototype"]["last_novel"][0] > 0.2


def test_base_session_is_trained_once_and_cached(suite):
    tmp, cfg, results, _ = suite
    cached = list((tmp / "base_cache").glob("*.pt"))
    assert len(cached) == 1, "one base-session checkpoint shared by all four strategies"
    times = {r["strategy"]: r["session_times_s"][0] for r in results["runs"]}
    assert times["finetune"] > 5 * times["replay"], "later strategies load the base session"


def test_same_seed_same_results_with_and_without_the_cache(suite, tmp_path):
    _, _, first, _ = suite
    data = quick_config(tmp_path)  # fresh base cache: the base session is trained again
    again = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    assert [r["table"] for r in again["runs"]] == [r["table"] for r in first["runs"]]


def _cli_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["AVALANCHE_FSCL_CACHE"] = str(tmp / "cache")
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results(tmp_path):
    data = quick_config(tmp_path, strategies=["finetune", "replay", "prototype"])
    data["train"]["base_epochs"] = 8
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    ref = run_benchmark(config_from_dict({**data, "output": str(tmp_path / "ref"),
                                          "base_cache": str(tmp_path / "ref_cache")}),
                        progress=False, log=lambda s: None)

    out = Path(data["output"])
    cmd = [sys.executable, "-m", "avalanche_fscl.benchmarks.cli", "run", "--config", str(cfg_file), "--no-progress"]
    proc = subprocess.Popen(cmd, env=_cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "replay" / "seed0.pt"  # mid-stream of the second strategy
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run must still be going when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the run was killed before it finished"
    assert (out / "runs" / "finetune" / "seed0.json").exists()

    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert [r["table"] for r in resumed["runs"]] == [r["table"] for r in ref["runs"]]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"epochs": 3}, r"unknown key epochs; allowed keys: suite, stream"),
        ({"train": {"base_epochs": "many"}}, r"train\.base_epochs: expected int, got 'many'"),
        ({"train": {"lr": 0.1}}, r"unknown key train\.lr; allowed keys in train: batch_size"),
        ({"model": {"head": "mlp"}}, r"model\.head: 'mlp' is not allowed; allowed: 'linear' \| 'cosine'"),
        ({"wandb": {"mode": "cloud"}}, r"wandb\.mode: 'cloud' is not allowed; allowed: 'off' \| 'offline' \| 'online'"),
        ({"seeds": [0, "one"]}, r"seeds\[1\]: expected int"),
        ({"seeds": []}, r"seeds: at least one seed"),
        ({"device": "tpu"}, r"device: 'tpu' is not allowed; allowed: cpu, cuda, cuda:N"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: must be >= 1"),
    ],
)
def test_config_validation_errors_name_the_key(tmp_path, change, match):
    data = quick_config(tmp_path)
    for k, v in change.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"strategies": ["finetune", "magic"]}, r"strategies: unknown 'magic'; allowed: .*ewc.*finetune"),
        ({"strategy_args": {"ewc": {"lambda": 1}}}, r"strategy_args\.ewc\.lambda: unknown hyper-parameter; allowed: ewc_lambda"),
        ({"stream": {"name": "mnist_fscil", "args": {}}}, r"stream\.name: unknown 'mnist_fscil'; allowed: .*digits_fscil"),
        ({"model": {"backbone": "vit"}}, r"model\.backbone: unknown 'vit'; allowed: conv4"),
    ],
)
def test_unknown_names_fail_before_any_work(tmp_path, change, match):
    cfg = config_from_dict(quick_config(tmp_path, **change))
    with pytest.raises(ConfigError, match=match):
        run_benchmark(cfg, progress=False)
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_output_with_a_previous_run_is_not_overwritten(suite):
    _, cfg, _, _ = suite
    with pytest.raises(BenchmarkError, match=r"already holds a run; continue it with `avalanche-fscl run --resume"):
        run_benchmark(cfg, progress=False)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: x\ntrain: {base_epochs: -1}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "train.base_epochs: must be >= 0" in capsys.readouterr().err
    assert main(["run", "--config", "nope_fscil"]) == 2
    assert "shipped configs: cifar100_fscil" in capsys.readouterr().err


def test_cli_flags_override_the_shipped_config(tmp_path):
    from avalanche_fscl.benchmarks.cli import build_parser, config_from_args

    args = build_parser().parse_args([
        "run", "--stream", "omniglot_fscil", "--strategy", "finetune", "--strategy", "prototype",
        "--seeds", "3", "4", "--device", "cpu", "--wandb", "offline", "--wandb-project", "p",
        "--set", "train.base_epochs=2", "--output", str(tmp_path / "o"),
    ])
    cfg = config_from_args(args)
    assert cfg.stream.name == "omniglot_fscil" and cfg.model.backbone == "conv4"
    assert cfg.strategies == ["finetune", "prototype"] and cfg.seeds == [3, 4]
    assert cfg.train.base_epochs == 2 and cfg.train.novel_epochs == 20
    assert cfg.wandb.mode == "offline" and cfg.wandb.project == "p"


def test_list_names_streams_strategies_backbones_and_configs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["digits_fscil", "tiny_imagenet_fscil", "finetune", "prototype", "joint", "conv4",
                 "resnet12", "omniglot_fscil"]:
        assert name in out
    assert out.index("strategies:") < out.index("backbones:") < out.index("configs:")


def test_every_shipped_config_is_valid():
    from avalanche_fscl.benchmarks.config import CONFIG_DIR, load_config
    from avalanche_fscl.benchmarks.runner import check_names

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == ["cifar100_fscil", "cub200_fscil", "digits_fscil", "mini_imagenet_fscil",
                     "omniglot_fscil", "tiny_imagenet_fscil"]
    for name in names:
        cfg = load_config(name)
        check_names(cfg)
        assert cfg.stream.name == name


def test_wandb_offline_writes_one_run_per_strategy_and_seed(tmp_path):
    from avalanche_fscl.benchmarks.wandb_logger import read_offline_run

    data = quick_config(tmp_path, strategies=["finetune", "prototype"], seeds=[0])
    data["wandb"] = {"mode": "offline", "project": "fscl-test"}
    results = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    runs = sorted((tmp_path / "out" / "wandb").glob("offline-run-*"))
    decoded = [read_offline_run(r) for r in runs]
    by_name = {d["name"]: d for d in decoded}
    assert set(by_name) == {"digits_fscil/finetune/seed0", "digits_fscil/prototype/seed0", "digits_fscil/summary"}
    assert all(d["group"] == "digits_quick" and d["project"] == "fscl-test" for d in decoded)
    ft = by_name["digits_fscil/finetune/seed0"]
    assert ft["config"]["strategy"] == "finetune" and ft["config"]["train"]["base_epochs"] == 4
    logged = {row["session"]: row["FSCIL/session_acc"] for row in ft["history"] if "FSCIL/session_acc" in row}
    expected = [r for r in results["runs"] if r["strategy"] == "finetune"][0]["table"]["sessions"]
    assert logged == pytest.approx({row["session"]: row["acc"] for row in expected})
    assert ft["summary"]["AA"] == pytest.approx(sum(r["acc"] for r in expected) / len(expected))
    summary_history = by_name["digits_fscil/summary"]["history"]
    assert any("results_table" in row for row in summary_history)
    assert any("sessions" in row for row in summary_history)


def test_report_of_a_partially_finished_run(suite, tmp_path, capsys):
    import shutil

    _, cfg, results, _ = suite
    copy = tmp_path / "partial"
    shutil.copytree(cfg.output, copy)
    (copy / "runs" / "joint" / "seed0.json").unlink()
    for name in ("results.json", "results.md", "sessions.png"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    rep = json.loads((copy / "results.json").read_text())
    assert rep["incomplete"] == ["joint/seed0"]
    assert [row[0] for row in rep["summary"]["rows"]] == ["finetune", "replay", "prototype"]
    finished = {r["strategy"]: r["table"] for r in results["runs"]}
    assert {r["strategy"]: r["table"] for r in rep["runs"]} == {k: v for k, v in finished.items() if k != "joint"}
    md = (copy / "results.md").read_text()
    assert "**Incomplete**: not finished yet: joint/seed0" in md
    assert (copy / "sessions.png").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run there" in capsys.readouterr().err
