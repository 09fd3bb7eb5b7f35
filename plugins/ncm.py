"""Nearest-class-mean classification over L2-normalised features (iCaRL's NCM)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor

from ..models.classifier import MASK_VALUE
from ._features import EvalFeatureCapture, class_mean_features
from .replay import ClassBalancedReplayPlugin

__all__ = ["NCMClassifierPlugin"]

_STATE_VERSION = 1
_SOURCES = ("memory", "data")


class NCMClassifierPlugin(SupervisedPlugin):
    """Replace the model's evaluation outputs by nearest-class-mean scores.

    Class means are the normalised mean of the L2-normalised features
    ``strategy.model.features(x)`` (model in eval mode, no grad, batched; inputs with eval
    transforms). They are updated after each training experience:

    * ``source="data"``: the means of the experience's classes from all its training
      samples; earlier classes keep their means.
    * ``source="memory"`` (iCaRL): the current classes from all their training samples and
      every earlier class recomputed with the current model from the samples stored by
      ``replay`` (a :class:`ClassBalancedReplayPlugin`, which must be attached to the same
      strategy). A class that the memory does not hold (replay attached late) keeps its
      earlier mean.

    At evaluation (``after_eval_forward``) ``strategy.mb_output`` becomes
    ``scale * cos(f, mean_c)`` for every class with a mean and ``MASK_VALUE`` for the
    others (same width as the model's output), so accuracy/loss metrics and the FSCIL
    metrics score the NCM prediction. Training is unaffected (the model trains with its own
    head). Before the first experience is finished the model's outputs are left as they
    are. The features are captured during the strategy's own forward (when the model's
    ``forward`` calls ``self.features``), so evaluation costs no extra forward pass;
    otherwise they are recomputed from ``strategy.mb_x``.

    Args:
        source: ``"memory"`` (needs ``replay``) or ``"data"``.
        replay: the replay plugin whose memory provides the exemplars of earlier classes.
        scale: multiplier of the cosine similarities (affects the loss metric only).
        batch_size: batch size of the feature extraction.

    Attributes:
        means: ``(n_classes_seen, D)`` normalised class means (row = class id), or ``None``.
        known: ``(n_classes_seen,)`` bool, rows holding a mean.
    """

    def __init__(
        self,
        source: str = "memory",
        replay: ClassBalancedReplayPlugin | None = None,
        scale: float = 16.0,
        batch_size: int = 256,
    ):
        super().__init__()
        if source not in _SOURCES:
            raise ValueError(f"source={source!r}: allowed {_SOURCES}")
        if source == "memory" and replay is None:
            raise ValueError(
                "source='memory' recomputes the old classes' means from a replay memory: pass "
                "replay=ClassBalancedReplayPlugin(...) (also in the strategy's plugins), or use "
                "source='data'"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.source = source
        self.replay = replay
        self.scale = float(scale)
        self.batch_size = batch_size
        self.means: Tensor | None = None
        self.known: Tensor | None = None
        self._capture = EvalFeatureCapture()

    # ------------------------------------------------------------------ callbacks
    def after_training_exp(self, strategy, *args, **kwargs):
        exp = strategy.experience
        model, device = strategy.model, strategy.device
        current = sorted(int(c) for c in exp.classes_in_this_experience)
        updates = {}
        means = class_mean_features(
            model, exp.dataset.eval(), current, self.batch_size, device, normalize_features=True
        )
        updates.update(zip(current, means))
        if self.source == "memory":
            old = [c for c in self.replay.memory_classes() if c not in updates]
            if old:
                means = class_mean_features(
                    model,
                    self.replay.memory_dataset(),
                    old,
                    self.batch_size,
                    device,
                    normalize_features=True,
                )
                updates.update(zip(old, means))
        self._set_means(updates, device)

    def before_eval_forward(self, strategy, *args, **kwargs):
        if self.means is not None:
            self._capture.start(strategy.model)

    def after_eval_forward(self, strategy, *args, **kwargs):
        if self.means is None:
            return
        feats = self._capture.stop(strategy.model, strategy.mb_x)
        strategy.mb_output = self.scores(feats, strategy.mb_output.shape[1])

    def after_eval(self, strategy, *args, **kwargs):
        self._capture.stop()

    # ------------------------------------------------------------------- helpers
    def scores(self, feats: Tensor, width: int | None = None) -> Tensor:
        """``scale * cos(feats, means)`` ``(B, width)``; classes without a mean get ``MASK_VALUE``."""
        assert self.means is not None and self.known is not None
        if self.means.device != feats.device:
            self.means, self.known = self.means.to(feats.device), self.known.to(feats.device)
        n = self.means.shape[0]
        width = n if width is None else max(width, n)
        sims = self.scale * F.normalize(feats, dim=1) @ self.means.to(feats.dtype).T
        sims = sims.masked_fill(~self.known, MASK_VALUE)
        out = sims.new_full((feats.shape[0], width), MASK_VALUE)
        out[:, :n] = sims
        return out

    def _set_means(self, updates: dict[int, Tensor], device) -> None:
        n_new = max(updates) + 1
        dim = next(iter(updates.values())).shape[0]
        if self.means is None:
            self.means = torch.zeros(n_new, dim, device=device)
            self.known = torch.zeros(n_new, dtype=torch.bool, device=device)
        else:
            self.means, self.known = self.means.to(device), self.known.to(device)
            if n_new > self.means.shape[0]:
                extra = n_new - self.means.shape[0]
                self.means = torch.cat([self.means, self.means.new_zeros(extra, dim)])
                self.known = torch.cat([self.known, self.known.new_zeros(extra)])
        idx = torch.tensor(sorted(updates), device=device)
        rows = torch.stack([updates[c] for c in sorted(updates)]).to(self.means)
        self.means[idx] = F.normalize(rows, dim=1)
        self.known[idx] = True

    # ---------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The class means and their validity mask (CPU copies)."""
        return {
            "version": _STATE_VERSION,
            "means": None if self.means is None else self.means.detach().cpu().clone(),
            "known": None if self.known is None else self.known.cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (moved to the features' device when first used)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported NCMClassifierPlugin state version {state.get('version')!r}")
        means, known = state["means"], state["known"]
        self.means = None if means is None else means.clone()
        self.known = None if known is None else known.bool().clone()
