"""Backbones, the backbone registry and FSCILNet (shapes, masking, adaptation, learning)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from avalanche_fscl.models import (
    BACKBONES,
    MASK_VALUE,
    Conv4,
    FSCILNet,
    ResNet12,
    ResNet18,
    create_backbone,
    default_backbone_for,
    list_backbones,
)

TINY = (8, 16, 16, 32)  # widths that keep the ResNet forward passes cheap


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------
# backbones and registry


def test_exports():
    import avalanche_fscl.models as models

    assert set(models.__all__) == {
        "Conv4", "FSCILNet", "MASK_VALUE", "ResNet12", "ResNet18",
        "BACKBONES", "create_backbone", "list_backbones", "default_backbone_for",
        "MultiViewFusionHead", "FUSIONS",
        "load_clip", "list_clip_models", "project_clip_models", "clip_image_transform", "encode_class_names",
        "save_clip_checkpoint", "CLIPImageEncoder", "FeatureCache", "PromptedCLIP", "GradientRegulator", "GRAMMetaConfig", "meta_train_gram",
        "load_gram_checkpoint", "AUTOCAST_DTYPES", "autocast_context", "check_autocast", "fastest_autocast",
    }  # fmt: skip
    for name in models.__all__:
        assert hasattr(models, name)


# (name, overrides, in_channels, sizes, expected out_dim)
CASES = [
    ("conv4", {}, 1, (8, 28), 64),
    ("conv4_small", {}, 1, (8, 28), 32),
    ("resnet12", {"widths": TINY}, 3, (32, 64, 84), 32),
    ("resnet12_small", {}, 3, (32, 64, 84), 256),
    ("resnet18", {"widths": TINY}, 3, (32, 64), 32),
    ("resnet18", {"widths": TINY, "stem": "imagenet"}, 3, (84,), 32),
    ("resnet18_cifar", {"widths": TINY}, 3, (32, 64), 32),
    ("resnet18_imagenet", {"widths": TINY}, 3, (64, 84), 32),
    ("resnet18_small", {}, 3, (32, 64), 256),
]


def test_cases_cover_registry():
    assert {c[0] for c in CASES} == set(BACKBONES) == set(list_backbones())


@pytest.mark.parametrize("name,overrides,in_ch,sizes,dim", CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_backbone_shapes(name, overrides, in_ch, sizes, dim):
    model = create_backbone(name, in_channels=in_ch, **overrides)
    assert model.out_dim == dim
    model.eval()
    with torch.no_grad():
        for s in sizes:
            out = model(torch.randn(2, in_ch, s, s))
            assert out.shape == (2, dim), (name, s)
            assert torch.isfinite(out).all()


def test_full_width_resnet12_forward_84():
    model = create_backbone("resnet12").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 84, 84)).shape == (2, 640)


def test_registry_constructors_match_create_backbone():
    for name, ctor in BACKBONES.items():
        kw = {} if name.startswith("conv4") else {"widths": TINY}  # cheap to build
        a, b = ctor(in_channels=3, **kw), create_backbone(name, in_channels=3, **kw)
        assert type(a) is type(b) and n_params(a) == n_params(b), name
    small = BACKBONES["resnet18_small"](in_channels=3)
    assert small.out_dim == 256 and n_params(small) == n_params(create_backbone("resnet18_small"))


def test_parameter_counts_and_full_out_dim():
    r12, r18c, r18i = (create_backbone(n) for n in ("resnet12", "resnet18_cifar", "resnet18_imagenet"))
    assert (r12.out_dim, r18c.out_dim, r18i.out_dim) == (640, 512, 512)
    assert 12.2e6 < n_params(r12) < 12.6e6  # 12,424,320
    assert 11.0e6 < n_params(r18c) < 11.3e6  # 11,168,832
    assert 11.0e6 < n_params(r18i) < 11.3e6  # 11,176,512 (7x7 stem)
    assert create_backbone("conv4").out_dim == 64
    assert n_params(create_backbone("resnet12_small")) < 2.5e6
    assert n_params(create_backbone("resnet18_small")) < 3.0e6
    assert n_params(create_backbone("conv4_small")) < n_params(create_backbone("conv4"))


def test_resnet18_stems_differ():
    cifar, imnet = create_backbone("resnet18", widths=TINY), create_backbone("resnet18", widths=TINY, stem="imagenet")
    assert isinstance(cifar.stem[0], nn.Conv2d) and cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.stem)
    assert imnet.stem[0].kernel_size == (7, 7) and imnet.stem[0].stride == (2, 2)
    assert any(isinstance(m, nn.MaxPool2d) for m in imnet.stem)
    assert create_backbone("resnet18_cifar", widths=TINY).stem[0].kernel_size == (3, 3)
    assert create_backbone("resnet18_imagenet", widths=TINY).stem[0].kernel_size == (7, 7)


def test_direct_construction_and_overrides():
    assert ResNet12(in_channels=1, widths=TINY, drop_rate=0.1).out_dim == 32
    assert ResNet18(in_channels=1, widths=TINY, stem="imagenet").out_dim == 32
    assert create_backbone("conv4", in_channels=1, hidden=16).out_dim == 16
    m = create_backbone("resnet12_small", drop_rate=0.2)
    assert any(isinstance(x, nn.Dropout) and x.p == 0.2 for x in m.modules())
    assert isinstance(create_backbone("conv4"), Conv4)


def test_registry_errors():
    with pytest.raises(ValueError) as e:
        create_backbone("resnet50")
    assert "resnet50" in str(e.value)
    for name in BACKBONES:
        assert name in str(e.value)
    with pytest.raises(TypeError) as e:
        create_backbone("resnet12", foo=1)
    assert "foo" in str(e.value) and "widths" in str(e.value)
    with pytest.raises(TypeError, match="stem"):
        create_backbone("conv4", stem="cifar")
    with pytest.raises(ValueError, match="'cifar'.*'imagenet'"):
        create_backbone("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="4 widths"):
        create_backbone("resnet12", widths=(8, 16))


def test_list_backbones():
    desc = list_backbones()
    assert list(desc) == list(BACKBONES)
    assert all(isinstance(d, str) and d and "\n" not in d for d in desc.values())
    assert "CPU" in desc["resnet12_small"] and "CPU" in desc["resnet18_small"]


@pytest.mark.parametrize(
    "size,ch,name",
    [
        (8, 1, "conv4"), (28, 1, "conv4"), (32, 1, "conv4"),
        (32, 3, "resnet18_cifar"), (64, 3, "resnet12"), (84, 3, "resnet12"),
        (128, 3, "resnet18_imagenet"), (224, 3, "resnet18_imagenet"),
    ],  # fmt: skip
)
def test_default_backbone_for(size, ch, name):
    assert default_backbone_for(size, ch) == name
    assert name in BACKBONES


def test_default_backbone_for_invalid():
    with pytest.raises(ValueError):
        default_backbone_for(0, 3)


# ------------------------------------------------------------------------------------------
# FSCILNet


@pytest.mark.parametrize("head", ["linear", "cosine"])
@pytest.mark.parametrize("name,in_ch,size", [("conv4_small", 1, 28), ("resnet12_small", 3, 32), ("resnet18_small", 3, 32)])
def test_fscilnet_with_registry_backbone(name, in_ch, size, head):
    net = FSCILNet(create_backbone(name, in_channels=in_ch), n_classes=10, head=head)
    out = net(torch.randn(2, in_ch, size, size))
    assert out.shape == (2, 10)
    assert net.out_dim == net.backbone.out_dim
    out.sum().backward()
    assert net.weight.grad is not None


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_fscilnet_masking(head):
    net = FSCILNet(create_backbone("conv4_small", in_channels=1), n_classes=10, head=head).eval()
    with torch.no_grad():
        net.weight[7:] *= 1e3  # the masked classes would win without the mask
    net.set_active_classes(6)
    with torch.no_grad():
        out = net(torch.randn(4, 1, 8, 8))
    assert torch.all(out[:, 6:] == MASK_VALUE)
    assert torch.all(out[:, :6] > MASK_VALUE)
    assert (out.argmax(1) < 6).all()
    with pytest.raises(ValueError):
        net.set_active_classes(11)


def test_fscilnet_adaptation_train_vs_eval():
    net = FSCILNet(create_backbone("conv4_small", in_channels=1), n_classes=10)
    assert int(net.active_classes) == 10  # before any experience every class is live
    net.eval()
    net.adaptation(SimpleNamespace(classes_seen_so_far=[0, 1, 2]))
    assert int(net.active_classes) == 10
    net.train()
    net.adaptation(SimpleNamespace(classes_seen_so_far=[0, 1, 2, 3, 4]))
    assert int(net.active_classes) == 5
    net.adaptation(SimpleNamespace(classes_seen_so_far=[0, 1, 2, 3, 4, 5, 6]))
    assert int(net.active_classes) == 7
    net.eval()
    net.adaptation(SimpleNamespace(classes_seen_so_far=list(range(10))))
    assert int(net.active_classes) == 7
    net.train()
    net.adaptation(SimpleNamespace(classes_seen_so_far=[]))
    assert int(net.active_classes) == 7


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_set_class_weights(head):
    net = FSCILNet(create_backbone("conv4_small", in_channels=1), n_classes=6, head=head)
    before = net.weight.detach().clone()
    protos = torch.randn(2, net.out_dim)
    net.set_class_weights([1, 4], protos)
    assert torch.equal(net.weight[[1, 4]].detach(), protos)
    keep = [0, 2, 3, 5]
    assert torch.equal(net.weight[keep].detach(), before[keep])
    if head == "linear":
        assert torch.all(net.bias[[1, 4]] == 0)


def quadrant_data(n_per_class: int = 16, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ``k`` lights up quadrant ``k`` of a noisy ``1 x size x size`` image."""
    g = torch.Generator().manual_seed(0)
    h = size // 2
    y = torch.arange(4).repeat_interleave(n_per_class)
    x = 0.3 * torch.randn(len(y), 1, size, size, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 2)
        x[i, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += 1.0
    return x, y


def test_conv4_small_learns_quadrants():
    x, y = quadrant_data()
    net = FSCILNet(create_backbone("conv4_small", in_channels=1), n_classes=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, (acc, loss.item())


def test_autocast_by_name():
    from avalanche_fscl.models import AUTOCAST_DTYPES, autocast_context, check_autocast

    assert set(AUTOCAST_DTYPES) == {None, "bf16", "fp16"}
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast_context("cpu", None):
        assert (a @ b).dtype == torch.float32
    with autocast_context(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    assert (a @ b).dtype == torch.float32, "the context ends"
    with pytest.raises(ValueError, match=r"autocast='bfloat16'; allowed: None, 'bf16', 'fp16'"):
        autocast_context("cpu", "bfloat16")
    with pytest.raises(ValueError, match=r"meta_autocast='fp16'; allowed: None, 'bf16'$"):
        check_autocast("fp16", "meta_autocast", (None, "bf16"))
    assert check_autocast("bf16") == "bf16"


def test_fastest_autocast_times_each_candidate_after_a_warm_up_and_keeps_the_fastest():
    import time as _time

    from avalanche_fscl.models import fastest_autocast

    calls = []

    def step(autocast):
        calls.append(autocast)
        # the first call of each candidate is slow (a warm-up); afterwards bf16 is the faster
        _time.sleep(0.05 if calls.count(autocast) == 1 else {None: 0.02, "bf16": 0.005}[autocast])

    best, times = fastest_autocast(step, (None, "bf16"), repeats=3)
    assert calls == [None] * 3 + ["bf16"] * 3
    assert best == "bf16" and set(times) == {"fp32", "bf16"}
    assert 0.02 <= times["fp32"] < 0.05 and 0.005 <= times["bf16"] < 0.02, "the warm-up run is not counted"
    with pytest.raises(ValueError, match=r"repeats=1 must be >= 2"):
        fastest_autocast(step, repeats=1)
    with pytest.raises(ValueError, match=r"candidates='fp8'; allowed"):
        fastest_autocast(step, (None, "fp8"))
