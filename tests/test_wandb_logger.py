"""Tests of avalanche_fscl.benchmarks.wandb_logger (offline W&B runs only; no network).

Offline runs are written under ``tmp_path`` and read back from their ``run-<id>.wandb``
file with :func:`read_offline_run` (a small LevelDB-log + protobuf reader: wandb 0.31 has
no Python reader any more).
"""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_fscl.benchmarks.wandb_logger import (
    MODES,
    WandbRunLogger,
    iter_offline_records,
    read_offline_run,
)
from avalanche_fscl.plugins.fscil_metrics import FSCILMetric, FSCILSessionRow, FSCILTable
from avalanche_fscl.streams.data import TensorImageDataset
from avalanche_fscl.streams.fscil import fscil_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    # conftest sets WANDB_MODE=disabled; the explicit mode="offline" of these loggers
    # takes precedence over it (wandb.init(mode=...) wins over the environment).


def _offline_runs(root: Path, run_id: str) -> list[Path]:
    return sorted((root / "wandb").glob(f"offline-run-*-{run_id}*"))


def _rows_by_session(history: list[dict]) -> dict[int, dict]:
    """Merge the history rows that carry a ``session`` value, per session."""
    out: dict[int, dict] = {}
    for row in history:
        if "session" in row:
            out.setdefault(int(row["session"]), {}).update(row)
    return out


def _table() -> FSCILTable:
    rows = [
        FSCILSessionRow(0, 0.75, 0.75, float("nan"), float("nan"), 8),
        FSCILSessionRow(1, 0.5, 0.6, 0.25, 2 * 0.6 * 0.25 / 0.85, 12),
    ]
    return FSCILTable(rows, [[0.75, float("nan")], [0.6, 0.25]], [0, 1])


# ------------------------------------------------------------------------------ basics
@pytest.mark.parametrize("mode", ["disabled", "ONLINE", "", "dryrun"])
def test_bad_mode_raises(mode):
    with pytest.raises(ValueError, match=r"mode.*'off', 'offline', 'online'"):
        WandbRunLogger(mode=mode)
    assert MODES == ("off", "offline", "online")


