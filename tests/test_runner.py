"""The benchmark runner end to end on digits_fscil: report files, the shared base session and
its cache key, determinism, kill-and-resume, config validation, W&B offline files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from avalanche_fscl.benchmarks import ConfigError, config_from_dict, run_benchmark
from avalanche_fscl.benchmarks.cli import main
from avalanche_fscl.benchmarks.runner import BenchmarkError
from avalanche_fscl.benchmarks.machine import cpu_model

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
    data["base_cache_dir"] = str(tmp / "base_cache")
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
    # the CPU's model name, not just "x86_64": results pair only within one CPU type
    assert on_disk["environment"]["cpu_model"] == cpu_model()
    assert f"- Machine: {cpu_model()}," in (out / "results.md").read_text()
    for run in on_disk["runs"]:
        assert len(run["table"]["sessions"]) == 4 and len(run["session_times_s"]) == 4
        assert run["peak_memory"]["cpu_rss_mb"] > 0
        t = run["table"]
        accs = [r["acc"] for r in t["sessions"]]
        assert t["pd"] == pytest.approx(accs[0] - accs[-1]) and t["aa"] == pytest.approx(sum(accs) / 4)
    md = (out / "results.md").read_text()
    assert table in md and "| finetune |" in md and "Wall time" in md
    assert "sample standard deviation (ddof=1)" in md and "### Cost per (strategy, seed)" in md
    assert (out / "sessions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"
    assert not (out / "checkpoints").exists(), "finished runs leave no (empty) checkpoint folders"
    umask = os.umask(0)
    os.umask(umask)
    for f in [out / "results.json", out / "results.md", out / "sessions.png", out / "config.yaml",
              out / "runs" / "replay" / "seed0.json"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


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
    # joint (all data, class-balanced) is the bound: above every continual strategy, and it learns the novel classes
    assert all(last["joint"] > last[n] + 0.05 for n in ("finetune", "replay", "prototype"))
    assert per["joint"]["last_novel"][0] > per["prototype"]["last_novel"][0]


def test_base_session_is_trained_once_and_cached(suite):
    tmp, cfg, results, _ = suite
    cached = list((tmp / "base_cache").glob("*.pt"))
    assert len(cached) == 1, "one base-session checkpoint shared by all four strategies"
    info = {r["strategy"]: r["base_session"] for r in results["runs"]}
    assert [i["source"] for i in info.values()] == ["trained", "cache", "cache", "cache"]
    assert {i["file"] for i in info.values()} == {str(cached[0])}
    assert results["summary"]["per_strategy"]["finetune"]["base_trained"] == 1


def test_same_seed_same_results_with_and_without_the_cache(suite, tmp_path):
    _, _, first, _ = suite
    data = quick_config(tmp_path)  # fresh base cache: the base session is trained again
    again = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    assert [r["table"] for r in again["runs"]] == [r["table"] for r in first["runs"]]
    off = run_benchmark(config_from_dict(quick_config(tmp_path, output=str(tmp_path / "off"), base_cache="off",
                                                      strategies=["finetune", "replay"])),
                        progress=False, log=lambda s: None)
    assert [r["base_session"]["source"] for r in off["runs"]] == ["trained", "trained"]
    assert [r["table"] for r in off["runs"]] == [r["table"] for r in first["runs"][:2]]


def test_refresh_retrains_and_overwrites(suite, tmp_path):
    tmp, _, _, _ = suite
    (cached,) = (tmp / "base_cache").glob("*.pt")
    before = cached.stat().st_mtime_ns
    data = quick_config(tmp, output=str(tmp_path / "refresh"), base_cache="refresh", strategies=["finetune", "replay"])
    res = run_benchmark(config_from_dict(data), progress=False, log=lambda s: None)
    assert [r["base_session"]["source"] for r in res["runs"]] == ["trained", "trained"]
    assert cached.stat().st_mtime_ns > before


def test_cache_key_covers_code_versions_and_settings(tmp_path):
    from avalanche_fscl.benchmarks.cache import BaseSessionCache, CacheError, _sources, code_fingerprint
    from avalanche_fscl.strategies import make_spec

    names = {f"{p.parent.name}/{p.name}" for p in _sources([])}
    assert {"models/conv4.py", "models/classifier.py", "streams/data.py", "strategies/template.py",
            "strategies/spec.py"} <= names
    assert "strategies/baselines.py" in {f"{p.parent.name}/{p.name}" for p in _sources([make_spec("finetune")])}
    # the fingerprint follows the source text of the strategy's module
    mod = tmp_path / "my_method.py"
    mod.write_text("from avalanche_fscl.strategies import StrategySpec\nclass M(StrategySpec):\n    x = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import my_method
        first = code_fingerprint(my_method.M)
        mod.write_text(mod.read_text().replace("x = 1", "x = 2"))
        importlib.reload(my_method)
        assert code_fingerprint(my_method.M) != first
    finally:
        sys.path.remove(str(tmp_path))
    a = BaseSessionCache(tmp_path, {"k": 1}, "on", label="s")
    a.save({}, machine="CPU A")
    again = BaseSessionCache(tmp_path, {"k": 1}, "on", label="s")
    assert again.trained_on is None and again.load() == {} and again.trained_on == "CPU A"
    assert again.describe("cache")["trained_on"] == "CPU A"  # where the weights were trained, not loaded
    assert BaseSessionCache(tmp_path, {"k": 2}, "on", label="s").path != a.path
    # a file whose stored key differs from its name's key is refused, not loaded
    b = BaseSessionCache(tmp_path, {"k": 3}, "on", label="s")
    b.path.write_bytes(a.path.read_bytes())
    with pytest.raises(CacheError, match="holds the weights of another configuration"):
        b.load()
    assert BaseSessionCache(tmp_path, {"k": 1}, "off", label="s").load() is None
    with pytest.raises(ValueError, match="base_cache: 'maybe' is not allowed; allowed: on, off, refresh"):
        BaseSessionCache(tmp_path, {}, "maybe")


def _cli_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["AVALANCHE_FSCL_CACHE"] = str(tmp / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def _start_and_wait_for(cmd: list[str], env: dict, target: Path, timeout: float = 240) -> subprocess.Popen:
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # inherited SIG_IGN: give the child the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run must still be going when it is stopped: {proc.stderr.read()}"
    return proc


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results_and_complete_wandb_runs(tmp_path):
    from avalanche_fscl.benchmarks.wandb_logger import read_offline_run

    data = quick_config(tmp_path, strategies=["finetune", "replay", "own_everything", "prototype"])
    data["train"]["base_epochs"] = 8
    data["wandb"] = {"mode": "offline", "project": "resume"}
    data["strategy_args"] = {"own_everything": {"novel_epochs": 300}}  # a window of seconds to kill it in
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    import own_strategy  # noqa: F401  (registers own_everything here too)

    ref = run_benchmark(config_from_dict({**data, "output": str(tmp_path / "ref"), "wandb": {"mode": "off"},
                                          "base_cache_dir": str(tmp_path / "ref_cache")}),
                        progress=False, log=lambda s: None)

    out = Path(data["output"])
    cmd = [sys.executable, "-c", "import own_strategy, sys; from avalanche_fscl.benchmarks.cli import main; "
           "sys.exit(main(sys.argv[1:]))", "run", "--config", str(cfg_file), "--no-progress"]
    target = out / "checkpoints" / "own_everything" / "seed0.pt"  # mid-stream of the third strategy
    proc = _start_and_wait_for(cmd, _cli_env(tmp_path), target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists(), "the run was killed before it finished"
    assert (out / "runs" / "replay" / "seed0.json").exists()

    resumed_cmd = [*cmd[:3], "run", "--resume", str(out), "--no-progress"]
    res = subprocess.run(resumed_cmd, env=_cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert [r["table"] for r in resumed["runs"]] == [r["table"] for r in ref["runs"]]
    assert [r["columns"] for r in resumed["runs"]] == [r["columns"] for r in ref["runs"]]
    assert len(resumed["invocations"]) == 2 and "--resume" in resumed["invocations"][1]["command"]
    assert all(r["session_machines"] == [cpu_model()] * 4 for r in resumed["runs"]), "kept through the kill"

    # W&B: exactly one complete run per (strategy, seed) + the summary; the killed attempt set aside
    folders = sorted((out / "wandb").glob("offline-run-*"))
    decoded = {d["name"]: d for d in map(read_offline_run, folders)}
    assert len(folders) == len(decoded) == 5
    for name in ["finetune", "replay", "own_everything", "prototype"]:
        history = [row for row in decoded[f"digits_fscil/{name}/seed0"]["history"] if "FSCIL/session_acc" in row]
        assert [row["session"] for row in history] == [0, 1, 2, 3], name  # whole and monotonic
        expected = next(r for r in ref["runs"] if r["strategy"] == name)["table"]["sessions"]
        assert [row["FSCIL/session_acc"] for row in history] == pytest.approx([r["acc"] for r in expected])
    killed = list((out / "wandb-setaside").glob("offline-run-*/*.wandb.killed"))
    assert len(killed) == 1 and killed[0].name.startswith("run-")

    # wandb's own reader: `wandb sync <output>/wandb` uploads every run, whole and monotonic
    from wandb_server import FakeWandbServer

    with FakeWandbServer() as server:
        res = server.sync(out / "wandb")
    assert res.returncode == 0, res.stderr
    for name in ["finetune", "replay", "own_everything", "prototype"]:
        run_id = decoded[f"digits_fscil/{name}/seed0"]["run_id"]
        expected = next(r for r in ref["runs"] if r["strategy"] == name)["table"]["sessions"]
        uploaded = server.session_history(run_id)
        assert [s for s, _ in uploaded] == [0, 1, 2, 3], (name, res.stderr[-2000:])
        assert [v for _, v in uploaded] == pytest.approx([r["acc"] for r in expected])
    assert any("results_table" in f for f in server.uploads[decoded["digits_fscil/summary"]["run_id"]])


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path, sig, status):
    """Ctrl-C, and SIGTERM (kill, a scheduler; a background job ignores SIGINT), stop at a checkpoint."""
    data = quick_config(tmp_path, strategies=["finetune", "replay"])
    data["strategy_args"] = {"replay": {"epochs": 300}}  # a window of seconds to interrupt it in
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(data))
    out = Path(data["output"])
    cmd = [sys.executable, "-m", "avalanche_fscl.benchmarks.cli", "run", "--config", str(cfg_file), "--no-progress"]
    proc = _start_and_wait_for(cmd, _cli_env(tmp_path), out / "checkpoints" / "replay" / "seed0.pt")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert "interrupted: replay/seed0 stopped after session" in err
    assert f"continue with: avalanche-fscl run --resume {out}" in err
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0


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
        ({"seeds": [-1]}, r"seeds: must be integers >= 0, got -1"),
        ({"device": "tpu"}, r"device: 'tpu' is not allowed; allowed: cpu, cuda, cuda:N"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: must be >= 1"),
        ({"base_cache": "/tmp/x"}, r"base_cache: '/tmp/x' is not allowed; allowed: 'on' \| 'off' \| 'refresh'"),
        ({"num_threads": 0}, r"num_threads: must be >= 1 or null, got 0"),
        ({"train": {"materialize_mb": -1}}, r"train\.materialize_mb: must be >= 0, got -1"),
        ({"train": {"autocast": "fp8"}}, r"train\.autocast: 'fp8'; allowed: None, 'bf16', 'fp16', 'auto'"),
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
        ({"stream": {"name": "digits_fscil", "args": {"image_size": "abc"}}}, r"stream\.args\.image_size: expected int, got 'abc'"),
        ({"stream": {"name": "digits_fscil", "args": {"image_size": 0}}}, r"stream\.args\.image_size: must be >= 1, got 0"),
        ({"stream": {"name": "digits_fscil", "args": {"colour": True}}}, r"stream\.args\.colour: digits_fscil takes no argument 'colour'; allowed: base_classes, sessions"),
        ({"stream": {"name": "digits_fscil", "args": {"seed": 1}}}, r"stream\.args\.seed: set by the runner"),
        ({"stream": {"name": "digits_fscil", "args": {"ways": 100}}}, r"stream digits_fscil .*sessions=3 x ways=100 needs 300 classes"),
    ],
)
def test_bad_names_and_stream_args_fail_before_any_output(tmp_path, change, match):
    cfg = config_from_dict(quick_config(tmp_path, **change))
    with pytest.raises(ConfigError, match=match):
        run_benchmark(cfg, progress=False)
    assert not (tmp_path / "out").exists(), "nothing is written for a config that fails"


def test_output_with_a_previous_run_is_not_overwritten(suite):
    _, cfg, _, _ = suite
    with pytest.raises(BenchmarkError, match=r"already holds a run; continue it with `avalanche-fscl run --resume"):
        run_benchmark(cfg, progress=False)


def test_checkpoint_of_another_format_is_a_clear_error(tmp_path):
    import torch

    data = quick_config(tmp_path, strategies=["finetune"])
    out = Path(data["output"])
    (out / "checkpoints" / "finetune").mkdir(parents=True)
    torch.save({"version": 1, "session": 0}, out / "checkpoints" / "finetune" / "seed0.pt")
    cfg = config_from_dict(data)
    (out / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(BenchmarkError, match=r"checkpoint format version 1, but this avalanche-fscl reads version 2.*delete"):
        run_benchmark(cfg, resume=True, progress=False)


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
    logged = [row for row in ft["history"] if "FSCIL/session_acc" in row]
    expected = [r for r in results["runs"] if r["strategy"] == "finetune"][0]["table"]["sessions"]
    assert [row["session"] for row in logged] == [0, 1, 2, 3]  # the explicit step metric
    assert [row["FSCIL/session_acc"] for row in logged] == pytest.approx([row["acc"] for row in expected])
    assert ft["summary"]["AA"] == pytest.approx(sum(r["acc"] for r in expected) / len(expected))
    tables = [k for row in ft["history"] for k in row if isinstance(row[k], dict) and row[k].get("_type") == "table-file"]
    assert tables == ["FSCIL/table"], "each strategy run logs its table once"
    summary = by_name["digits_fscil/summary"]
    table_rows = [row for row in summary["history"] if "results_table" in row]
    assert len(table_rows) == 1 and any("sessions" in row for row in summary["history"])
    cols_file = next((tmp_path / "out" / "wandb").glob(f"offline-run-*-{summary['run_id']}/files/media/table/results_table*.json"))
    table = json.loads(cols_file.read_text())
    assert table["columns"][:5] == ["strategy", "S0 mean", "S0 std", "S1 mean", "S1 std"]
    assert all(isinstance(v, (int, float)) or v is None for row in table["data"] for v in row[1:])


def test_report_of_a_partially_finished_run_keeps_its_provenance(suite, tmp_path, capsys):
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
    assert rep["command"] == "pytest" and rep["wall_time_s"] == results["wall_time_s"]
    assert [row[0] for row in rep["summary"]["rows"]] == ["finetune", "replay", "prototype"]
    finished = {r["strategy"]: r["table"] for r in results["runs"]}
    assert {r["strategy"]: r["table"] for r in rep["runs"]} == {k: v for k, v in finished.items() if k != "joint"}
    md = (copy / "results.md").read_text()
    assert "**Incomplete**: not finished yet: joint/seed0" in md
    assert "- Command: `pytest`" in md and "avalanche-fscl report" not in md
    assert (copy / "sessions.png").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "report " in err and "no run there" in err and "--resume" not in err


def test_report_names_every_machine_of_a_suite_resumed_elsewhere(suite, tmp_path, capsys):
    """A suite resumed on another CPU type says so, per run: the same seed gives other numbers
    there, so its rows pair only within one machine."""
    import shutil

    _, cfg, results, _ = suite
    assert all(r["session_machines"] == [cpu_model()] * 4 for r in results["runs"])
    assert {r["base_session"]["source"] for r in results["runs"]} == {"trained", "cache"}
    assert all(r["base_session"]["trained_on"] == cpu_model() for r in results["runs"])
    assert "more than one machine" not in (Path(cfg.output) / "results.md").read_text()
    copy = tmp_path / "moved"
    shutil.copytree(cfg.output, copy)
    path = copy / "runs" / "prototype" / "seed0.json"
    run = json.loads(path.read_text())
    run["session_machines"][2:] = ["Other CPU (family 6 model 143; avx512f)"] * 2
    path.write_text(json.dumps(run))
    path = copy / "runs" / "joint" / "seed0.json"
    run = json.loads(path.read_text())
    run["base_session"]["trained_on"] = "Third CPU"  # a cached base session trained elsewhere
    path.write_text(json.dumps(run))
    prov = json.loads((copy / "run.json").read_text())
    prov["invocations"].append({"command": "avalanche-fscl run --resume moved", "wall_time_s": 1.0,
                                "environment": {**prov["invocations"][0]["environment"],
                                                "cpu_model": "Other CPU (family 6 model 143; avx512f)"}})
    (copy / "run.json").write_text(json.dumps(prov))
    assert main(["report", str(copy)]) == 0
    md = (copy / "results.md").read_text()
    assert "- Resumed: `avalanche-fscl run --resume moved` (commit " in md
    assert "on Other CPU (family 6 model 143; avx512f)" in md
    line = next(x for x in md.splitlines() if "more than one machine" in x)
    assert f"{cpu_model()}: finetune/seed0, replay/seed0, prototype/seed0, joint/seed0" in line
    assert "Other CPU (family 6 model 143; avx512f): prototype/seed0; " in line
    assert line.endswith("Third CPU: joint/seed0 (base session)")
    capsys.readouterr()


def test_session_plot_has_integer_ticks_distinct_styles_and_an_honest_y_range():
    from avalanche_fscl.benchmarks.report import session_figure

    per = {f"s{i}": {"session_acc": [(0.90, None), (0.895, None), (0.894 - 0.001 * i, None)], "seeds": [0]}
           for i in range(5)}
    fig = session_figure({"per_strategy": per}, "title")
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 1, 2]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 20, "a 0.6-point change must not fill the whole height"
    styles = {(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()}
    assert len(styles) == 5, "every strategy has its own marker/line style"
    assert ax.get_title() == "title"


def test_equivalence_tool_compares_run_by_run(suite, tmp_path, capsys):
    import shutil

    from avalanche_fscl.benchmarks.equivalence import main as equivalence

    _, cfg, _, _ = suite
    copy = tmp_path / "copy"
    shutil.copytree(cfg.output, copy)
    assert equivalence([cfg.output, str(copy)]) == 0
    assert "| replay | 0 | yes | 0.00 |" in capsys.readouterr().out
    run = json.loads((copy / "runs" / "replay" / "seed0.json").read_text())
    run["table"]["sessions"][2]["acc"] += 0.01
    (copy / "runs" / "replay" / "seed0.json").write_text(json.dumps(run))
    assert equivalence([cfg.output, str(copy), "--output", str(tmp_path / "eq.md")]) == 1
    assert "| replay | 0 | NO | 1.00 |" in (tmp_path / "eq.md").read_text()
    assert equivalence([cfg.output, str(tmp_path / "none")]) == 2


def test_cpu_model_reads_proc_cpuinfo(monkeypatch, tmp_path):
    from avalanche_fscl.benchmarks import machine

    info = tmp_path / "cpuinfo"
    real = machine.Path
    monkeypatch.setattr(machine, "Path", lambda p: real(info) if p == "/proc/cpuinfo" else real(p))
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n")
    assert machine.cpu_model() == "AMD EPYC 9R14 (no avx2)"
    # two parts a virtual machine names alike: the family/model and the vector ISA tell them apart
    # (only the first processor's block is read)
    zen3 = "cpu family\t: 25\nmodel\t\t: 1\nstepping\t: 1\nflags\t\t: fpu avx avx2 fma\n"
    zen4 = "cpu family\t: 25\nmodel\t\t: 17\nstepping\t: 1\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\n{zen3}\nprocessor\t: 1\nmodel name\t: other\n{zen4}")
    assert machine.cpu_model() == "AMD EPYC (family 25 model 1 stepping 1; avx2)"
    info.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\n{zen4}")
    assert machine.cpu_model() == "AMD EPYC (family 25 model 17 stepping 1; avx2, avx512f, avx512_vnni, avx512_bf16)"
    monkeypatch.setattr(machine, "Path", lambda p: real(tmp_path / "missing"))
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.cpu_model() == machine.platform.machine()


def test_train_materialize_mb_reaches_the_strategies_and_changes_no_number(tmp_path):
    """The runner's ``train.materialize_mb`` (default on): the same tables as per-sample loading,
    for a plain strategy, a cumulative one and one whose plugin replaces the loader (replay)."""
    tables = {}
    for mb in (0, 1024):
        cfg = config_from_dict(quick_config(tmp_path / str(mb), train={**QUICK["train"], "materialize_mb": mb},
                                            strategies=["finetune", "joint", "replay"]))
        assert cfg.train.materialize_mb == mb
        out = run_benchmark(cfg, command="pytest", progress=False, log=lambda *_: None)
        tables[mb] = {r["strategy"]: r["table"] for r in out["runs"]}
    assert set(tables[0]) == {"finetune", "joint", "replay"} and tables[0] == tables[1024]


def test_overhead_host_probe_measures_both_loading_paths():
    from avalanche_fscl.benchmarks.overhead import _model, measure_overhead

    probe = _model("host_probe", (1, 8, 8), 10, seed=0)
    assert sum(p.numel() for p in probe.backbone.parameters()) == 64 * 16 + 16  # one 16-unit linear layer
    recs = {mb: measure_overhead("digits_fscil", "host_probe", epochs=1, batch_size=32, data_root=None, repeats=1,
                                 materialize_mb=mb) for mb in (0, 1024)}
    for mb, rec in recs.items():
        assert rec["materialize_mb"] == mb and rec["backbone"] == "host_probe"
        assert rec["plain_s_per_epoch"] > 0 and rec["ratio"] == pytest.approx(rec["runner_s_per_epoch"] / rec["plain_s_per_epoch"])


def test_train_autocast_auto_is_resolved_by_timing_recorded_and_keys_the_base_session(tmp_path):
    from avalanche_fscl.benchmarks.runner import choose_autocast
    from avalanche_fscl.streams import digits_fscil

    cfg = config_from_dict(quick_config(tmp_path, train={**QUICK["train"], "autocast": "auto"}))
    rng = torch.get_rng_state()
    best, times = choose_autocast(cfg, digits_fscil(seed=0))
    assert torch.equal(torch.get_rng_state(), rng), "the probe leaves the random generators as it found them"
    assert set(times) == {"fp32", "bf16"} and all(t > 0 for t in times.values())
    # the times come rounded to 0.1 ms; a tie after rounding is consistent with either choice
    assert best in ({None, "bf16"} if times["fp32"] == times["bf16"] else {None if times["fp32"] < times["bf16"] else "bf16"})

    runs = {}
    for ac in ("auto", "bf16", None):
        cfg = config_from_dict(quick_config(tmp_path / str(ac), train={**QUICK["train"], "autocast": ac},
                                            strategies=["prototype"]))
        res = run_benchmark(cfg, command="pytest", progress=False, log=lambda *_: None)
        saved = yaml.safe_load((Path(cfg.output) / "config.yaml").read_text())["train"]["autocast"]
        runs[ac] = res["runs"][0]["base_session"]["key"], saved, res["environment"]
    key, saved, env = runs["auto"]
    assert saved in (None, "bf16") and set(env["autocast_probe_s"]) == {"fp32", "bf16"}, "a resume runs in the chosen precision"
    assert "autocast_probe_s" not in runs["bf16"][2]
    assert runs["bf16"][0] != runs[None][0], "bf16 weights never load as fp32 ones"
    from avalanche_fscl.strategies import StrategyContext, make_spec

    keys = {ac: make_spec("prototype").base_session_key(StrategyContext(
        digits_fscil(seed=0), config=config_from_dict(quick_config(tmp_path, train={**QUICK["train"], "autocast": ac}))))
        for ac in (None, "bf16")}
    assert keys["bf16"]["base"] == [*keys[None]["base"], "bf16"] and len(keys[None]["base"]) == 7, "fp32 keeps its old key"


def test_library_entry_points_give_the_callers_thread_count_back(tmp_path):
    """A suite run with ``num_threads: 1`` (and each other entry point that sets threads) restores
    the caller's count, also when it raises: a library call must not leave the process on one thread."""
    from avalanche_fscl.benchmarks import base_to_new, pretrain_clip, runner
    from avalanche_fscl.benchmarks.machine import restores_torch_threads
    from avalanche_fscl.models import gram

    for fn in (runner.run_benchmark, pretrain_clip.pretrain_clip, gram.meta_train_gram, base_to_new.run_base_to_new):
        assert fn.__wrapped__ is not None, fn.__name__

    @restores_torch_threads
    def sets_one_and_fails():
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            sets_one_and_fails()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
