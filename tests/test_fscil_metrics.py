"""Tests of avalanche_fscl.plugins.fscil_metrics with a model whose predictions are known.

Each test sample carries its predicted class id in ``x[:, 0]``; the model returns the
one-hot logit of that id, so we choose exactly which samples are right.

Synthetic benchmark: 4 base classes (0..3) + 2 sessions of 2-way (4,5 then 6,7).
Test samples (class: n samples, n correct):
    class 0: 4, 4   class 1: 2, 1   class 2: 3, 0   class 3: 1, 1     (exp 0: 10, 6)
    class 4: 2, 2   class 5: 5, 1                                     (exp 1:  7, 3)
    class 6: 3, 2   class 7: 1, 0                                     (exp 2:  4, 2)
Per-class accuracies: 1, 1/2, 0, 1 | 1, 1/5 | 2/3, 0.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from torch import nn

from avalanche_fscl.plugins.fscil_metrics import FSCILMetric, FSCILTable, fscil_metrics
from avalanche_fscl.streams.data import TensorImageDataset
from avalanche_fscl.streams.fscil import fscil_benchmark

pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified:UserWarning")

N_CLASSES = 8
# (class, n test samples, n correct); wrong samples predict `WRONG[class]`.
TEST_SPEC = [(0, 4, 4), (1, 2, 1), (2, 3, 0), (3, 1, 1), (4, 2, 2), (5, 5, 1), (6, 3, 2), (7, 1, 0)]
WRONG = {0: 1, 1: 5, 2: 3, 3: 0, 4: 5, 5: 4, 6: 7, 7: 6}

# ---- hand-computed expectations ---------------------------------------------------------
BASE = (1 + 1 / 2 + 0 + 1) / 4  # 0.625, the same in every session (the model is fixed)
ACC0 = 6 / 10  # exp 0 only
ACC1 = (6 + 3) / (10 + 7)  # 9/17
ACC2 = (6 + 3 + 2) / (10 + 7 + 4)  # 11/21
NOVEL1 = (1 + 1 / 5) / 2  # 0.6
NOVEL2 = (1 + 1 / 5 + 2 / 3 + 0) / 4  # 0.4667
HM1 = 2 * BASE * NOVEL1 / (BASE + NOVEL1)
HM2 = 2 * BASE * NOVEL2 / (BASE + NOVEL2)
EXP_ACC = [6 / 10, 3 / 7, 2 / 4]
AA = [ACC0, (ACC0 + ACC1) / 2, (ACC0 + ACC1 + ACC2) / 3]
PD = [0.0, ACC0 - ACC1, ACC0 - ACC2]


class EncodedPredictor(nn.Module):
    """Logits = one-hot of ``x[:, 0]`` (the predicted class id); a dummy weight for SGD."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pred = x.flatten(1)[:, 0].long()
        return nn.functional.one_hot(pred, N_CLASSES).float() + 0 * self.w


def _test_set() -> TensorImageDataset:
    xs, ys = [], []
    for c, n, k in TEST_SPEC:
        for i in range(n):
            xs.append(c if i < k else WRONG[c])
            ys.append(c)
    return TensorImageDataset(torch.tensor(xs, dtype=torch.float32).view(-1, 1, 1, 1), ys)


def _train_set() -> TensorImageDataset:
    ys = [c for c in range(N_CLASSES) for _ in range(2)]
    return TensorImageDataset(torch.tensor(ys, dtype=torch.float32).view(-1, 1, 1, 1), ys)


@pytest.fixture(scope="module")
def scenario():
    return fscil_benchmark(_train_set(), _test_set(), base_classes=4, ways=2, shots=1, seed=0)


def _strategy(metrics, loggers=(), device="cpu", **kw):
    model = EncodedPredictor()
    evaluator = EvaluationPlugin(*metrics, loggers=list(loggers))
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        train_mb_size=4,
        eval_mb_size=3,  # batches straddle classes and experiences
        device=device,
        evaluator=evaluator,
        **kw,
    )


def _run(scenario, metric, strategy=None, sessions=3):
    strategy = strategy or _strategy([metric])
    results = []
    for s in range(sessions):
        strategy.train(scenario.train_stream[s])
        results.append(strategy.eval(scenario.test_stream[: s + 1]))
    return strategy, results


def _assert_matrix(matrix, expected):
    assert len(matrix) == len(expected)
    for row, exp_row in zip(matrix, expected):
        assert len(row) == len(exp_row)
        for v, e in zip(row, exp_row):
            assert (math.isnan(v) and math.isnan(e)) or v == pytest.approx(e)