class _WandbStub(types.ModuleType):
    """Stands in for ``wandb``: records every (non-dunder) attribute read."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.touched: list[str] = []

    def __getattr__(self, name: str):
        if not name.startswith("__"):
            self.touched.append(name)
        raise AttributeError(name)


def _use_off_logger(root: Path) -> WandbRunLogger:
    png = root / "plot.png"
    png.write_bytes(b"not really a png")
    lg = WandbRunLogger(mode="off", dir=root / "runs", config={"a": 1}, run_id="off001")
    assert lg.start() is None and lg.run is None and not lg.enabled
    lg.log_single_metric("FSCIL/session_acc", 0.5, 0)
    lg.log_single_metric("FSCIL/session_acc", torch.tensor(0.25), 1)
    lg.log_single_metric("FSCIL/table", _table(), 1)
    lg.log_metrics([])
    lg.after_eval(None, [])
    lg.log_results_table(["a"], [[1]])
    lg.log_image("plot", png)
    lg.log_summary({"AA": 0.5})
    lg.log_config({"b": 2})
    lg.flush()
    lg.finish()
    lg.close()
    assert lg.state_dict()["mode"] == "off" and lg.state_dict()["run_id"] == "off001"
    assert lg.latest_table is None and lg.sync_file is None and lg.run_dir is None
    assert lg.wait_for_sync_file(0.1) is False  # no run file when off
    return lg


def test_off_mode_never_touches_wandb_in_process(tmp_path, monkeypatch):
    # Every wandb access of the logger goes through a lazy `import wandb` inside a method;
    # with a stub in sys.modules any use (attribute read, `from wandb import ...`,
    # `import wandb.sub`) shows up or fails.
    stub = _WandbStub()
    monkeypatch.setitem(sys.modules, "wandb", stub)
    _use_off_logger(tmp_path)
    assert stub.touched == []
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


@pytest.mark.slow  # a fresh interpreter imports avalanche again (~15 s on a busy 2-CPU box)
def test_off_mode_never_imports_wandb_subprocess(tmp_path):
    # Avalanche itself imports wandb (avalanche/evaluation/metrics/confusion_matrix.py:
    # `import wandb` at module level), so "wandb" is in sys.modules as soon as any avalanche
    # module is imported. To check that an "off" logger never uses wandb, a fresh process
    # puts a recording stub in place of wandb before anything is imported: the real wandb
    # package must never load and nobody may read an attribute of the stub.
    script = textwrap.dedent(
        f"""
        import sys, types
        touched = []
        class Stub(types.ModuleType):
            def __getattr__(self, name):
                if not name.startswith("__"):
                    touched.append(name)
                raise AttributeError(name)
        sys.modules["wandb"] = Stub("wandb")

        import avalanche.training
        from avalanche_fscl.benchmarks.wandb_logger import WandbRunLogger
        from avalanche_fscl.plugins.fscil_metrics import FSCILTable

        png = {str(tmp_path / "plot.png")!r}
        open(png, "wb").write(b"not really a png")
        lg = WandbRunLogger(mode="off", dir={str(tmp_path / "runs")!r}, config={{"a": 1}})
        assert lg.start() is None and lg.run is None and not lg.enabled
        lg.log_single_metric("FSCIL/session_acc", 0.5, 0)
        lg.log_single_metric("FSCIL/session_acc", 0.25, 1)
        lg.log_single_metric("FSCIL/table", FSCILTable(), 1)
        lg.log_metrics([])
        lg.after_eval(None, [])
        lg.log_results_table(["a"], [[1]])
        lg.log_image("plot", png)
        lg.log_summary({{"AA": 0.5}})
        lg.log_config({{"b": 2}})
        lg.flush(); lg.finish(); lg.close()
        assert lg.state_dict()["mode"] == "off"
        assert not touched, touched
        real = [m for m in sys.modules if m.startswith("wandb.")]
        assert not real, real
        assert type(sys.modules["wandb"]) is Stub
        print("OK")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("OK")
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "wandb").exists()


def test_generated_run_ids_are_unique():
    ids = {WandbRunLogger(mode="off").run_id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 16 and i.isalnum() for i in ids)
    assert WandbRunLogger(mode="off", run_id="abc").run_id == "abc"


