"""Parameter importance estimates for consolidation penalties: Fisher, MAS and SI.

All return ``{name: tensor}`` (same shapes as the parameters, on their device, ``>= 0``)
for the parameters named in ``names``. Fisher and MAS make one extra pass over a dataset
with the model in eval mode (BatchNorm statistics untouched, no global RNG used); SI
accumulates during training (:class:`PathIntegral`).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ._features import _batches, eval_mode

__all__ = ["IMPORTANCE_ESTIMATORS", "dataset_importance", "PathIntegral"]

IMPORTANCE_ESTIMATORS = ("fisher", "mas", "si")


def dataset_importance(
    kind: str,
    model: nn.Module,
    dataset: Dataset,
    names: Iterable[str],
    batch_size: int,
    device: str | torch.device,
) -> dict[str, Tensor]:
    """Importance of ``names`` on ``dataset`` (items ``(x, y, ...)``, read in order).

    * ``"fisher"``: diagonal empirical Fisher, the mean over samples of the squared
      gradient of the cross-entropy of the true label (batch gradients, as EWC does);
    * ``"mas"``: Memory Aware Synapses, the mean absolute gradient of the squared L2 norm
      of the outputs (label-free).
    """
    if kind not in ("fisher", "mas"):
        raise ValueError(f"importance={kind!r}: a dataset pass computes 'fisher' or 'mas'")
    params = dict(model.named_parameters())
    names = list(names)
    out = {n: torch.zeros_like(params[n]) for n in names}
    count = 0
    with eval_mode(model):
        for x, y in _batches(dataset, batch_size, device):
            model.zero_grad(set_to_none=True)
            logits = model(x)
            if kind == "fisher":
                loss = F.cross_entropy(logits, y.long())
            else:
                loss = logits.pow(2).sum(dim=1).mean()
            grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    out[n] += (g.pow(2) if kind == "fisher" else g.abs()) * len(y)
            count += len(y)
    if count == 0:
        raise ValueError("dataset_importance: the dataset is empty")
    return {n: v / count for n, v in out.items()}


class PathIntegral:
    """Synaptic Intelligence (Zenke et al. 2017): importance from the training path.

    Call :meth:`start` before a session, :meth:`step_before` / :meth:`step_after` around
    each optimizer step (they read the gradient and the parameter change), and
    :meth:`finish` after the session: it returns ``w / ((delta)^2 + eps)`` per parameter,
    where ``w = -sum_t g_t * dtheta_t`` and ``delta`` is the session's total change.
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = eps
        self._start: dict[str, Tensor] = {}
        self._prev: dict[str, Tensor] = {}
        self._grad: dict[str, Tensor] = {}
        self.w: dict[str, Tensor] = {}

    def start(self, params: dict[str, Tensor]) -> None:
        self._start = {n: p.detach().clone() for n, p in params.items()}
        self.w = {n: torch.zeros_like(p) for n, p in params.items()}

    def step_before(self, params: dict[str, Tensor]) -> None:
        self._prev = {n: p.detach().clone() for n, p in params.items()}
        self._grad = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}

    def step_after(self, params: dict[str, Tensor]) -> None:
        for n, g in self._grad.items():
            self.w[n] -= g * (params[n].detach() - self._prev[n])

    def finish(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for n, p in params.items():
            delta = p.detach() - self._start[n]
            out[n] = (self.w[n] / (delta.pow(2) + self.eps)).clamp_min(0.0)
        self._start, self._prev, self._grad, self.w = {}, {}, {}, {}
        return out
