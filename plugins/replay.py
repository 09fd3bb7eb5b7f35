"""Class-balanced replay with a tensor memory (exactly resumable)."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_classification_dataset,
)
from avalanche.core import SupervisedPlugin
from torch import Tensor
from ..streams.data import TensorImageDataset
from ._session import training_session

__all__ = ["ClassBalancedReplayPlugin"]

_STATE_VERSION = 1


class ClassBalancedReplayPlugin(SupervisedPlugin):
    """Replay up to ``mem_per_class`` stored samples of every class seen so far.

    After each training experience (``after_training_exp``) the plugin stores, for every
    class of the experience, ``min(mem_per_class, n_c)`` of its ``n_c`` samples, drawn
    without replacement by a ``torch.Generator`` seeded from ``(seed, experience id)``
    (``experience.current_experience``), never from the global RNG: the memory depends only
    on the seed and the data, so a resumed run stores the same samples. The inputs are
    taken from ``experience.dataset.eval()`` (eval transforms), so the memory holds
    normalised, **un-augmented** tensors; replayed samples are fed as stored, without the
    training augmentation. A class seen again replaces its stored samples.

    Before the dataloader of each later experience is built (``after_train_dataset_adaptation``)
    the memory is concatenated to ``strategy.adapted_dataset`` as a task-aware
    classification dataset ``(x, y, 0)`` with no transforms, so each epoch sees the new
    data plus the whole memory (the dataloader shuffles them together).

    The memory lives on the CPU (like the datasets; the dataloader moves batches to the
    strategy's device).

    Args:
        mem_per_class: samples kept per class (>= 1).
        seed: seed of the sample selection.

    Attributes:
        memory_x: stored inputs ``(M, *input_shape)`` (``None`` while empty).
        memory_y: their labels ``(M,)`` (``int64``; ``None`` while empty).
    """

    def __init__(self, mem_per_class: int = 20, seed: int = 0):
        super().__init__()
        if not isinstance(mem_per_class, int) or mem_per_class < 1:
            raise ValueError(f"mem_per_class must be an integer >= 1, got {mem_per_class!r}")
        self.mem_per_class = mem_per_class
        self.seed = int(seed)
        self.memory_x: Tensor | None = None
        self.memory_y: Tensor | None = None

    @property
    def memory_size(self) -> int:
        """Number of stored samples."""
        return 0 if self.memory_y is None else len(self.memory_y)

    def memory_classes(self) -> list[int]:
        """Sorted class ids present in the memory."""
        return [] if self.memory_y is None else sorted(set(self.memory_y.tolist()))

    def memory_dataset(self):
        """The memory as an Avalanche task-aware classification dataset (``None`` while empty)."""
        if self.memory_y is None:
            return None
        targets = self.memory_y.tolist()
        return _make_taskaware_classification_dataset(
            TensorImageDataset(self.memory_x, targets), targets=targets, task_labels=0
        )

    # ------------------------------------------------------------------ callbacks
    def after_train_dataset_adaptation(self, strategy, *args, **kwargs):
        memory = self.memory_dataset()
        if memory is not None:
            strategy.adapted_dataset = strategy.adapted_dataset.concat(memory)

    def after_training_exp(self, strategy, *args, **kwargs):
        exp = strategy.experience
        self.store(exp.dataset, exp.classes_in_this_experience, training_session(strategy))

    def store(self, dataset, classes, exp_id: int) -> None:
        """Add ``min(mem_per_class, n_c)`` samples of each class of ``classes`` from ``dataset``.

        ``dataset`` is an Avalanche dataset (its ``eval()`` view is read); the choice is
        drawn from a generator seeded by ``(seed, exp_id)``.
        """
        generator = torch.Generator().manual_seed(_mix(self.seed, exp_id))
        eval_data = dataset.eval()
        by_class = _indices_by_class(dataset)
        new_x, new_y = [], []
        for c in sorted(int(c) for c in classes):
            pool = by_class.get(c, [])
            if not pool:
                continue
            pick = torch.randperm(len(pool), generator=generator)[: self.mem_per_class]
            chosen = sorted(pool[i] for i in pick.tolist())
            new_x.append(torch.stack([torch.as_tensor(eval_data[i][0]) for i in chosen]))
            new_y.append(torch.full((len(chosen),), c, dtype=torch.long))
        if not new_y:
            return
        x, y = torch.cat(new_x), torch.cat(new_y)
        if self.memory_y is not None:
            keep = ~torch.isin(self.memory_y, y.unique())
            x = torch.cat([self.memory_x[keep], x])
            y = torch.cat([self.memory_y[keep], y])
        self.memory_x, self.memory_y = x.detach().cpu(), y.cpu()

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The memory tensors (and the settings, for a consistency check)."""
        return {
            "version": _STATE_VERSION,
            "mem_per_class": self.mem_per_class,
            "seed": self.seed,
            "memory_x": None if self.memory_x is None else self.memory_x.clone(),
            "memory_y": None if self.memory_y is None else self.memory_y.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the constructor settings must match)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unsupported ClassBalancedReplayPlugin state version {state.get('version')!r}"
            )
        if (state["mem_per_class"], state["seed"]) != (self.mem_per_class, self.seed):
            raise ValueError(
                f"state was saved with mem_per_class={state['mem_per_class']}, seed={state['seed']}; "
                f"this plugin has mem_per_class={self.mem_per_class}, seed={self.seed}"
            )
        x, y = state["memory_x"], state["memory_y"]
        self.memory_x = None if x is None else x.cpu().clone()
        self.memory_y = None if y is None else y.cpu().long().clone()


def _mix(seed: int, exp_id: int) -> int:
    """A 63-bit generator seed from ``(seed, exp_id)``."""
    return (int(seed) * 1_000_003 + int(exp_id) * 7_919 + 12_345) % (2**63 - 1)


def _indices_by_class(dataset) -> dict[int, list[int]]:
    targets = dataset.targets
    val_to_idx = getattr(targets, "val_to_idx", None)
    if val_to_idx is not None:
        return {int(c): sorted(int(i) for i in idx) for c, idx in val_to_idx.items()}
    out: dict[int, list[int]] = {}
    for i, c in enumerate(targets):
        out.setdefault(int(c), []).append(i)
    return out