# ------------------------------------------------------------------- offline round trip
def test_offline_run_is_written_and_read_back(tmp_path):
    png = tmp_path / "plot.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0.75, 0.5])
    fig.savefig(png)
    plt.close(fig)

    config = {"lr": 0.1, "seed": 3, "strategy": "naive"}
    lg = WandbRunLogger(
        mode="offline",
        project="proj",
        group="suite",
        name="cifar/naive/seed3",
        config=config,
        dir=tmp_path / "runs",
        tags=("fscil", "test"),
        run_id="rt0001",
    )
    assert lg.run is None  # lazy: nothing before the first value
    assert not (tmp_path / "runs").exists()

    # session 0: metrics arrive one by one, with junk that must be skipped
    lg.log_single_metric("FSCIL/session_acc", 0.75, 0)
    lg.log_single_metric("FSCIL/base_acc", torch.tensor(0.75), 0)  # 0-d tensor
    lg.log_single_metric("FSCIL/novel_acc", float("nan"), 0)  # NaN: skipped
    lg.log_single_metric("FSCIL/vector", torch.ones(3), 0)  # >1 element: skipped
    lg.log_single_metric("FSCIL/name", "text", 0)  # unsupported type: skipped
    assert lg.run is not None  # started by the first value
    # session 1 (flushes session 0), then the table and a dict-valued metric
    lg.log_single_metric("FSCIL/session_acc", 0.5, 1)
    lg.log_single_metric("FSCIL/hm", 0.352941, 1)
    lg.log_single_metric("FSCIL/table", _table(), 1)
    lg.log_metrics([])  # BaseLogger API still works
    lg.log_image("session_plot", png, session=1)
    lg.after_eval(None, [])  # Avalanche callback: flush session 1
    lg.log_results_table(["session", "acc", "novel"], [[0, 0.75, float("nan")], [1, 0.5, torch.tensor(0.25)]])
    lg.log_image("final_plot", png)
    lg.log_summary({"AA": 0.625, "PD": torch.tensor(0.25), "bad": float("nan"), "note": "ok"})
    lg.log_config({"extra": 7})
    with pytest.raises(FileNotFoundError):
        lg.log_image("missing", tmp_path / "nope.png")

    # a live logger pickles (Avalanche checkpoints pickle the strategy) without its run
    copy = pickle.loads(pickle.dumps(lg))
    assert copy.run is None and copy.resume and copy.run_id == "rt0001"

    state = lg.state_dict()
    lg.finish()
    lg.finish()  # idempotent
    lg.close()
    assert lg.finished and lg.run is None
    assert lg.wait_for_sync_file(1.0)  # finish() already waited for the exit record
    with pytest.warns(RuntimeWarning, match="after finish"):
        lg.log_summary({"late": 1.0})
    lg.log_single_metric("FSCIL/session_acc", 0.1, 2)  # ignored (after finish)

    assert state["run_id"] == "rt0001" and state["project"] == "proj"
    assert state["group"] == "suite" and state["name"] == "cifar/naive/seed3"
    assert state["entity"] is None and state["tags"] == ["fscil", "test"]
    assert json.loads(json.dumps(state)) == state  # JSON-able

    # --- files
    runs = _offline_runs(tmp_path / "runs", "rt0001")
    assert len(runs) == 1 and runs[0].name.startswith("offline-run-")
    wandb_file = runs[0] / "run-rt0001.wandb"
    assert wandb_file.is_file()
    assert lg.sync_file == wandb_file and lg.run_dir == runs[0]
    assert any((runs[0] / "files" / "media").rglob("*.png"))  # the image was copied

    # --- decoded records
    kinds = [r.WhichOneof("record_type") for r in iter_offline_records(wandb_file)]
    assert kinds[0] == "header" and "run" in kinds and "history" in kinds and kinds[-1] == "exit"
    d = read_offline_run(runs[0])
    assert d["run_id"] == "rt0001" and d["project"] == "proj"
    assert d["group"] == "suite" and d["name"] == "cifar/naive/seed3"
    assert d["tags"] == ["fscil", "test"]
    for k, v in config.items():
        assert d["config"][k] == v
    assert d["config"]["extra"] == 7
    assert "session" in d["metrics"] and "*" in d["metrics"]

    by_s = _rows_by_session(d["history"])
    assert set(by_s) == {0, 1}
    assert by_s[0]["FSCIL/session_acc"] == pytest.approx(0.75)
    assert by_s[0]["FSCIL/base_acc"] == pytest.approx(0.75)
    assert by_s[1]["FSCIL/session_acc"] == pytest.approx(0.5)
    assert by_s[1]["FSCIL/hm"] == pytest.approx(0.352941)
    assert by_s[1]["session_plot"]["_type"] == "image-file"
    # metrics of one session land in ONE row, never with wandb's step=
    rows0 = [r for r in d["history"] if r.get("session") == 0]
    assert len(rows0) == 1
    assert {"FSCIL/session_acc", "FSCIL/base_acc"} <= set(rows0[0])
    all_keys = set().union(*d["history"])
    assert not {"FSCIL/novel_acc", "FSCIL/vector", "FSCIL/name"} & all_keys
    assert all(
        not (isinstance(v, float) and math.isnan(v)) for row in d["history"] for v in row.values()
    )
    # tables and the un-sessioned image
    tables = {k: row[k] for row in d["history"] for k in row if isinstance(row[k], dict)}
    assert tables["results_table"]["_type"] == "table-file"
    table_json = runs[0] / "files" / tables["results_table"]["path"]

    def _no_nan(token):
        raise AssertionError(f"non-strict JSON constant {token} in {table_json}")

    content = json.loads(table_json.read_text(), parse_constant=_no_nan)
    assert content["columns"] == ["session", "acc", "novel"]
    assert content["data"] == [[0, 0.75, None], [1, 0.5, 0.25]]
    assert tables["FSCIL/table"]["_type"] == "table-file"  # latest FSCILTable, at finish
    assert tables["FSCIL/table"]["ncols"] == 6 and tables["FSCIL/table"]["nrows"] == 2
    assert tables["final_plot"]["_type"] == "image-file"
    # summary
    assert d["summary"]["AA"] == pytest.approx(0.625)
    assert d["summary"]["PD"] == pytest.approx(0.25)
    assert d["summary"]["note"] == "ok"
    assert "bad" not in d["summary"] and "late" not in d["summary"]
    assert d["summary"]["FSCIL/session_acc"] == pytest.approx(0.5)  # last value

    # --- resume: a second logger reopens the same run id (offline: a new folder)
    lg2 = WandbRunLogger.from_state_dict(state, dir=tmp_path / "runs")
    assert lg2.resume and lg2.run_id == "rt0001"
    lg2.log_single_metric("FSCIL/session_acc", 0.4, 2)
    lg2.log_summary({"AA": 0.55})
    lg2.finish()
    runs = _offline_runs(tmp_path / "runs", "rt0001")
    assert len(runs) == 2
    d2 = read_offline_run(lg2.run_dir)
    assert lg2.run_dir != lg.run_dir
    assert d2["run_id"] == "rt0001" and d2["name"] == "cifar/naive/seed3"
    assert _rows_by_session(d2["history"])[2]["FSCIL/session_acc"] == pytest.approx(0.4)
    assert d2["summary"]["AA"] == pytest.approx(0.55)

    # the plain constructor form resumes too
    with WandbRunLogger(mode="offline", dir=tmp_path / "runs", run_id="rt0001", resume=True) as lg3:
        lg3.start()
    assert lg3.finished
    assert len(_offline_runs(tmp_path / "runs", "rt0001")) == 3


