"""FSCIL evaluation metrics for Avalanche's :class:`~avalanche.training.plugins.EvaluationPlugin`.

After each session ``s`` the user trains on ``train_stream[s]`` and evaluates on
``test_stream[:s+1]`` (all classes seen so far). :class:`FSCILMetric` then reports, as
fractions in ``[0, 1]``:

* ``session_acc``: top-1 over every evaluated sample (sample-weighted, the FSCIL "joint
  test set" accuracy, the cell of the per-session table);
* ``base_acc`` / ``novel_acc``: mean per-class accuracy over the base classes / over the
  novel classes seen so far (``novel_acc`` is absent in session 0);
* ``hm``: harmonic mean ``2*B*N/(B+N)`` of the two, from session 1 on (0 if ``B+N == 0``);
* ``AA``: mean of the session accuracies so far; ``PD``: accuracy after session 0 minus
  accuracy after the latest session, both on all classes seen (a difference of
  fractions). Both use complete evaluations only (every test experience ``0..s``
  counted): a partial re-evaluation never changes them;
* ``acc_exp/ExpJJJ``: accuracy on test experience ``j`` (the classes of session ``j``);
* ``table``: an :class:`FSCILTable` with every session row and the accuracy matrix.

Example::

    m = FSCILMetric()
    evaluator = EvaluationPlugin(m, accuracy_metrics(stream=True), loggers=[InteractiveLogger()])
    strategy = Naive(model=..., optimizer=..., evaluator=evaluator)
    for s, exp in enumerate(scenario.train_stream):
        strategy.train(exp)
        strategy.eval(scenario.test_stream[: s + 1])
    print(m.table().to_markdown())
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricValue

if TYPE_CHECKING:
    from avalanche.training.templates import SupervisedTemplate

__all__ = ["fscil_metrics", "FSCILMetric", "FSCILTable", "FSCILSessionRow"]

NAN = float("nan")
_STATE_VERSION = 1


def _isnan(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else NAN


def _json_float(v: float) -> float | None:
    """NaN -> ``None`` (strict JSON has no NaN)."""
    return None if _isnan(v) else float(v)


def _from_json_float(v: float | None) -> float:
    return NAN if v is None else float(v)


def _pct(v: float) -> str:
    return "-" if _isnan(v) else f"{100.0 * v:.2f}"


@dataclass
class FSCILSessionRow:
    """Results of the evaluation after session ``session`` (accuracies as fractions).

    Attributes:
        session: session index (0 = base session).
        acc: sample-weighted top-1 accuracy on all evaluated test samples.
        base: mean per-class accuracy over the base classes (NaN if unknown).
        novel: mean per-class accuracy over the novel classes seen so far (NaN if none).
        hm: harmonic mean of ``base`` and ``novel`` (NaN in session 0 or if either is NaN).
        n_samples: number of test samples counted.
        complete: every test experience ``0..session`` was evaluated (rows that are not
            complete count toward neither AA nor PD).
    """

    session: int
    acc: float
    base: float
    novel: float
    hm: float
    n_samples: int = 0
    complete: bool = True


@dataclass
class FSCILTable:
    """Per-session FSCIL results.

    Attributes:
        sessions: one row per evaluated session, sorted by session index.
        matrix: ``matrix[s][j]`` = accuracy (fraction) on test experience ``j`` (the classes
            introduced in session ``j``) after training session ``s``; NaN where ``j > s`` or
            where that experience (or session) was not evaluated. Square, one row per
            session ``0..max session``.
        base_classes: the base class ids used for the base/novel split (``None`` if unknown).
    """

    sessions: list[FSCILSessionRow] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    base_classes: list[int] | None = None

    @property
    def aa(self) -> float:
        """Average accuracy: mean of the complete sessions' accuracies (fraction; NaN if none)."""
        return _mean([r.acc for r in self.sessions if r.complete])

    @property
    def pd(self) -> float:
        """Performance dropping rate: accuracy after session 0 minus accuracy after the latest
        complete session, both on all classes seen (fraction; NaN without a complete session 0)."""
        complete = [r for r in self.sessions if r.complete]
        if not complete or complete[0].session != 0:
            return NAN
        return complete[0].acc - complete[-1].acc

    def to_markdown(self, include_matrix: bool = False) -> str:
        """Markdown table, one column per session, accuracies in %.

        Rows: Acc, Base, Novel, HM; the AA and PD columns are filled in the Acc row.
        ``include_matrix=True`` appends the session x test-experience accuracy matrix.
        """
        heads = [f"S{r.session}" for r in self.sessions]
        lines = [
            "| Metric (%) | " + " | ".join(heads + ["AA", "PD"]) + " |",
            "|---|" + "---:|" * (len(heads) + 2),
        ]
        for label, attr in [("Acc", "acc"), ("Base", "base"), ("Novel", "novel"), ("HM", "hm")]:
            cells = [_pct(getattr(r, attr)) for r in self.sessions]
            extra = [_pct(self.aa), _pct(self.pd)] if attr == "acc" else ["", ""]
            lines.append(f"| {label} | " + " | ".join(cells + extra) + " |")
        text = "\n".join(lines)
        if include_matrix and self.matrix:
            n = len(self.matrix[0])
            mat = [
                "| After session | " + " | ".join(f"Exp {j}" for j in range(n)) + " |",
                "|---|" + "---:|" * n,
            ]
            for s, row in enumerate(self.matrix):
                mat.append(f"| S{s} | " + " | ".join(_pct(v) for v in row) + " |")
            text += "\n\n" + "\n".join(mat)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN -> ``None``): sessions, matrix, base_classes, aa, pd."""
        return {
            "sessions": [
                {
                    "session": r.session,
                    "acc": _json_float(r.acc),
                    "base": _json_float(r.base),
                    "novel": _json_float(r.novel),
                    "hm": _json_float(r.hm),
                    "n_samples": r.n_samples,
                    "complete": r.complete,
                }
                for r in self.sessions
            ],
            "matrix": [[_json_float(v) for v in row] for row in self.matrix],
            "base_classes": None if self.base_classes is None else list(self.base_classes),
            "aa": _json_float(self.aa),
            "pd": _json_float(self.pd),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FSCILTable":
        """Inverse of :meth:`to_dict` (``aa``/``pd`` are recomputed)."""
        rows = [
            FSCILSessionRow(
                session=int(r["session"]),
                acc=_from_json_float(r["acc"]),
                base=_from_json_float(r["base"]),
                novel=_from_json_float(r["novel"]),
                hm=_from_json_float(r["hm"]),
                n_samples=int(r.get("n_samples", 0)),
                complete=bool(r.get("complete", True)),
            )
            for r in d.get("sessions", [])
        ]
        matrix = [[_from_json_float(v) for v in row] for row in d.get("matrix", [])]
        base = d.get("base_classes")
        return cls(rows, matrix, None if base is None else [int(c) for c in base])

    def __str__(self) -> str:
        # Short on purpose: Avalanche's TextLogger/InteractiveLogger print str(value).
        accs = "/".join(_pct(r.acc) for r in self.sessions)
        return (
            f"FSCILTable({len(self.sessions)} sessions, acc % {accs or '-'}, "
            f"AA {_pct(self.aa)} %, PD {_pct(self.pd)} pp)"
        )


@dataclass
class _SessionRecord:
    """Raw counts of one session's evaluation (plain python, for state_dict)."""

    session: int
    class_counts: dict[int, tuple[int, int]]  # class -> (correct, total)
    exp_counts: dict[int, tuple[int, int]]  # test experience -> (correct, total)
    base_classes: list[int] | None

    @property
    def complete(self) -> bool:
        """Every test experience ``0..session`` was counted."""
        return set(range(self.session + 1)) <= set(self.exp_counts)

    def merge(self, newer: "_SessionRecord") -> None:
        """Fold in a partial evaluation of the same session.

        Matrix cells (per-experience counts) always take the newer values. A complete
        record keeps its session-level counts; a partial one takes the newer counts per
        class, so evaluating the experiences one by one adds up to a complete row.
        """
        if not self.complete:
            self.class_counts.update(newer.class_counts)
        self.exp_counts.update(newer.exp_counts)
        self.base_classes = newer.base_classes

    def row(self) -> FSCILSessionRow:
        correct = sum(c for c, _ in self.class_counts.values())
        total = sum(t for _, t in self.class_counts.values())
        acc = correct / total if total else NAN
        base = novel = hm = NAN
        if self.base_classes is not None:
            base_set = set(self.base_classes)
            per_class = {k: c / t for k, (c, t) in self.class_counts.items() if t > 0}
            base = _mean([a for k, a in per_class.items() if k in base_set])
            novel = _mean([a for k, a in per_class.items() if k not in base_set])
            if self.session >= 1 and not (_isnan(base) or _isnan(novel)):
                hm = 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)
        return FSCILSessionRow(self.session, acc, base, novel, hm, total, self.complete)

    def exp_acc(self) -> dict[int, float]:
        return {j: c / t for j, (c, t) in sorted(self.exp_counts.items()) if t > 0}

    def to_state(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "class_counts": [[k, c, t] for k, (c, t) in sorted(self.class_counts.items())],
            "exp_counts": [[j, c, t] for j, (c, t) in sorted(self.exp_counts.items())],
            "base_classes": self.base_classes,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "_SessionRecord":
        base = d.get("base_classes")
        return cls(
            session=int(d["session"]),
            class_counts={int(k): (int(c), int(t)) for k, c, t in d["class_counts"]},
            exp_counts={int(j): (int(c), int(t)) for j, c, t in d["exp_counts"]},
            base_classes=None if base is None else [int(c) for c in base],
        )


class _EvalAccumulator:
    """Per-class and per-experience correct/total counts of one ``strategy.eval`` call."""

    def __init__(self, session: int):
        self.session = session
        self.correct = torch.zeros(0, dtype=torch.long)
        self.total = torch.zeros(0, dtype=torch.long)
        self.exp_counts: dict[int, list[int]] = {}
        self.exp_classes: dict[int, set[int]] = {}

    def add(self, exp_id: int, y: torch.Tensor, hit: torch.Tensor) -> None:
        """Add one batch (CPU ``int64`` labels ``y`` and 0/1 ``hit``)."""
        keep = y >= 0
        y, hit = y[keep], hit[keep]
        if y.numel() == 0:
            return
        n = max(int(y.max()) + 1, self.total.numel())
        total = torch.bincount(y, minlength=n)
        correct = torch.bincount(y[hit.bool()], minlength=n)
        if n > self.total.numel():
            pad = n - self.total.numel()
            self.total = torch.cat([self.total, torch.zeros(pad, dtype=torch.long)])
            self.correct = torch.cat([self.correct, torch.zeros(pad, dtype=torch.long)])
        self.total += total
        self.correct += correct
        ec = self.exp_counts.setdefault(exp_id, [0, 0])
        ec[0] += int(hit.sum())
        ec[1] += int(y.numel())

    def class_counts(self) -> dict[int, tuple[int, int]]:
        idx = torch.nonzero(self.total > 0).flatten().tolist()
        return {k: (int(self.correct[k]), int(self.total[k])) for k in idx}


class FSCILMetric(PluginMetric["FSCILTable"]):
    """FSCIL per-session accuracy, base/novel/HM, AA, PD and accuracy matrix.

    Each ``strategy.eval(...)`` call is one evaluation of session
    ``s = strategy.clock.train_exp_counter - 1`` (the number of trained experiences minus
    one; inside ``train()``, e.g. periodic eval, it is the experience being trained). With
    no training yet nothing is emitted. Only test experiences with
    ``current_experience <= s`` are counted: experiences of future sessions (classes not
    trained yet) are ignored. An eval call that counts no sample emits nothing and leaves
    the table unchanged.

    An evaluation is *complete* when it counts every test experience ``0..s`` (all classes
    seen). A complete evaluation replaces the session's row. A partial one (e.g.
    ``eval(test_stream[s])`` alone) updates the accuracy matrix cells it covers; it only
    fills the row's values while the session has no complete evaluation (partial
    evaluations of the same session add up, class by class), and AA and PD count complete
    rows only, so a partial re-evaluation changes neither.

    Values are emitted at ``after_eval`` with ``x_plot = s`` under ``{prefix}/``:
    ``session_acc``, ``base_acc``, ``novel_acc`` (not in session 0), ``hm`` (from session
    1), ``AA``, ``PD``, ``acc_exp/Exp{j:03d}`` and ``table`` (an :class:`FSCILTable`); a
    partial re-evaluation of a session with a complete row emits only its
    ``acc_exp/...`` values and the table.
    All accuracies are fractions in ``[0, 1]``; NaN values are not emitted.

    Args:
        base_classes: base class ids; default: ``classes_in_this_experience`` of the
            evaluated experience with ``current_experience == 0`` (remembered for later
            evaluations that skip it). Every other evaluated class is novel.
        prefix: common prefix of the metric names.
        stream_name: count only experiences of this stream (e.g. ``"test"``, so that a
            periodic eval on the training experience is ignored); ``None`` = any stream.
    """

    def __init__(
        self,
        base_classes: Sequence[int] | None = None,
        *,
        prefix: str = "FSCIL",
        stream_name: str | None = None,
    ):
        super().__init__()
        self.base_classes: list[int] | None = (
            None if base_classes is None else sorted(int(c) for c in base_classes)
        )
        self.prefix = prefix
        self.stream_name = stream_name
        self._found_base: list[int] | None = None
        self._records: dict[int, _SessionRecord] = {}
        self._training_exp: int | None = None
        self._acc: _EvalAccumulator | None = None
        self._exp_id: int | None = None
        self._exp_pos = 0
        self._snapshot: torch.Tensor | None = None

    # ------------------------------------------------------------------ results
    def table(self, upto: int | None = None) -> FSCILTable:
        """:class:`FSCILTable` of the sessions evaluated so far (only those ``<= upto`` if given)."""
        records = [r for s, r in sorted(self._records.items()) if upto is None or s <= upto]
        rows = [r.row() for r in records]
        n = records[-1].session + 1 if records else 0
        matrix = [[NAN] * n for _ in range(n)]
        for r in records:
            for j, a in r.exp_acc().items():
                if j < n:
                    matrix[r.session][j] = a
        base = records[-1].base_classes if records else self._base()
        return FSCILTable(rows, matrix, None if base is None else list(base))

    def result(self) -> FSCILTable:
        """Same as :meth:`table`."""
        return self.table()

    def reset(self) -> None:
        """Forget every session (the table becomes empty)."""
        self._records = {}
        self._found_base = None
        self._acc = None

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-able state (raw per-class / per-experience counts of each session)."""
        return {
            "version": _STATE_VERSION,
            "found_base_classes": self._found_base,
            "records": [r.to_state() for _, r in sorted(self._records.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the table from :meth:`state_dict` (the constructor settings are kept)."""
        if state.get("version", _STATE_VERSION) != _STATE_VERSION:
            raise ValueError(f"unsupported FSCILMetric state version {state.get('version')!r}")
        found = state.get("found_base_classes")
        self._found_base = None if found is None else [int(c) for c in found]
        self._records = {}
        for d in state.get("records", []):
            rec = _SessionRecord.from_state(d)
            self._records[rec.session] = rec
        self._acc = None

    # ---------------------------------------------------------------- callbacks
    def before_training(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        self._training_exp = None

    def before_training_exp(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        self._training_exp = strategy.clock.train_exp_counter

    def after_training(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        self._training_exp = None

    def before_eval(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        session = self._session_index(strategy)
        self._acc = _EvalAccumulator(session) if session >= 0 else None
        self._exp_pos = 0

    def before_eval_exp(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        self._exp_id = None
        pos = self._exp_pos
        self._exp_pos += 1
        if self._acc is None:
            return
        exp = strategy.experience
        if self.stream_name is not None:
            origin = getattr(exp, "origin_stream", None)
            if getattr(origin, "name", None) != self.stream_name:
                return
        exp_id = getattr(exp, "current_experience", None)
        exp_id = pos if exp_id is None else int(exp_id)
        if exp_id > self._acc.session:
            return  # future classes: ignored
        self._exp_id = exp_id
        classes = getattr(exp, "classes_in_this_experience", None)
        if classes is not None:
            self._acc.exp_classes[exp_id] = {int(c) for c in classes}
            self._snapshot = None
        else:  # find the classes from the labels seen during this experience
            self._snapshot = self._acc.total.clone()

    def after_eval_iteration(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        if self._acc is None or self._exp_id is None:
            return
        y = strategy.mb_y
        pred = strategy.mb_output.argmax(dim=1)
        packed = torch.stack((y.long(), (pred == y).long())).cpu()  # one transfer per batch
        self._acc.add(self._exp_id, packed[0], packed[1])

    def after_eval_exp(self, strategy: "SupervisedTemplate", **kwargs) -> None:
        if self._acc is None or self._exp_id is None or self._snapshot is None:
            return
        total = self._acc.total
        grown = total.numel() - self._snapshot.numel()
        prev = torch.cat([self._snapshot, torch.zeros(grown, dtype=torch.long)])
        self._acc.exp_classes[self._exp_id] = set(torch.nonzero(total > prev).flatten().tolist())
        self._snapshot = None

    def after_eval(self, strategy: "SupervisedTemplate", **kwargs) -> list[MetricValue] | None:
        acc, self._acc = self._acc, None
        self._exp_id = None
        if acc is None or not acc.exp_counts or sum(t for _, t in acc.exp_counts.values()) == 0:
            return None
        if self.base_classes is None and 0 in acc.exp_classes:
            self._found_base = sorted(acc.exp_classes[0])
        s = acc.session
        record = _SessionRecord(
            session=s,
            class_counts=acc.class_counts(),
            exp_counts={j: (c, t) for j, (c, t) in acc.exp_counts.items()},
            base_classes=self._base(),
        )
        old = self._records.get(s)
        if record.complete or old is None:
            self._records[s] = record
            return self._metric_values(s)
        had_row = old.complete
        old.merge(record)
        return self._metric_values(s, only_exps=sorted(record.exp_counts) if had_row else None)

    # ------------------------------------------------------------------ helpers
    def _base(self) -> list[int] | None:
        return self.base_classes if self.base_classes is not None else self._found_base

    def _session_index(self, strategy: "SupervisedTemplate") -> int:
        counter = int(strategy.clock.train_exp_counter)
        # Inside train() (periodic eval) the Clock has not yet counted the current
        # experience, even in after_training_exp: that experience is the session.
        if self._training_exp is not None and self._training_exp == counter:
            return counter
        return counter - 1

    def _metric_values(self, session: int, only_exps: list[int] | None = None) -> list[MetricValue]:
        """The values to emit; ``only_exps``: just these experiences' accuracies and the table."""
        table = self.table(upto=session)
        row = next(r for r in table.sessions if r.session == session)
        p = self.prefix
        scalars = [
            ("session_acc", row.acc),
            ("base_acc", row.base),
            ("novel_acc", row.novel),
            ("hm", row.hm),
            ("AA", table.aa),
            ("PD", table.pd),
        ]
        out = [
            MetricValue(self, f"{p}/{name}", float(v), session)
            for name, v in scalars
            if not _isnan(v) and only_exps is None
        ]
        for j, a in self._records[session].exp_acc().items():
            if only_exps is None or j in only_exps:
                out.append(MetricValue(self, f"{p}/acc_exp/Exp{j:03d}", float(a), session))
        out.append(MetricValue(self, f"{p}/table", table, session))
        return out

    def __str__(self) -> str:
        return f"{self.prefix}_FSCILMetric"


def fscil_metrics(
    base_classes: Sequence[int] | None = None,
    *,
    prefix: str = "FSCIL",
    stream_name: str | None = None,
) -> list[PluginMetric]:
    """FSCIL metrics for ``EvaluationPlugin(*fscil_metrics(), loggers=...)``.

    Returns ``[FSCILMetric(base_classes, prefix=prefix, stream_name=stream_name)]``; keep a
    reference to it (``m = fscil_metrics()[0]``) to read ``m.table()``. See
    :class:`FSCILMetric` for the emitted names (accuracies are fractions).
    """
    return [FSCILMetric(base_classes, prefix=prefix, stream_name=stream_name)]
