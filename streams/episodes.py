"""N-way K-shot episode sampling for meta-training and few-shot evaluation."""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import TensorImageDataset, dataset_targets

__all__ = ["Episode", "FewShotEpisodes", "few_shot_episodes"]


class Episode(NamedTuple):
    """One N-way K-shot task. Labels are episode-local: ``0..n_way-1`` in ``classes`` order.

    Shapes: ``support_x (n_way*k_shot, ...)``, ``support_y (n_way*k_shot,)``,
    ``query_x (n_way*n_query, ...)``, ``query_y (n_way*n_query,)``; samples are grouped
    by class. ``classes`` are the dataset labels of the ``n_way`` classes.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: list[int]


class FewShotEpisodes(Sequence[Episode]):
    """A reproducible, random-access sequence of episodes over ``dataset``.

    Episode ``i`` depends only on ``(seed, i)``: it is the same whether it is read first,
    last, alone or in a loop, and it is built on access (nothing is materialised).
    """

    def __init__(
        self,
        dataset: Any,
        n_way: int,
        k_shot: int,
        n_query: int,
        n_episodes: int,
        seed: int = 0,
        classes: Sequence[int] | None = None,
    ):
        for name, value, lo in [("n_way", n_way, 1), ("k_shot", k_shot, 1),
                                ("n_query", n_query, 0), ("n_episodes", n_episodes, 1)]:
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        labels = dataset_targets(dataset)
        if classes is not None:
            unknown = sorted(set(classes) - set(labels.tolist()))
            if unknown:
                raise ValueError(f"classes has labels {unknown[:10]} that the dataset does not contain")
        need = k_shot + n_query
        by_class = {
            int(c): np.flatnonzero(labels == c)
            for c in (sorted(set(labels.tolist())) if classes is None else classes)
        }
        self.eligible = sorted(c for c, idx in by_class.items() if len(idx) >= need)
        if len(self.eligible) < n_way:
            most = max((len(v) for v in by_class.values()), default=0)
            raise ValueError(
                f"n_way={n_way} but only {len(self.eligible)} classes have k_shot + n_query = "
                f"{need} samples (allowed n_way: 1..{len(self.eligible)}; the largest class has "
                f"{most} samples, so k_shot + n_query must be <= {most})"
            )
        self.dataset = dataset
        self.by_class = by_class
        self.n_way, self.k_shot, self.n_query = n_way, k_shot, n_query
        self.n_episodes, self.seed = n_episodes, seed

    def __len__(self) -> int:
        return self.n_episodes

    def indices(self, i: int) -> tuple[list[int], np.ndarray]:
        """Classes of episode ``i`` and the dataset indices ``(n_way, k_shot + n_query)``."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range 0..{self.n_episodes - 1}")
        rng = np.random.default_rng([self.seed, i % self.n_episodes])
        classes = rng.choice(self.eligible, size=self.n_way, replace=False).tolist()
        need = self.k_shot + self.n_query
        idx = np.stack([rng.choice(self.by_class[c], size=need, replace=False) for c in classes])
        return [int(c) for c in classes], idx

    def __getitem__(self, i: int) -> Episode:  # type: ignore[override]
        classes, idx = self.indices(i)
        x = self._gather(idx[:, : self.k_shot].ravel()), self._gather(idx[:, self.k_shot :].ravel())
        ways = torch.arange(self.n_way)
        return Episode(
            x[0], ways.repeat_interleave(self.k_shot), x[1], ways.repeat_interleave(self.n_query), classes
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in range(self.n_episodes):
            yield self[i]

    def _gather(self, idx: np.ndarray) -> Tensor:
        if isinstance(self.dataset, TensorImageDataset):
            return self.dataset.data[torch.from_numpy(idx)]  # one tensor index, no per-item calls
        if len(idx) == 0:
            return torch.empty(0)
        return torch.stack([torch.as_tensor(self.dataset[int(j)][0]) for j in idx])


def few_shot_episodes(
    dataset: Any,
    n_way: int,
    k_shot: int,
    n_query: int,
    n_episodes: int,
    seed: int = 0,
    *,
    classes: Sequence[int] | None = None,
) -> FewShotEpisodes:
    """N-way K-shot episodes over ``dataset``, reproducible by ``seed``.

    Args:
        dataset: anything with ``.targets`` whose items start with ``x`` (a
            :class:`~avalanche_fscl.streams.TensorImageDataset`, an Avalanche dataset such
            as ``experience.dataset`` with its current transforms, a torchvision dataset).
        n_way: classes per episode; k_shot: support samples per class;
        n_query: query samples per class (may be 0); n_episodes: episodes in the sequence.
        seed: episode ``i`` depends only on ``(seed, i)``.
        classes: restrict sampling to these labels (e.g. the base classes).

    Returns:
        A :class:`FewShotEpisodes` sequence of :class:`Episode` (built lazily on access).

    Raises:
        ValueError: non-positive counts, or fewer than ``n_way`` classes with
            ``k_shot + n_query`` samples (the message gives the allowed range).
    """
    return FewShotEpisodes(dataset, n_way, k_shot, n_query, n_episodes, seed, classes)