def test_metric_prefixes_and_online_kill_switch(tmp_path, monkeypatch):
    # mode="online" stays local when the environment says WANDB_MODE=offline
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = WandbRunLogger(
        mode="online", dir=tmp_path, run_id="pf0001", metric_prefixes=("FSCIL/",)
    )
    lg.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.9, 40)
    lg.log_single_metric("FSCIL/session_acc", 0.8, 0)
    lg.finish()
    runs = _offline_runs(tmp_path, "pf0001")
    assert len(runs) == 1
    d = read_offline_run(runs[0])
    keys = set().union(*d["history"])
    assert "FSCIL/session_acc" in keys
    assert not any(k.startswith("Top1_Acc") for k in keys)

    # ... and writes nothing at all under WANDB_MODE=disabled (the conftest default)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    lg = WandbRunLogger(mode="online", dir=tmp_path / "disabled", run_id="pf0002")
    lg.log_single_metric("FSCIL/session_acc", 0.8, 0)
    lg.log_summary({"AA": 0.8})
    lg.finish()
    assert lg.sync_file is None
    assert not list((tmp_path / "disabled").rglob("*.wandb"))


# ----------------------------------------------------------------- inside Avalanche
class _Tiny(nn.Module):
    def __init__(self, n_classes: int = 6):
        super().__init__()
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_as_avalanche_logger_in_evaluation_plugin(tmp_path):
    g = torch.Generator().manual_seed(0)
    n_classes = 6

    def data(per_class: int) -> TensorImageDataset:
        ys = [c for c in range(n_classes) for _ in range(per_class)]
        x = torch.randn(len(ys), 1, 2, 2, generator=g) + torch.tensor(ys).view(-1, 1, 1, 1)
        return TensorImageDataset(x, ys)

    scenario = fscil_benchmark(data(4), data(3), base_classes=4, ways=2, shots=2, seed=0)
    metric = FSCILMetric()
    logger = WandbRunLogger(
        mode="offline", group="unit", name="tiny/naive/seed0", dir=tmp_path,
        config={"seed": 0}, run_id="av0001",
    )
    model = _Tiny(n_classes)
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=8,
        train_epochs=1,
        eval_mb_size=8,
        device="cpu",
        evaluator=EvaluationPlugin(metric, accuracy_metrics(stream=True), loggers=[logger]),
    )
    for s in range(2):
        strategy.train(scenario.train_stream[s])
        strategy.eval(scenario.test_stream[: s + 1])
    table = metric.table()
    logger.log_summary({"AA": table.aa, "PD": table.pd})
    logger.finish()

    runs = _offline_runs(tmp_path, "av0001")
    assert len(runs) == 1 and (runs[0] / "run-av0001.wandb").is_file()
    d = read_offline_run(runs[0])
    assert d["group"] == "unit" and d["config"]["seed"] == 0
    keys = set().union(*d["history"])
    assert "FSCIL/session_acc" in keys
    # FSCIL rows: one per session, keyed by the session index
    fscil_rows = [r for r in d["history"] if "FSCIL/session_acc" in r]
    assert [r["session"] for r in fscil_rows] == [0, 1]
    for row, expected in zip(fscil_rows, table.sessions):
        assert row["FSCIL/session_acc"] == pytest.approx(expected.acc)
        assert row["FSCIL/base_acc"] == pytest.approx(expected.base)
        assert "FSCIL/AA" in row and "FSCIL/acc_exp/Exp000" in row
    assert "FSCIL/hm" in fscil_rows[1] and "FSCIL/novel_acc" not in fscil_rows[0]
    fscil_table = next(r["FSCIL/table"] for r in d["history"] if "FSCIL/table" in r)
    assert fscil_table["_type"] == "table-file" and fscil_table["nrows"] == 2
    assert d["summary"]["AA"] == pytest.approx(table.aa)
    assert d["summary"]["PD"] == pytest.approx(table.pd)


