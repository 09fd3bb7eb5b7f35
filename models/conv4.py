"""Conv4: the four-block convolutional backbone of few-shot learning (Vinyals et al., 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Conv4"]


class Conv4(nn.Module):
    """Four blocks of conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, then global average pooling.

    Pooling uses ``ceil_mode`` so small inputs (8x8 digits) shrink to 1x1 instead of 0x0.

    Args:
        in_channels: image channels (1 for Omniglot/digits, 3 for RGB).
        hidden: channels of every block.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, hidden)``; ``out_dim == hidden``.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64):
        super().__init__()
        blocks = []
        for i in range(4):
            blocks += [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.out_dim = hidden

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
