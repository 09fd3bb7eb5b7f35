"""FSCILNet: a backbone plus a linear or cosine classifier over a fixed label space.

The output layer covers every class of the scenario from the start (FSCIL class ids are
contiguous and arrive in order), and logits of classes not seen yet are masked, so the
model never predicts a class it has not been trained on. Parameter shapes never change,
which keeps optimizers and ``state_dict`` checkpoints simple.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.models import DynamicModule
from torch import Tensor, nn

__all__ = ["FSCILNet", "MASK_VALUE"]

MASK_VALUE = -1e4  # logit of unseen classes: exp() underflows to 0, finite in fp16 and under KD


class FSCILNet(DynamicModule):
    """``backbone -> features (B, D) -> logits (B, n_classes)``.

    Args:
        backbone: module mapping images to ``(B, D)`` features; must expose ``out_dim = D``.
        n_classes: size of the label space (all sessions).
        head: ``"linear"`` (with bias) or ``"cosine"`` (``scale * cos(f, w)``, the
            prototype-friendly head of CEC-style FSCIL baselines).
        scale: temperature of the cosine head.

    ``active_classes`` (a buffer) holds how many class ids are live; logits of the others
    are set to ``MASK_VALUE``. Avalanche calls :meth:`adaptation` before each training
    experience, which grows it to cover ``experience.classes_seen_so_far``.
    """

    def __init__(self, backbone: nn.Module, n_classes: int, head: str = "linear", scale: float = 16.0):
        super().__init__()
        if head not in ("linear", "cosine"):
            raise ValueError(f"head={head!r}: allowed 'linear', 'cosine'")
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.backbone = backbone
        self.head_type = head
        self.scale = scale
        self.n_classes = n_classes
        dim = backbone.out_dim
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(n_classes)) if head == "linear" else None
        self.register_buffer("active_classes", torch.tensor(n_classes, dtype=torch.long))
        self._adapted = False  # before the first experience every class is live

    @property
    def out_dim(self) -> int:
        return self.weight.shape[1]

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(B, D)``."""
        return self.backbone(x)

    def logits(self, feats: Tensor) -> Tensor:
        """Class scores ``(B, n_classes)`` of features ``(B, D)``, unseen classes masked."""
        if self.head_type == "cosine":
            out = self.scale * F.linear(F.normalize(feats, dim=1), F.normalize(self.weight, dim=1))
        else:
            out = F.linear(feats, self.weight, self.bias)
        n = int(self.active_classes)
        if n < self.n_classes:
            out = torch.cat([out[:, :n], out.new_full((out.shape[0], self.n_classes - n), MASK_VALUE)], 1)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(x))

    def set_active_classes(self, n: int) -> None:
        """Make class ids ``0..n-1`` live."""
        if not 0 <= n <= self.n_classes:
            raise ValueError(f"active classes must be in 0..{self.n_classes}, got {n}")
        self.active_classes.fill_(n)

    def adaptation(self, experience) -> None:
        """Grow the live classes to the experience's classes seen so far (training only)."""
        seen = getattr(experience, "classes_seen_so_far", None)
        if self.training and seen:
            current = int(self.active_classes) if self._adapted else 0
            self.set_active_classes(max(current, max(seen) + 1))
            self._adapted = True

    @torch.no_grad()
    def set_class_weights(self, classes: list[int] | Tensor, weights: Tensor) -> None:
        """Overwrite the classifier rows of ``classes`` (e.g. with prototypes ``(K, D)``)."""
        idx = torch.as_tensor(classes, dtype=torch.long, device=self.weight.device)
        self.weight[idx] = weights.to(self.weight)
        if self.bias is not None:
            self.bias[idx] = 0.0