def test_log_session_writes_one_row_per_session_and_skips_nan(tmp_path):
    logger = WandbRunLogger(mode="offline", project="p", name="n", dir=tmp_path)
    logger.log_session(0, {"FSCIL/session_acc": 0.9, "FSCIL/novel_acc": float("nan")})
    logger.log_session(1, {"FSCIL/session_acc": torch.tensor(0.7), "columns/x": 0.25})
    logger.finish()
    d = read_offline_run(_offline_runs(tmp_path, logger.run_id)[0])
    rows = [r for r in d["history"] if "FSCIL/session_acc" in r]
    assert [(r["session"], r["FSCIL/session_acc"]) for r in rows] == [(0, 0.9), (1, pytest.approx(0.7))]
    assert "FSCIL/novel_acc" not in rows[0] and rows[1]["columns/x"] == 0.25


def test_set_aside_moves_only_that_runs_folders(tmp_path):
    from avalanche_fscl.benchmarks.wandb_logger import set_aside_offline_runs

    wandb = tmp_path / "wandb"
    for name in ["offline-run-20260101_000000-aaaa", "offline-run-20260102_000000-aaaa", "offline-run-20260101_000000-bbbb"]:
        (wandb / name).mkdir(parents=True)
        (wandb / name / f"run-{name[-4:]}.wandb").write_bytes(b":W&B")
    moved = set_aside_offline_runs(wandb, "aaaa", tmp_path / "aside")
    assert [p.name for p in moved] == ["offline-run-20260101_000000-aaaa", "offline-run-20260102_000000-aaaa"]
    assert [p.name for p in wandb.iterdir()] == ["offline-run-20260101_000000-bbbb"]
    assert sorted(p.name for p in (tmp_path / "aside").rglob("*.wandb.killed")) == ["run-aaaa.wandb.killed"] * 2
    assert set_aside_offline_runs(wandb, "cccc", tmp_path / "aside") == []
