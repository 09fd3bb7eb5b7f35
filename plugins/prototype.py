"""Decoupled prototype classifier (the CEC-family FSCIL baseline)."""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from ._features import class_mean_features
from ._session import training_session

__all__ = ["PrototypeClassifierPlugin"]

_STATE_VERSION = 1


class PrototypeClassifierPlugin(SupervisedPlugin):
    """Train the base session normally, then classify with class prototypes only.

    For an :class:`~avalanche_fscl.models.FSCILNet` with a cosine head (``head="cosine"``;
    a linear head works but its prototype rows are not on the scale of trained rows):

    * after **every** session the classifier rows of that session's classes are set to the
      L2-normalised mean feature of their training samples, read with eval transforms (no
      augmentation), through ``model.set_class_weights``. For the base session this
      replaces the trained rows too, unless ``replace_base=False``;
    * after the base session (``experience.current_experience == 0``) the backbone is
      frozen (``requires_grad_(False)``) and kept in eval mode during every later training
      experience, so its weights and BatchNorm statistics never change again;
    * in sessions >= 1 nothing is trained by gradient. An
      :class:`~avalanche_fscl.strategies.FSCILStrategy` decides every session's epochs with
      its schedule, which must then say ``novel_epochs=0`` (the registered ``prototype``
      strategy does; another schedule is a ``ValueError`` before training starts). On any
      other Avalanche strategy (``Naive``, ...) the plugin sets ``strategy.train_epochs``
      to 0 in ``before_training_exp`` and restores it in ``after_training_exp`` (Avalanche's
      loop runs ``range(train_epochs)`` epochs and still calls ``after_training_exp``).

    Base-class rows are never touched after the base session, so base-class logits do not
    change; base accuracy can only drop because novel classes compete with them.

    Args:
        freeze_after_base: freeze the backbone after the base session (recommended; with
            ``False`` the backbone keeps ``requires_grad`` but is still not trained).
        replace_base: also replace the trained base-class rows by prototypes.
        batch_size: batch size of the feature extraction.

    State (:meth:`state_dict`): whether the backbone is frozen and the saved
    ``train_epochs`` while a session runs; the prototypes live in the model's own
    ``state_dict``.
    """

    def __init__(self, freeze_after_base: bool = True, replace_base: bool = True, batch_size: int = 256):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.freeze_after_base = freeze_after_base
        self.replace_base = replace_base
        self.batch_size = batch_size
        self.backbone_frozen = False
        self._saved_train_epochs: int | None = None
        self._warned_head = False

    # ------------------------------------------------------------------ callbacks
    def before_training(self, strategy, *args, **kwargs):
        self._check_model(strategy.model)
        schedule = getattr(strategy, "schedule", None)
        if getattr(schedule, "novel_epochs", 0) != 0:
            raise ValueError(
                f"PrototypeClassifierPlugin trains nothing after the base session, but the strategy's "
                f"schedule has novel_epochs={schedule.novel_epochs}; use a SessionSchedule with "
                f"novel_epochs=0 (create_strategy('prototype', ...) does)"
            )
        self._apply_freeze(strategy.model)

    def before_training_exp(self, strategy, *args, **kwargs):
        self._apply_freeze(strategy.model)
        if training_session(strategy) > 0 and getattr(strategy, "schedule", None) is None:
            if self._saved_train_epochs is None:
                self._saved_train_epochs = strategy.train_epochs
            strategy.train_epochs = 0

    def before_training_epoch(self, strategy, *args, **kwargs):
        if self.backbone_frozen:
            strategy.model.backbone.eval()

    def before_training_iteration(self, strategy, *args, **kwargs):
        if self.backbone_frozen:
            strategy.model.backbone.eval()

    def after_training_exp(self, strategy, *args, **kwargs):
        exp = strategy.experience
        model = strategy.model
        session = training_session(strategy)
        if session > 0 or self.replace_base:
            classes = sorted(int(c) for c in exp.classes_in_this_experience)
            means = class_mean_features(
                model, exp.dataset.eval(), classes, self.batch_size, strategy.device
            )
            model.set_class_weights(classes, F.normalize(means, dim=1))
        if session == 0 and self.freeze_after_base:
            self.backbone_frozen = True
            self._apply_freeze(model)
        if self._saved_train_epochs is not None:
            strategy.train_epochs = self._saved_train_epochs
            self._saved_train_epochs = None

    # ------------------------------------------------------------------- helpers
    def _apply_freeze(self, model: nn.Module) -> None:
        if self.backbone_frozen:
            model.backbone.requires_grad_(False)
            model.backbone.eval()

    def _check_model(self, model: nn.Module) -> None:
        missing = [
            a for a in ("backbone", "features", "set_class_weights") if not hasattr(model, a)
        ]
        if missing:
            raise TypeError(
                f"PrototypeClassifierPlugin needs an FSCILNet-like model; {type(model).__name__} "
                f"lacks {missing}"
            )
        if getattr(model, "head_type", "cosine") != "cosine" and not self._warned_head:
            self._warned_head = True
            warnings.warn(
                "PrototypeClassifierPlugin is meant for a cosine head (FSCILNet(head='cosine')); "
                "with a linear head prototype rows are not on the scale of trained rows",
                stacklevel=2,
            )

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Whether the backbone is frozen, and the ``train_epochs`` saved during a session."""
        return {
            "version": _STATE_VERSION,
            "backbone_frozen": self.backbone_frozen,
            "saved_train_epochs": self._saved_train_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the freeze is applied to the model at the next callback."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"unsupported PrototypeClassifierPlugin state version {state.get('version')!r}"
            )
        self.backbone_frozen = bool(state["backbone_frozen"])
        saved = state.get("saved_train_epochs")
        self._saved_train_epochs = None if saved is None else int(saved)
