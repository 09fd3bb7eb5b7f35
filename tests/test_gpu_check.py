"""benchmarks/gpu_check.sh, the one-call GPU check: GPU time is rare here, so the script is
dry-run on the CPU (tiny settings) to keep it from rotting between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, require_dataset

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()


def _run(tmp_path: Path, check_dir: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "OUT": str(tmp_path / "out"), "GPU_CHECK_DIR": str(check_dir), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=full, capture_output=True, text=True, timeout=900)


def test_gpu_check_refuses_a_results_folder_that_is_not_empty(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.json").write_text("{}")
    res = _run(tmp_path, used, GPU_DEVICE="cpu", QUICK="1")
    assert res.returncode == 2
    assert f"gpu_check: {used} is not empty (GPU_CHECK_DIR)" in res.stdout
    assert sorted(p.name for p in used.iterdir()) == ["old.json"] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gpu_check_dry_runs_every_step_on_the_cpu(tmp_path, data_root):
    require_dataset(data_root, "omniglot")
    res = _run(tmp_path, tmp_path / "check", GPU_DEVICE="cpu", QUICK="1", GPU_DATA=str(data_root))
    steps = (tmp_path / "out" / "steps.log").read_text()
    native_bf16 = any(f in CPU_FLAGS for f in ("avx512_bf16", "amx_bf16"))
    assert res.returncode == 0, steps
    assert "done: 0 failed step(s)" in steps and steps.count("rc=0") == (9 if native_bf16 else 8)
    assert ("regulator_cost_cpu_bf16: skipped (this CPU has no native bf16" in steps) != native_bf16
    with tarfile.open(tmp_path / "out" / "gpu_check.tar") as tar:
        names = set(tar.getnames())
        read = lambda name: json.load(tar.extractfile(f"./{name}"))  # noqa: E731
        assert {"./env.txt", "./cuda_tests.log", "./regulator_cost_cpu_none.json",
                "./retrieval_exact_cpu/results.json", "./overhead_cpu.json", "./omniglot_cpu/results.json",
                "./digits_cpu/results.json"} <= names
        assert not any("checkpoints" in n for n in names), "checkpoints are not packed"
        if native_bf16:
            cost = read("regulator_cost_cpu_bf16.json")
            assert {"coop", "vpt", "unigram"} <= set(cost) and cost["machine"]["autocast"] == "bf16"
            assert all(cost[k]["plain_s"] > 0 and cost[k]["ratio"] > 0 for k in ("coop", "vpt", "unigram"))
        else:
            assert "./regulator_cost_cpu_bf16.skipped" in names and "./regulator_cost_cpu_bf16.json" not in names
        cost = read("regulator_cost_cpu_none.json")
        assert {"coop", "vpt", "unigram"} <= set(cost) and cost["machine"]["autocast"] == "fp32"
        assert all(cost[k]["plain_s"] > 0 and cost[k]["ratio"] > 0 for k in ("coop", "vpt", "unigram"))
        sliced, per_sample = read("overhead_cpu.json"), read("overhead_cpu_per_sample.json")
        assert sliced["materialize_mb"] == 1024 and per_sample["materialize_mb"] == 0
        assert sliced["runner_s_per_epoch"] > 0 and per_sample["runner_s_per_epoch"] > 0
        rows = read("retrieval_exact_cpu/results.json")["rows"]
        assert [(r["size"], r["backend"], r["recall_at_10"]) for r in rows] == [(2000, "exact", 1.0)]
        omniglot = read("omniglot_cpu/results.json")
        assert {r["strategy"] for r in omniglot["runs"]} == {"prototype", "fscl", "raml"}
        assert all(len(r["table"]["sessions"]) == 3 for r in omniglot["runs"])  # base + 2 sessions (QUICK)
        auto = read("omniglot_cpu_autocast/results.json")
        assert set(auto["environment"]["autocast_probe_s"]) == {"fp32", "bf16"}
        assert auto["config"]["train"]["autocast"] in (None, "bf16"), "the probe's choice, not 'auto'"
        assert len(read("digits_cpu/results.json")["runs"]) >= 7
