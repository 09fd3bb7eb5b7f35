"""GRAM's gradient regulator: a learned map from a prompt's gradient to the update direction.

    reg = GradientRegulator({"ctx": 512, "vpt": 768})     # prompt name -> feature width
    p.grad = reg(name, p.grad)                            # identity until meta-trained

``mode="affine"`` (default; ours, after the paper's "affine scale-and-shift modulation"): a
small network reads the gradient's direction averaged over its tokens, ``u = mean(g) / rms``
(width ``W``), and outputs a scale ``a`` and a shift ``b`` (each ``(W,)``);
``psi(g) = g * (1 + a) + b * rms(g)`` for every token. The shift is scaled by the gradient's
RMS so the regulator is invariant to the loss scale.

``mode="gated"`` (SUPMER-style): ``h(g)`` is a network applied to each token's gradient,
rescaled to ``g``'s norm, and blended with the raw gradient by a learned gate,
``psi(g) = g + tanh(w) * (h(g) - g)``.

Both start as the identity: the last layer (affine) or the gate (gated) is zero, so an
untrained regulator returns the gradient unchanged, bit for bit.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

__all__ = ["GradientRegulator", "REGULATOR_MODES"]

REGULATOR_MODES = ("affine", "gated")


class _Affine(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 2 * width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, g: Tensor) -> Tensor:
        flat = g.reshape(-1, g.shape[-1])
        rms = flat.pow(2).mean().sqrt().clamp_min(1e-12)
        u = flat.mean(0) / rms
        a, b = self.net(u.to(self.net[0].weight.dtype)).to(g.dtype).chunk(2)
        return g * (1 + a) + b * rms


class _Gated(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, g: Tensor) -> Tensor:
        flat = g.reshape(-1, g.shape[-1])
        h = self.net(flat.to(self.net[0].weight.dtype)).to(g.dtype)
        h = h * (flat.norm() / h.norm().clamp_min(1e-12))
        return g + torch.tanh(self.gate) * (h.view_as(g) - g)


class GradientRegulator(nn.Module):
    """One regulator per prompt tensor.

    Args:
        widths: ``{prompt name: feature width W}`` (the last dimension of that prompt).
        mode: ``"affine"`` or ``"gated"`` (see the module docstring).
        hidden: hidden units of each regulator network.
    """

    def __init__(self, widths: Mapping[str, int], mode: str = "affine", hidden: int = 32):
        super().__init__()
        if mode not in REGULATOR_MODES:
            raise ValueError(f"GradientRegulator: mode={mode!r}; allowed: {', '.join(REGULATOR_MODES)}")
        if not widths:
            raise ValueError("GradientRegulator: widths is empty (no prompt to regulate)")
        if int(hidden) < 1:
            raise ValueError(f"GradientRegulator: hidden={hidden!r} must be >= 1")
        self.mode, self.hidden = mode, int(hidden)
        self.widths = {k: int(v) for k, v in widths.items()}
        cls = _Affine if mode == "affine" else _Gated
        self.maps = nn.ModuleDict({k.replace(".", "_"): cls(w, self.hidden) for k, w in self.widths.items()})

    def forward(self, name: str, grad: Tensor) -> Tensor:
        """The regulated gradient of prompt ``name`` (same shape as ``grad``, ``(..., W)``)."""
        key = name.replace(".", "_")
        if key not in self.maps:
            raise KeyError(f"GradientRegulator: no regulator for prompt {name!r}; has {sorted(self.widths)}")
        if grad.shape[-1] != self.widths[name]:
            raise ValueError(f"GradientRegulator: {name} gradient width {grad.shape[-1]} != {self.widths[name]}")
        return self.maps[key](grad)

    @torch.no_grad()
    def regulate_(self, prompts: nn.Module) -> None:
        """Replace, in place, the gradient of every prompt of ``prompts`` (a ``PromptedCLIP``:
        its parameters outside ``clip.``) by its regulated version; call after ``backward()``."""
        named = getattr(prompts, "named_prompt_parameters", None)
        for name, p in (named() if named else prompts.named_parameters()):
            if p.grad is not None and not name.startswith("clip."):
                p.grad.copy_(self(name, p.grad))

    def config(self) -> dict:
        """Constructor arguments (plain data): ``GradientRegulator(**reg.config())``."""
        return {"widths": dict(self.widths), "mode": self.mode, "hidden": self.hidden}
