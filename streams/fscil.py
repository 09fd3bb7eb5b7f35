"""Few-shot class-incremental (FSCIL) scenarios on top of Avalanche's ``CLScenario``."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_classification_dataset,
)
from torch.utils.data import Dataset

from .data import dataset_targets

__all__ = ["FSCILScenario", "fscil_benchmark", "dataset_targets"]


class FSCILScenario(CLScenario):
    """A few-shot class-incremental scenario (an Avalanche ``CLScenario``).

    Class ids are remapped to their position in the class order: the base classes are
    ``0 .. base_classes-1`` and session ``s`` adds the next ``ways`` ids, so an output
    layer of size ``n_classes`` grows in order. ``class_order[i]`` is the original label
    of class ``i``.

    Attributes:
        train_stream, test_stream: one experience per session. Every experience carries
            Avalanche's classes timeline (``classes_in_this_experience``,
            ``classes_seen_so_far``, ...) and ``class_names``: ``{class id: name}`` for the
            classes seen so far (empty names are never invented: ``{}`` without names).
        base_classes: class ids of session 0.
        session_classes: ``session_classes[s]`` = class ids introduced in session ``s``.
        class_order: original labels, in the order of the remapped ids.
        class_names: names indexed by remapped class id, or ``None``.
        ways, shots, base_shots: the protocol (``base_shots=None``: all base samples).
        shot_indices: ``shot_indices[s]`` = indices into the *original* training dataset
            of every training sample of session ``s`` (exactly what was drawn).
        heldout: a dataset of classes the stream never trains on (few-shot generalisation
            evaluation, e.g. the ``heldout_fewshot`` column), or ``None``; built on first
            access when the preset gave a loader.
        eval_transform: the tensor transform of evaluation images (the stream's
            normalisation, e.g. ``ToFloatNormalize``), or ``None``.
        external: an external retrieval corpus (e.g. RAML's memory): images of classes that
            appear in none of the stream's sessions and none of the held-out pool, labels are
            the corpus' own (not stream class ids), or ``None``; built on first access.
    """

    def __init__(
        self,
        streams: Sequence[EagerCLStream],
        *,
        session_classes: list[list[int]],
        class_order: list[int],
        class_names: list[str] | None,
        ways: int,
        shots: int,
        base_shots: int | None,
        shot_indices: list[list[int]],
        seed: int,
        heldout: Dataset | Callable[[], Dataset] | None = None,
        external: Dataset | Callable[[], Dataset] | None = None,
    ):
        super().__init__(streams)
        self._heldout = heldout
        self._external = external
        self.eval_transform: Any = None
        self.session_classes = session_classes
        self.base_classes = session_classes[0]
        self.class_order = class_order
        self.class_names = class_names
        self.ways = ways
        self.shots = shots
        self.base_shots = base_shots
        self.shot_indices = shot_indices
        self.seed = seed

    @property
    def heldout(self) -> Dataset | None:
        """Classes the stream never trains on (``None`` if the stream has none)."""
        if callable(self._heldout) and not isinstance(self._heldout, Dataset):
            self._heldout = self._heldout()
        return self._heldout

    @property
    def has_external(self) -> bool:
        """Whether the stream has an external corpus (without building it)."""
        return self._external is not None

    @property
    def external(self) -> Dataset | None:
        """The external retrieval corpus (``None`` if the stream has none)."""
        if callable(self._external) and not isinstance(self._external, Dataset):
            self._external = self._external()
        return self._external

    @property
    def n_sessions(self) -> int:
        """Number of sessions including the base session."""
        return len(self.session_classes)

    @property
    def n_classes(self) -> int:
        """Total number of classes over all sessions."""
        return sum(len(c) for c in self.session_classes)

    def classes_seen_after(self, session: int) -> list[int]:
        """Class ids introduced in sessions ``0..session``."""
        return [c for s in self.session_classes[: session + 1] for c in s]

    def describe(self) -> str:
        """One line: base classes, sessions, ways, shots, sample counts."""
        base = "all" if self.base_shots is None else self.base_shots
        n_train = [len(e.dataset) for e in self.train_stream]
        n_test = [len(e.dataset) for e in self.test_stream]
        return (
            f"{len(self.base_classes)} base classes ({base} shots) + "
            f"{self.n_sessions - 1} sessions of {self.ways}-way {self.shots}-shot; "
            f"train samples per session {n_train}; test samples per session {n_test}"
        )


def _check_positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _resolve_class_order(
    class_order: Sequence[int] | None, labels: np.ndarray
) -> list[int]:
    available = sorted(set(labels.tolist()))
    if class_order is None:
        return available
    order = [int(c) for c in class_order]
    seen: set[int] = set()
    dups = sorted({c for c in order if c in seen or seen.add(c)})
    if dups:
        raise ValueError(f"class_order has duplicate labels {dups[:10]}")
    unknown = sorted(set(order) - set(available))
    if unknown:
        raise ValueError(
            f"class_order has labels {unknown[:10]} that train_dataset does not contain "
            f"(its labels are {available[0]}..{available[-1]}, {len(available)} classes)"
        )
    return order


def fscil_benchmark(
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    base_classes: int,
    ways: int,
    shots: int,
    sessions: int | None = None,
    class_order: Sequence[int] | None = None,
    seed: int = 0,
    shot_indices: Sequence[Sequence[int]] | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    base_shots: int | None = None,
    train_transform: Any = None,
    eval_transform: Any = None,
    heldout: Dataset | Callable[[], Dataset] | None = None,
    external: Dataset | Callable[[], Dataset] | None = None,
) -> FSCILScenario:
    """Build a few-shot class-incremental scenario.

    Session 0 trains on every training sample of the ``base_classes`` first classes of
    ``class_order`` (or ``base_shots`` per class: the few-shot continual learning setting
    of a sequence of small tasks, e.g. ``base_classes=ways, base_shots=shots``). Each later
    session adds ``ways`` new classes with exactly ``shots`` training samples each.
    ``test_stream[s]`` holds the test samples of the classes of session ``s``, so evaluating
    on ``test_stream[:s+1]`` after session ``s`` is the standard "all classes seen so far"
    protocol.

    Args:
        train_dataset, test_dataset: classification datasets with ``.targets``
            (e.g. :class:`~avalanche_fscl.streams.TensorImageDataset`, torchvision datasets)
            returning ``(x, y)``; ``x`` must be a tensor after the transforms.
        base_classes: number of classes in session 0.
        ways: new classes per incremental session.
        shots: training samples per new class.
        sessions: number of incremental sessions; ``None`` uses all remaining classes of
            ``class_order``, which must then split into whole sessions.
        class_order: original labels in order of appearance; default: sorted labels.
        seed: chooses the shots (and the base shots); the same seed gives the same samples.
        shot_indices: exact training samples (indices into ``train_dataset``), e.g. the
            TOPIC/CEC index lists: one list per incremental session (``len == sessions``),
            or one per session including the base session (``len == sessions + 1``).
        class_names: names by original label (sequence or mapping); carried to the
            scenario and every experience for text-based (CLIP) methods.
        base_shots: training samples per base class; ``None`` = all.
        train_transform: tensor transform of the "train" group (augmentation +
            normalisation); ``None`` = ``eval_transform``.
        eval_transform: tensor transform of the "eval" group (normalisation).
        heldout: classes the stream never trains on, kept as ``scenario.heldout`` (a dataset
            whose items are ready-to-use tensors, or a function that builds it on first use).
        eval_transform: the tensor transform of evaluation images (the stream's
            normalisation, e.g. ``ToFloatNormalize``), or ``None``.
        external: an external retrieval corpus kept as ``scenario.external`` (same forms as
            ``heldout``); its images must belong to none of the stream's or held-out classes.

    Returns:
        An :class:`FSCILScenario` whose labels are remapped to ``0..n_classes-1`` in
        class order.

    Raises:
        ValueError: bad counts, class orders, shot lists or class names (the message names
            the argument and the allowed range).
    """
    for name, value in [("base_classes", base_classes), ("ways", ways), ("shots", shots)]:
        _check_positive(name, value)
    _check_positive("sessions", sessions, minimum=0)
    _check_positive("base_shots", base_shots)

    train_labels = dataset_targets(train_dataset)
    test_labels = dataset_targets(test_dataset)
    order = _resolve_class_order(class_order, train_labels)
    n_avail = len(order)
    if base_classes > n_avail:
        raise ValueError(
            f"base_classes={base_classes} but only {n_avail} classes are available "
            f"(allowed: 1..{n_avail})"
        )
    remaining = n_avail - base_classes
    if sessions is None:
        if remaining % ways:
            raise ValueError(
                f"sessions=None uses all {remaining} classes after the base session, but they "
                f"do not split into sessions of ways={ways} ({remaining % ways} left over); "
                f"pass sessions= (allowed: 0..{remaining // ways}) or a shorter class_order"
            )
        sessions = remaining // ways
    elif sessions * ways > remaining:
        raise ValueError(
            f"sessions={sessions} x ways={ways} needs {sessions * ways} classes after the "
            f"{base_classes} base classes but only {remaining} remain "
            f"(allowed sessions: 0..{remaining // ways})"
        )
    used = order[: base_classes + sessions * ways]
    session_orig = [used[:base_classes]] + [
        used[base_classes + s * ways : base_classes + (s + 1) * ways] for s in range(sessions)
    ]

    train_by_class = {c: np.flatnonzero(train_labels == c) for c in used}
    test_by_class = {c: np.flatnonzero(test_labels == c) for c in used}
    no_test = [c for c in used if len(test_by_class[c]) == 0]
    if no_test:
        raise ValueError(f"test_dataset has no samples of classes {no_test[:10]}")

    indices = _session_train_indices(
        session_orig, train_by_class, train_labels, shots, base_shots, seed, shot_indices
    )

    remap = {orig: new for new, orig in enumerate(used)}
    names = _resolve_class_names(class_names, used)
    train_ds = _avalanche_dataset(train_dataset, train_labels, remap, train_transform, eval_transform)
    test_ds = _avalanche_dataset(test_dataset, test_labels, remap, train_transform, eval_transform)
    train_exps = [DatasetExperience(dataset=train_ds.subset(idx)) for idx in indices]
    test_exps = [
        DatasetExperience(dataset=test_ds.subset(np.concatenate([test_by_class[c] for c in cls]).tolist()))
        for cls in session_orig
    ]
    streams = [
        with_classes_timeline(EagerCLStream("train", train_exps)),
        with_classes_timeline(EagerCLStream("test", test_exps)),
    ]
    for stream in streams:
        for exp in stream:
            exp.class_names = (
                {c: names[c] for c in sorted(exp.classes_seen_so_far)} if names else {}
            )
    session_classes = [[remap[c] for c in cls] for cls in session_orig]
    scenario = FSCILScenario(
        streams,
        session_classes=session_classes,
        class_order=used,
        class_names=names,
        ways=ways,
        shots=shots,
        base_shots=base_shots,
        shot_indices=indices,
        seed=seed,
        heldout=heldout,
        external=external,
    )
    scenario.eval_transform = eval_transform  # e.g. a CLIP model undoes this normalisation
    return scenario


def _session_train_indices(
    session_orig: list[list[int]],
    train_by_class: dict[int, np.ndarray],
    train_labels: np.ndarray,
    shots: int,
    base_shots: int | None,
    seed: int,
    shot_indices: Sequence[Sequence[int]] | None,
) -> list[list[int]]:
    """Training-set indices of every session: drawn by ``seed`` or checked from ``shot_indices``."""
    n_sessions = len(session_orig)
    given: dict[int, Sequence[int]] = {}
    if shot_indices is not None:
        shot_indices = list(shot_indices)
        if len(shot_indices) == n_sessions - 1:
            given = {s + 1: idx for s, idx in enumerate(shot_indices)}
        elif len(shot_indices) == n_sessions:
            given = dict(enumerate(shot_indices))
        else:
            raise ValueError(
                f"shot_indices has {len(shot_indices)} lists; allowed: {n_sessions - 1} (one "
                f"per incremental session) or {n_sessions} (including the base session)"
            )

    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    for s, classes in enumerate(session_orig):
        k = shots if s > 0 else base_shots
        if s in given:
            out.append(_check_given_indices(s, given[s], classes, train_labels, k))
            continue
        chosen = []
        for c in classes:
            pool = train_by_class[c]
            if k is None:
                chosen.append(pool)
                continue
            if len(pool) < k:
                arg = "shots" if s > 0 else "base_shots"
                raise ValueError(
                    f"{arg}={k} but class {c} has only {len(pool)} training samples "
                    f"(allowed: 1..{len(pool)})"
                )
            chosen.append(np.sort(rng.choice(pool, size=k, replace=False)))
        out.append(np.concatenate(chosen).tolist())
    return out


def _check_given_indices(
    session: int,
    idx: Sequence[int],
    classes: list[int],
    train_labels: np.ndarray,
    k: int | None,
) -> list[int]:
    arr = np.asarray(list(idx), dtype=np.int64)
    where = f"shot_indices for session {session}"
    if arr.size and (arr.min() < 0 or arr.max() >= len(train_labels)):
        raise ValueError(f"{where}: indices must be in 0..{len(train_labels) - 1}")
    if len(np.unique(arr)) != len(arr):
        raise ValueError(f"{where}: indices are repeated")
    labels = train_labels[arr]
    foreign = sorted(set(labels.tolist()) - set(classes))
    if foreign:
        raise ValueError(
            f"{where}: samples of classes {foreign[:10]} that are not in this session "
            f"(session classes: {classes})"
        )
    counts = {c: int((labels == c).sum()) for c in classes}
    bad = {c: n for c, n in counts.items() if n == 0 or (k is not None and n != k)}
    if bad:
        want = "at least 1" if k is None else f"exactly {k}"
        raise ValueError(f"{where}: need {want} samples per class, got {bad}")
    return arr.tolist()


def _resolve_class_names(
    class_names: Sequence[str] | Mapping[int, str] | None, used: list[int]
) -> list[str] | None:
    if class_names is None:
        return None
    names = []
    for c in used:
        try:
            names.append(str(class_names[c]))
        except (IndexError, KeyError):
            raise ValueError(
                f"class_names has no name for label {c} (it must cover every label in class_order)"
            ) from None
    return names


def _avalanche_dataset(dataset, labels, remap, train_transform, eval_transform):
    """Wrap ``dataset`` as a task-aware classification dataset with remapped targets.

    Items are ``(x, y, 0)``, as Avalanche's class-incremental generators produce them.
    Labels of unused classes map to -1 (they are never selected).
    """
    new_targets = [remap.get(int(c), -1) for c in labels]
    return _make_taskaware_classification_dataset(
        _Relabel(dataset, new_targets),
        targets=new_targets,
        task_labels=0,
        transform_groups={
            "train": (train_transform if train_transform is not None else eval_transform, None),
            "eval": (eval_transform, None),
        },
    )


class _Relabel(Dataset):
    """``dataset`` with its labels replaced (the remapped class ids)."""

    def __init__(self, dataset: Dataset, targets: list[int]):
        self.dataset = dataset
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.dataset[i][0], self.targets[i]