NAN = float("nan")
FULL_MATRIX = [
    [EXP_ACC[0], NAN, NAN],
    [EXP_ACC[0], EXP_ACC[1], NAN],
    [EXP_ACC[0], EXP_ACC[1], EXP_ACC[2]],
]


def test_benchmark_layout(scenario):
    assert scenario.session_classes == [[0, 1, 2, 3], [4, 5], [6, 7]]
    assert [len(e.dataset) for e in scenario.test_stream] == [10, 7, 4]


def test_values_per_session(scenario):
    m = FSCILMetric()
    _, res = _run(scenario, m)
    acc = [ACC0, ACC1, ACC2]
    for s in range(3):
        r = res[s]
        assert r["FSCIL/session_acc"] == pytest.approx(acc[s])
        assert r["FSCIL/base_acc"] == pytest.approx(BASE)
        assert r["FSCIL/AA"] == pytest.approx(AA[s])
        assert r["FSCIL/PD"] == pytest.approx(PD[s])
        for j in range(s + 1):
            assert r[f"FSCIL/acc_exp/Exp{j:03d}"] == pytest.approx(EXP_ACC[j])
        table = r["FSCIL/table"]
        assert isinstance(table, FSCILTable) and len(table.sessions) == s + 1
    # session 0: no novel classes, no HM
    assert "FSCIL/novel_acc" not in res[0] and "FSCIL/hm" not in res[0]
    assert "FSCIL/acc_exp/Exp001" not in res[0]
    assert res[1]["FSCIL/novel_acc"] == pytest.approx(NOVEL1)
    assert res[1]["FSCIL/hm"] == pytest.approx(HM1)
    assert res[2]["FSCIL/novel_acc"] == pytest.approx(NOVEL2)
    assert res[2]["FSCIL/hm"] == pytest.approx(HM2)

    t = m.table()
    assert [r.session for r in t.sessions] == [0, 1, 2]
    assert [r.acc for r in t.sessions] == pytest.approx([ACC0, ACC1, ACC2])
    assert [r.base for r in t.sessions] == pytest.approx([BASE] * 3)
    assert math.isnan(t.sessions[0].novel) and math.isnan(t.sessions[0].hm)
    assert [r.novel for r in t.sessions[1:]] == pytest.approx([NOVEL1, NOVEL2])
    assert [r.hm for r in t.sessions[1:]] == pytest.approx([HM1, HM2])
    assert [r.n_samples for r in t.sessions] == [10, 17, 21]
    assert t.aa == pytest.approx(AA[2]) and t.pd == pytest.approx(PD[2])
    assert t.base_classes == [0, 1, 2, 3]
    _assert_matrix(t.matrix, FULL_MATRIX)
    assert m.result().to_dict() == t.to_dict()


