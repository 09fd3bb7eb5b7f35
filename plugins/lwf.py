"""Learning without Forgetting with a checkpointable state (Avalanche's ``LwFPlugin`` + ``state_dict``)."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from avalanche.training.plugins import LwFPlugin

__all__ = ["StatefulLwFPlugin"]

_STATE_VERSION = 1


class StatefulLwFPlugin(LwFPlugin):
    """Learning without Forgetting whose state survives a checkpoint.

    Same constructor and loss as Avalanche's :class:`~avalanche.training.plugins.LwFPlugin`:
    after each experience the model is snapshotted (``self.lwf.prev_model``) and the
    classes seen so far are recorded per task (``self.lwf.prev_classes_by_task``); while
    training later experiences, ``alpha * KL`` between the temperature-softened outputs of
    the snapshot and of the current model on the previously seen classes is added to the
    loss.

    The state is the snapshot's ``state_dict``, the per-module train/eval flags of the
    snapshot, ``prev_classes_by_task`` and the experience count (which indexes a list
    ``alpha``). :meth:`load_state_dict` has no model to copy, so the snapshot is rebuilt
    lazily at the next callback that sees the strategy (``before_training`` normally): a
    deep copy of ``strategy.model`` with the saved weights loaded. The model's parameter
    and buffer shapes must therefore be the same as when the state was saved (true for
    :class:`~avalanche_fscl.models.FSCILNet`).

    Note (Avalanche behaviour, kept for fidelity): the snapshot is taken in the mode the
    model is in after training (train mode), so the teacher runs in train mode: its
    BatchNorm layers use batch statistics and update their running statistics, and dropout
    is active.

    Args:
        alpha: distillation weight, a float or one value per experience.
        temperature: softmax temperature of the distillation.
    """

    def __init__(self, alpha=1, temperature=2):
        super().__init__(alpha=alpha, temperature=temperature)
        self._pending: dict[str, Any] | None = None  # loaded snapshot not yet rebuilt

    # ------------------------------------------------------------------ callbacks
    def before_training(self, strategy, *args, **kwargs):
        self._materialise(strategy)

    def before_training_exp(self, strategy, *args, **kwargs):
        self._materialise(strategy)

    def before_backward(self, strategy, *args, **kwargs):
        self._materialise(strategy)
        super().before_backward(strategy, **kwargs)

    def after_training_exp(self, strategy, *args, **kwargs):
        self._pending = None  # superseded by the new snapshot
        super().after_training_exp(strategy, **kwargs)

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Snapshot weights (CPU copies), its module modes, classes per task, experience count."""
        if self._pending is not None:
            return copy.deepcopy(self._pending)
        lwf = self.lwf
        prev = lwf.prev_model
        return {
            "version": _STATE_VERSION,
            "expcount": int(lwf.expcount),
            "prev_classes_by_task": {
                int(t): sorted(int(c) for c in cs) for t, cs in lwf.prev_classes_by_task.items()
            },
            "prev_model": None
            if prev is None
            else {k: v.detach().cpu().clone() for k, v in prev.state_dict().items()},
            "prev_model_training": None
            if prev is None
            else {name: bool(m.training) for name, m in prev.named_modules()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the snapshot model is rebuilt at the next callback."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported StatefulLwFPlugin state version {state.get('version')!r}")
        lwf = self.lwf
        lwf.expcount = int(state["expcount"])
        lwf.prev_classes_by_task = defaultdict(set)
        for t, cs in state["prev_classes_by_task"].items():
            lwf.prev_classes_by_task[int(t)] = {int(c) for c in cs}
        lwf.prev_model = None
        self._pending = state if state.get("prev_model") is not None else None

    def _materialise(self, strategy) -> None:
        """Rebuild the loaded snapshot as a deep copy of ``strategy.model`` with its weights."""
        if self._pending is None:
            return
        state = self._pending
        prev = copy.deepcopy(strategy.model)
        try:
            prev.load_state_dict(state["prev_model"])
        except RuntimeError as err:
            raise RuntimeError(
                "StatefulLwFPlugin: the saved snapshot does not fit strategy.model (the model's "
                f"structure changed since the checkpoint): {err}"
            ) from err
        modes = state.get("prev_model_training") or {}
        for name, m in prev.named_modules():
            if name in modes:
                m.training = bool(modes[name])
        self.lwf.prev_model = prev
        self._pending = None
