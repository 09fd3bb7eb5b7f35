"""ResNet-12 and ResNet-18 backbones for few-shot class-incremental learning, trained from scratch.

Both map ``(B, C, H, W)`` images to ``(B, out_dim)`` features by global average pooling;
``out_dim`` is the last width. No pretrained weights are downloaded.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ResNet12", "ResNet18"]


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]


# ---------------------------------------------------------------------------------------------
# ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019): the standard few-shot backbone


class Res12Block(nn.Module):
    """Three conv3x3-BN-LeakyReLU(0.1) (last activation after the residual sum),
    a 1x1 conv-BN shortcut, then 2x2 max-pool (``ceil_mode``) and dropout."""

    def __init__(self, c_in: int, c_out: int, drop_rate: float = 0.0):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1, inplace=True)  # noqa: E731
        self.body = nn.Sequential(*conv_bn(c_in, c_out), act(), *conv_bn(c_out, c_out), act(), *conv_bn(c_out, c_out))
        self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, kernel=1))
        self.act = act()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.pool(self.act(self.body(x) + self.shortcut(x))))


class ResNet12(nn.Module):
    """Four residual blocks, each halving the resolution, then global average pooling.

    Args:
        in_channels: image channels.
        widths: channels of the four blocks (64-160-320-640 is the usual ~12.4M-parameter net).
        drop_rate: dropout after every block (0 disables it).

    Works for 84x84, 64x64 and 32x32 inputs (and smaller: ``ceil_mode`` pooling never reaches 0x0).
    Shapes: ``(B, in_channels, H, W)`` -> ``(B, widths[-1])``; ``out_dim == widths[-1]``.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640), drop_rate: float = 0.0):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet12 needs 4 widths, got {tuple(widths)}")
        chans = (in_channels, *widths)
        self.blocks = nn.Sequential(*(Res12Block(chans[i], chans[i + 1], drop_rate) for i in range(4)))
        self.out_dim = widths[-1]
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(x), 1), 1)


# ---------------------------------------------------------------------------------------------
# ResNet-18 (He et al., 2016) with BasicBlocks and a CIFAR or ImageNet stem


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity (or 1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, c_out, stride=stride), nn.ReLU(inplace=True), *conv_bn(c_out, c_out))
        same = stride == 1 and c_in == c_out
        self.shortcut = nn.Identity() if same else nn.Sequential(*conv_bn(c_in, c_out, kernel=1, stride=stride))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


STEMS = {
    # 32x32 inputs (CIFAR-100 FSCIL, the CEC/FACT convention): keep the resolution
    "cifar": lambda c_in, c_out: nn.Sequential(*conv_bn(c_in, c_out, 3), nn.ReLU(inplace=True)),
    # 84x84 and larger (miniImageNet, CUB): /4 before the first stage
    "imagenet": lambda c_in, c_out: nn.Sequential(
        *conv_bn(c_in, c_out, 7, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1)
    ),
}


class ResNet18(nn.Module):
    """Stem, four stages of two BasicBlocks (strides 1, 2, 2, 2), global average pooling.

    Args:
        in_channels: image channels.
        widths: channels of the four stages (64-128-256-512 is the usual ~11.2M-parameter net).
        stem: ``"cifar"`` (3x3 conv, stride 1, no max-pool; for 32x32 inputs) or
            ``"imagenet"`` (7x7 conv stride 2 + 3x3 max-pool stride 2; for 84x84 and larger).

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, widths[-1])``; ``out_dim == widths[-1]``.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512), stem: str = "cifar"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem={stem!r}: allowed {', '.join(map(repr, STEMS))}")
        if len(widths) != 4:
            raise ValueError(f"ResNet18 needs 4 widths, got {tuple(widths)}")
        self.stem = STEMS[stem](in_channels, widths[0])
        layers, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            layers += [BasicBlock(c_in, c_out, stride=1 if i == 0 else 2), BasicBlock(c_out, c_out)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.out_dim = widths[-1]
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, BatchNorm at weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