def test_session_acc_matches_avalanche_stream_accuracy(scenario):
    m = FSCILMetric()
    strategy = _strategy([m, accuracy_metrics(stream=True)])
    _, res = _run(scenario, m, strategy)
    for r in res:
        (name,) = [k for k in r if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
        assert r["FSCIL/session_acc"] == pytest.approx(r[name])


def test_all_metric_values_keyed_by_session(scenario):
    strategy = _strategy(fscil_metrics())
    _run(scenario, None, strategy)
    allm = strategy.evaluator.get_all_metrics()
    xs, vals = allm["FSCIL/session_acc"]
    assert xs == [0, 1, 2] and vals == pytest.approx([ACC0, ACC1, ACC2])
    assert allm["FSCIL/hm"][0] == [1, 2]
    assert allm["FSCIL/acc_exp/Exp002"][0] == [2]


def test_no_training_emits_nothing(scenario):
    m = FSCILMetric()
    strategy = _strategy([m])
    res = strategy.eval(scenario.test_stream[:1])
    assert not any(k.startswith("FSCIL/") for k in res)
    assert m.table().sessions == [] and m.table().matrix == []
    assert math.isnan(m.table().aa)


def test_future_experiences_are_ignored(scenario):
    m = FSCILMetric()
    strategy = _strategy([m])
    strategy.train(scenario.train_stream[0])
    res = strategy.eval(scenario.test_stream)  # exps 1, 2 are future classes
    assert res["FSCIL/session_acc"] == pytest.approx(ACC0)
    assert res["FSCIL/base_acc"] == pytest.approx(BASE)
    assert "FSCIL/novel_acc" not in res and "FSCIL/acc_exp/Exp001" not in res
    _assert_matrix(m.table().matrix, [[EXP_ACC[0]]])
    assert m.table().sessions[0].n_samples == 10
    # only future experiences: nothing emitted, table unchanged
    strategy.eval(scenario.test_stream[1:])
    assert strategy.evaluator.get_all_metrics()["FSCIL/session_acc"][0] == [0]
    assert len(m.table().sessions) == 1 and m.table().sessions[0].acc == pytest.approx(ACC0)


class AlwaysSeven(nn.Module):
    """Predicts class 7 for every sample: every test sample of classes 0..6 is wrong."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((x.shape[0],), 7), N_CLASSES).float() + 0 * self.w


def test_partial_reevaluation_changes_neither_row_nor_aa_nor_pd(scenario):
    m = FSCILMetric()
    _run(scenario, m, sessions=2)
    strategy = _strategy([m])
    strategy.model = AlwaysSeven()  # a changed model, evaluated on exp 1 alone
    strategy.clock.train_exp_counter = 2
    res = strategy.eval(scenario.test_stream[1:2])
    assert res["FSCIL/acc_exp/Exp001"] == 0.0
    assert "FSCIL/session_acc" not in res and "FSCIL/AA" not in res and "FSCIL/PD" not in res
    t = m.table()
    assert [r.acc for r in t.sessions] == pytest.approx([ACC0, ACC1])
    assert all(r.complete for r in t.sessions)
    assert t.aa == pytest.approx(AA[1]) and t.pd == pytest.approx(PD[1])
    _assert_matrix(t.matrix, [[EXP_ACC[0], NAN], [EXP_ACC[0], 0.0]])  # the cell it covered


def test_partial_evaluations_add_up_to_a_complete_row(scenario):
    m = FSCILMetric()
    strategy = _strategy([m])
    strategy.train(scenario.train_stream[0])
    strategy.eval(scenario.test_stream[:1])
    strategy.train(scenario.train_stream[1])
    res = strategy.eval(scenario.test_stream[0:1])  # session 1, base classes only: partial
    assert res["FSCIL/session_acc"] == pytest.approx(ACC0)  # the row's only evaluation so far
    t = m.table()
    assert not t.sessions[1].complete and t.sessions[0].complete
    assert t.aa == pytest.approx(ACC0) and t.pd == pytest.approx(0.0)  # complete rows only
    strategy.eval(scenario.test_stream[1:2])  # the rest of session 1
    t = m.table()
    assert t.sessions[1].complete and t.sessions[1].acc == pytest.approx(ACC1)
    assert t.sessions[1].novel == pytest.approx(NOVEL1) and t.sessions[1].base == pytest.approx(BASE)
    assert t.aa == pytest.approx(AA[1]) and t.pd == pytest.approx(PD[1])


def test_complete_reevaluation_replaces_row_and_remembers_base(scenario):
    m = FSCILMetric()
    _run(scenario, m, sessions=2)
    strategy = _strategy([m])
    strategy.model = AlwaysSeven()
    strategy.clock.train_exp_counter = 2  # session 1 again, on every experience seen
    res = strategy.eval(scenario.test_stream[:2])
    assert res["FSCIL/session_acc"] == 0.0 and res["FSCIL/base_acc"] == 0.0
    t = m.table()
    assert t.sessions[1].acc == 0.0 and t.base_classes == [0, 1, 2, 3]
    assert res["FSCIL/PD"] == pytest.approx(ACC0) and t.pd == pytest.approx(ACC0)
    assert t.aa == pytest.approx(ACC0 / 2)
    d = FSCILTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert [r.complete for r in d.sessions] == [True, True] and d.pd == pytest.approx(ACC0)


def test_base_classes_override(scenario):
    m = fscil_metrics(base_classes=[0, 1])[0]
    assert isinstance(m, FSCILMetric)
    _, res = _run(scenario, m, sessions=2)
    base = (1 + 1 / 2) / 2  # classes 0, 1
    novel0 = (0 + 1) / 2  # classes 2, 3
    novel1 = (0 + 1 + 1 + 1 / 5) / 4  # classes 2, 3, 4, 5
    assert res[0]["FSCIL/base_acc"] == pytest.approx(base)
    assert res[0]["FSCIL/novel_acc"] == pytest.approx(novel0)
    assert "FSCIL/hm" not in res[0]  # HM only from session 1
    assert res[1]["FSCIL/novel_acc"] == pytest.approx(novel1)
    assert res[1]["FSCIL/hm"] == pytest.approx(2 * base * novel1 / (base + novel1))
    assert res[1]["FSCIL/session_acc"] == pytest.approx(ACC1)  # unaffected
    assert m.table().base_classes == [0, 1]


def test_hm_zero_when_both_zero():
    from avalanche_fscl.plugins.fscil_metrics import _SessionRecord

    rec = _SessionRecord(1, {0: (0, 3), 1: (0, 2)}, {0: (0, 3), 1: (0, 2)}, [0])
    row = rec.row()
    assert row.acc == 0.0 and row.base == 0.0 and row.novel == 0.0 and row.hm == 0.0


def test_to_markdown_and_dict(scenario):
    m = FSCILMetric()
    _run(scenario, m)
    t = m.table()
    md = t.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| Metric (%) | S0 | S1 | S2 | AA | PD |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|"
    # 100*6/10, 100*9/17, 100*11/21, AA = 100*(0.6+9/17+11/21)/3, PD = 100*(0.6-11/21)
    assert lines[2] == "| Acc | 60.00 | 52.94 | 52.38 | 55.11 | 7.62 |"
    assert lines[3] == "| Base | 62.50 | 62.50 | 62.50 |  |  |"
    assert lines[4].startswith("| Novel | - | 60.00 | 46.67 |")
    assert lines[5].startswith("| HM | - | 61.22 | ")  # 100*0.75/1.225
    full = t.to_markdown(include_matrix=True)
    assert "| After session | Exp 0 | Exp 1 | Exp 2 |" in full
    assert "| S1 | 60.00 | 42.86 | - |" in full
    s = str(t)
    assert s.startswith("FSCILTable(3 sessions") and "\n" not in s and len(s) < 120

    d = t.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON
    assert d["sessions"][0]["novel"] is None and d["matrix"][0][1] is None
    assert d["aa"] == pytest.approx(AA[2]) and d["pd"] == pytest.approx(PD[2])
    back = FSCILTable.from_dict(json.loads(text))
    assert back.to_dict() == d


def test_state_dict_round_trip(scenario):
    m = FSCILMetric()
    _run(scenario, m, sessions=2)
    state = json.loads(json.dumps(m.state_dict(), allow_nan=False))
    m2 = FSCILMetric()
    m2.load_state_dict(state)
    assert m2.table().to_dict() == m.table().to_dict()
    # resumed run: continue with session 2 and get the same table as an uninterrupted run
    strategy = _strategy([m2])
    strategy.clock.train_exp_counter = 2
    strategy.train(scenario.train_stream[2])
    strategy.eval(scenario.test_stream[:3])
    ref = FSCILMetric()
    _run(scenario, ref)
    assert m2.table().to_dict() == ref.table().to_dict()
    assert m2.table().aa == pytest.approx(AA[2])
    m2.reset()
    assert m2.table().sessions == []


def test_periodic_eval_uses_the_session_being_trained(scenario):
    m = FSCILMetric()
    m_test_only = FSCILMetric(stream_name="test")
    strategy = _strategy([m, m_test_only], eval_every=0)  # eval at the end of each train()
    for s in range(3):
        strategy.train(scenario.train_stream[s], eval_streams=[scenario.test_stream[: s + 1]])
    t = m.table()
    assert [r.acc for r in t.sessions] == pytest.approx([ACC0, ACC1, ACC2])
    _assert_matrix(t.matrix, FULL_MATRIX)
    assert m_test_only.table().to_dict() == t.to_dict()


def test_stream_name_filter_ignores_train_stream_eval(scenario):
    m_any, m_test = FSCILMetric(), FSCILMetric(stream_name="test")
    strategy = _strategy([m_any, m_test])
    strategy.train(scenario.train_stream[0])
    strategy.eval(scenario.train_stream[:1])  # train-set accuracy: 8/8 correct
    assert m_any.table().sessions[0].acc == pytest.approx(1.0)
    assert m_test.table().sessions == []
    strategy.eval(scenario.test_stream[:1])
    assert m_test.table().sessions[0].acc == pytest.approx(ACC0)


def test_text_and_interactive_loggers(scenario, capsys):
    buf = io.StringIO()
    m = FSCILMetric()
    strategy = _strategy([m], loggers=[TextLogger(buf), InteractiveLogger()])
    _run(scenario, m, strategy, sessions=2)
    text = buf.getvalue()
    for name in ["FSCIL/session_acc", "FSCIL/base_acc", "FSCIL/novel_acc", "FSCIL/hm",
                 "FSCIL/AA", "FSCIL/PD", "FSCIL/acc_exp/Exp001", "FSCIL/table"]:
        assert name in text
    assert "FSCIL/session_acc = 0.6000" in text
    assert "FSCIL/table = FSCILTable(2 sessions" in text
    out = capsys.readouterr().out
    assert "FSCIL/session_acc = 0.5294" in out and "FSCIL/table = FSCILTable(" in out


@pytest.mark.cuda
def test_cuda(scenario):
    m = FSCILMetric()
    strategy = _strategy([m], device="cuda")
    _, res = _run(scenario, m, strategy)
    assert res[2]["FSCIL/session_acc"] == pytest.approx(ACC2)
    assert res[2]["FSCIL/hm"] == pytest.approx(HM2)
    _assert_matrix(m.table().matrix, FULL_MATRIX)
