"""open_clip models by name: real architectures (``ViT-B-32``, ...) and this project's small ones.

    model, preprocess, tokenizer = load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    model, preprocess, tokenizer = load_clip("fscl-vit-p8-64", pretrained="clip_vit_p8_64.pt")

The project's configs live in ``models/clip_configs/*.json`` (open_clip's own format) and are
registered with open_clip on import of this module, so ``open_clip.create_model`` knows them
too. ``pretrained`` is an open_clip tag (downloads from the HF hub, impossible on machines
without internet), a local checkpoint file (open_clip's ``.pt``/``.bin``/``.safetensors``, or a
file written by ``avalanche-fscl pretrain-clip``) or ``None`` (random weights).

Batches are tensors: :func:`clip_image_transform` turns ``uint8`` or ``[0, 1]`` float images
``(N, C, H, W)`` into the model's input (resize, RGB, CLIP normalisation), on any device.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CLIP_CONFIG_DIR",
    "KEPT_CLIP_DIR",
    "kept_clip_checkpoints",
    "kept_clip_path",
    "PRECISIONS",
    "CHECKPOINT_STORAGES",
    "load_clip",
    "names_a_file",
    "list_clip_models",
    "project_clip_models",
    "clip_image_transform",
    "clip_image_size",
    "encode_class_names",
    "save_clip_checkpoint",
    "CLIPImageEncoder",
    "FeatureCache",
    "FEATURE_CACHE",
]

CLIP_CONFIG_DIR = Path(__file__).with_name("clip_configs")
#: the project's kept checkpoints: ``<model name>.pt`` is ``load_clip(name, pretrained="fscl")``,
#: ``<model name>.<variant>.pt`` is ``load_clip(name, pretrained="fscl:<variant>")``
KEPT_CLIP_DIR = Path(__file__).with_name("clip_weights")
PRECISIONS = ("fp32", "bf16", "fp16", "amp", "amp_bf16", "pure_bf16", "pure_fp16")
_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CLIP_CONFIG_DIR)
        _registered = True


def project_clip_models() -> list[str]:
    """Names of this project's small open_clip configs (``models/clip_configs``)."""
    return sorted(p.stem for p in CLIP_CONFIG_DIR.glob("*.json"))


def kept_clip_checkpoints(model_name: str | None = None) -> dict[str, Path]:
    """The kept checkpoints as ``{"<model name> <tag>": path}`` (tag ``fscl`` or ``fscl:<variant>``),
    of every architecture or only ``model_name``'s."""
    out = {}
    for p in sorted(KEPT_CLIP_DIR.glob("*.pt")):
        stem = p.stem
        for name in project_clip_models():
            if stem == name or stem.startswith(name + "."):
                variant = stem[len(name) + 1:]
                if model_name in (None, name):
                    out[f"{name} {'fscl:' + variant if variant else 'fscl'}"] = p
                break
    return out


def kept_clip_path(model_name: str, pretrained: str | os.PathLike | None) -> Path | None:
    """The kept file that ``pretrained`` names for ``model_name`` (``"fscl"`` or ``"fscl:<variant>"``),
    or ``None`` when ``pretrained`` is not such a tag. A missing kept file raises ``FileNotFoundError``
    listing the kept ones."""
    if not isinstance(pretrained, str) or not (pretrained == "fscl" or pretrained.startswith("fscl:")):
        return None
    variant = pretrained[len("fscl:"):] if pretrained != "fscl" else ""
    if pretrained != "fscl" and not re.fullmatch(r"[A-Za-z0-9_-]+", variant):
        raise ValueError(f"load_clip: pretrained={pretrained!r}: a variant is letters, digits, '_' and '-', e.g. 'fscl:color80'")
    path = KEPT_CLIP_DIR / (f"{model_name}.{variant}.pt" if variant else f"{model_name}.pt")
    if not path.is_file():
        kept = ", ".join(kept_clip_checkpoints()) or "none"
        raise FileNotFoundError(
            f"load_clip: pretrained={pretrained!r}: no kept checkpoint of {model_name!r} (kept: {kept}); "
            "train one with `avalanche-fscl pretrain-clip` and pass its final.pt")
    return path


def list_clip_models() -> list[str]:
    """Every architecture :func:`load_clip` accepts: open_clip's configs and the project's."""
    _register()
    import open_clip

    return list(open_clip.list_models())


CHECKPOINT_STORAGES = ("fp32", "fp16", "int8")


def save_clip_checkpoint(
    path: str | os.PathLike, model: nn.Module, model_name: str, storage: str = "fp32", **meta: Any
) -> None:
    """Write ``{"model_name", "state_dict", **meta}`` atomically; :func:`load_clip` reads it back
    into the model's dtype and refuses it for another architecture.

    Args:
        storage: how float tensors are stored (one of :data:`CHECKPOINT_STORAGES`): ``"fp32"``;
            ``"fp16"`` (half the file); ``"int8"`` (about a quarter of fp32: every float matrix of at least
            4,096 entries as int8 with one fp32 scale per output row, i.e. per row of dim 0 --
            symmetric, scale = row's max |w| / 127, so the error per weight is at most scale / 2;
            smaller tensors, norms and biases in fp16). Quantized tensors are kept out of
            ``"state_dict"`` (under ``"int8_weights"`` and ``"int8_scales"``), so loading the file
            without :func:`load_clip` fails on missing keys instead of reading int8 as weights.
    """
    from ..streams.data import atomic_path

    if storage not in CHECKPOINT_STORAGES:
        raise ValueError(f"save_clip_checkpoint: storage={storage!r}; allowed: {', '.join(CHECKPOINT_STORAGES)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    quantized: dict[str, Tensor] = {}
    scales: dict[str, Tensor] = {}
    if storage != "fp32":
        for k, v in state.items():
            if not v.is_floating_point():
                continue
            if storage == "int8" and v.dim() >= 2 and v.numel() >= 4096:
                rows = v.float().reshape(v.shape[0], -1)
                scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127
                quantized[k] = torch.round(rows / scale[:, None]).to(torch.int8).reshape(v.shape)
                scales[k] = scale
            else:
                state[k] = v.half()
    if quantized:
        state = {k: v for k, v in state.items() if k not in quantized}
        meta.update(int8_weights=quantized, int8_scales=scales)
    with atomic_path(path) as tmp:
        torch.save({"model_name": model_name, "state_dict": state, **meta}, tmp)


def _dequantize(ckpt: dict) -> dict[str, Tensor]:
    """The float32 tensors of :func:`save_clip_checkpoint`'s ``storage="int8"``."""
    return {
        k: (q.float().reshape(q.shape[0], -1) * ckpt["int8_scales"][k].float()[:, None]).reshape(q.shape)
        for k, q in ckpt["int8_weights"].items()
    }


def names_a_file(pretrained: str | os.PathLike) -> bool:
    """Whether a ``pretrained`` value is meant as a checkpoint path (not an open_clip tag)."""
    return os.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors"))


def _load_local(model: nn.Module, model_name: str, path: Path) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "model_name" in ckpt and ckpt["model_name"] != model_name:
        raise ValueError(
            f"load_clip: pretrained={str(path)!r} is a checkpoint of architecture {ckpt['model_name']!r}, "
            f"not model_name={model_name!r}"
        )
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if isinstance(ckpt, dict) and ckpt.get("int8_weights"):
        state = {**state, **_dequantize(ckpt)}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(
            f"load_clip: pretrained={str(path)!r} does not fit architecture {model_name!r} "
            f"({' '.join(first[:3])[:400]})"
        ) from None


def load_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool | None = None,
    **model_kwargs: Any,
) -> tuple[nn.Module, Callable, Callable[[str | Sequence[str]], Tensor]]:
    """Build an open_clip model -> ``(model, preprocess, tokenizer)``, in eval mode on ``device``.

    Args:
        model_name: an open_clip architecture (``ViT-B-32``, ``ViT-B-16``, ...) or one of
            :func:`project_clip_models`; unknown names raise ``ValueError`` listing the allowed ones.
        pretrained: ``None`` (random init), an open_clip pretrained tag, ``"fscl"`` (the
            project's kept checkpoint, ``models/clip_weights/<model_name>.pt``), ``"fscl:<variant>"``
            (another kept checkpoint of the architecture, ``<model_name>.<variant>.pt``; see
            :func:`kept_clip_checkpoints`), or a local
            checkpoint path (open_clip formats or :func:`save_clip_checkpoint`'s). A checkpoint
            of another architecture raises ``ValueError``.
        device: where the model lives.
        precision: open_clip's precision (one of :data:`PRECISIONS`); ``"fp32"`` keeps fp32
            weights (use autocast for mixed precision).
        channels_last: keep the image tower's weights in ``torch.channels_last`` layout, so its
            convolutions run in that layout (same outputs up to float rounding). ``None``
            (default): on for convolutional towers (more than one ``Conv2d``, e.g. the
            ModifiedResNet of ``RN50`` or ``fscl-rn-64``), where it is faster (``fscl-rn-64-w32``,
            one Intel Xeon thread, batch 256 at 64 px: 0.70 s instead of 0.95 s per forward;
            a training step 0.69 s instead of 0.85 s in bf16); off for a ViT (one convolution,
            its patch embedding: no measurable difference).
        **model_kwargs: passed to ``open_clip.create_model`` (e.g. ``force_patch_dropout=0``).

    Returns: the model; open_clip's eval transform for PIL images; a tokenizer that maps text
    to ``int64`` tokens ``(N, context_length)`` with the model's own context length.
    """
    _register()
    import open_clip

    names = open_clip.list_models()
    if model_name not in names:
        raise ValueError(f"load_clip: unknown model_name={model_name!r}; allowed: {', '.join(names)}")
    if precision not in PRECISIONS:
        raise ValueError(f"load_clip: precision={precision!r}; allowed: {', '.join(PRECISIONS)}")
    local = None
    pretrained = kept_clip_path(model_name, pretrained) or pretrained  # "fscl[:variant]": a kept file
    if pretrained is not None:
        p = Path(pretrained).expanduser()
        if p.is_file():
            local = p
        elif names_a_file(pretrained):
            raise FileNotFoundError(f"load_clip: pretrained={str(pretrained)!r}: no such checkpoint file")
        else:
            tags = open_clip.list_pretrained_tags_by_model(model_name)
            if str(pretrained) not in tags:
                raise ValueError(
                    f"load_clip: pretrained={str(pretrained)!r} is neither a file nor a tag of {model_name!r} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
    class _Quiet(logging.Filter):  # the weights come from our file below, not "initialized randomly"
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith("No pretrained weights loaded")

    quiet = _Quiet()
    root = logging.getLogger()
    with contextlib.ExitStack() as stack:
        if local is not None:
            root.addFilter(quiet)
            stack.callback(root.removeFilter, quiet)
        model = open_clip.create_model(
            model_name,
            pretrained=None if local is not None else (str(pretrained) if pretrained is not None else None),
            precision=precision,
            device="cpu",
            **model_kwargs,
        )
    if local is not None:
        _load_local(model, model_name, local)
    if channels_last is None:
        channels_last = sum(isinstance(m, nn.Conv2d) for m in model.visual.modules()) > 1
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)
    model = model.to(device).eval()
    preprocess = open_clip.image_transform(
        clip_image_size(model), is_train=False,
        mean=getattr(model.visual, "image_mean", None), std=getattr(model.visual, "image_std", None),
    )
    tokenizer = open_clip.get_tokenizer(model_name, context_length=model.context_length)
    return model, preprocess, tokenizer


def clip_image_size(model: nn.Module) -> int:
    """Side of the square input image of ``model``'s visual tower, in pixels."""
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def clip_image_transform(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """A tensor transform for ``model``: ``uint8 [0, 255]`` or float ``[0, 1]`` images
    ``(N, C, H, W)`` or ``(C, H, W)`` (C = 1 or 3) -> float ``(N, 3, S, S)`` normalised with the
    model's mean/std, S = :func:`clip_image_size` (bicubic, antialiased)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = clip_image_size(model)
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD).view(1, 3, 1, 1)

    def transform(x: Tensor) -> Tensor:
        single = x.dim() == 3
        x = x[None] if single else x
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        x = (x - mean.to(x.device)) / std.to(x.device)
        return x[0] if single else x

    return transform


@torch.no_grad()
def encode_class_names(
    model: nn.Module,
    tokenizer: Callable,
    class_names: Sequence[str],
    templates: Sequence[str] = ("a photo of a {c}.",),
    batch_size: int = 256,
) -> Tensor:
    """Zero-shot classifier weights: L2-normalised mean over ``templates`` (``{c}`` = the class
    name) of the normalised text embeddings -> ``(len(class_names), embed_dim)`` float32."""
    if not class_names:
        raise ValueError("encode_class_names: class_names is empty")
    device = next(model.parameters()).device
    texts = [t.replace("{c}", n).replace("{}", n) for n in class_names for t in templates]
    out = []
    for i in range(0, len(texts), batch_size):
        out.append(model.encode_text(tokenizer(texts[i : i + batch_size]).to(device), normalize=True).float())
    emb = torch.cat(out).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


class FeatureCache:
    """A bounded, content-addressed memo of frozen image towers' outputs (LRU).

    An entry is keyed by the tower's weights (a BLAKE2b digest of every parameter and buffer,
    recomputed only when a tensor is replaced or modified in place), the device type, the autocast
    state, the input's shape and dtype, and a BLAKE2b-128 digest of the input row's bytes: it is
    reused only for bit-identical inputs to bit-identical weights. Hashing costs ~50 us per
    64 px image on one CPU core, far below a ViT forward; a continual stream evaluates every test
    image once per session, so a frozen tower's evaluation mostly becomes lookups. Memory:
    ``4 * D`` bytes plus ~150 bytes of bookkeeping per entry (~1.2 KB for a 256-d feature).

    Args:
        max_entries: entries kept (least recently used dropped first); ``0`` disables caching.
        device_types: where inputs are cached (default CPU only: on a GPU the tower is usually
            faster than copying its input to the host and hashing it).
    """

    def __init__(self, max_entries: int = 250_000, device_types: Sequence[str] = ("cpu",)):
        if max_entries < 0:
            raise ValueError(f"FeatureCache: max_entries must be >= 0, got {max_entries}")
        self.max_entries = int(max_entries)
        self.device_types = tuple(device_types)
        self._store: OrderedDict[tuple[bytes, bytes], Tensor] = OrderedDict()
        self._digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    # a cache is not model state: copies of a model share it, pickles carry it empty
    def __deepcopy__(self, memo: dict) -> "FeatureCache":
        return self

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries, "device_types": self.device_types}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"], state.get("device_types", ("cpu",)))

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    @staticmethod
    def row_digests(x: Tensor) -> list[bytes]:
        """BLAKE2b-128 digest of each row of ``x`` (``(B, ...)``, any dtype/device)."""
        rows = x.detach().to("cpu").contiguous().reshape(len(x), -1).view(torch.uint8).numpy()
        return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in rows]

    def _weights_digest(self, tower: nn.Module) -> bytes:
        tensors = list(tower.named_parameters()) + list(tower.named_buffers())
        # cheap state: a tensor replaced (.to(), .half()) or written in place (load_state_dict)
        state = tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for _, t in tensors)
        memo = self._digests.get(tower)
        if memo is None or memo[0] != state:
            h = hashlib.blake2b(digest_size=16)
            for name, t in tensors:
                h.update(name.encode())
                h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            memo = (state, h.digest())
            self._digests[tower] = memo
        return memo[1]

    def features(self, tower: nn.Module, x: Tensor, compute: Callable[[Tensor], Tensor]) -> Tensor:
        """``compute(x)`` (the frozen ``tower``'s features ``(B, D)`` of inputs ``(B, ...)``)
        with rows seen before reused and new rows stored."""
        dev = x.device.type
        if self.max_entries == 0 or dev not in self.device_types:
            return compute(x)
        amp = torch.is_autocast_enabled(dev) and str(torch.get_autocast_dtype(dev))
        key = self._weights_digest(tower) + repr((dev, amp, tuple(x.shape[1:]), str(x.dtype))).encode()
        digests = self.row_digests(x)
        found = [self._store.get((key, d)) for d in digests]
        todo = [i for i, f in enumerate(found) if f is None]
        self.hits += len(x) - len(todo)
        self.misses += len(todo)
        if todo:
            new = compute(x[todo] if len(todo) < len(x) else x)
            for j, i in enumerate(todo):
                found[i] = new[j].clone()
                self._store[(key, digests[i])] = found[i]
        for d in digests:
            if (key, d) in self._store:
                self._store.move_to_end((key, d))
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return torch.stack(found)


#: the process-wide cache of CLIPImageEncoder and PromptedCLIP (the runs of one suite share features)
FEATURE_CACHE = FeatureCache()


class CLIPImageEncoder(nn.Module):
    """A frozen CLIP image tower as a feature backbone: images ``(B, C, H, W)`` -> unit-norm
    features ``(B, out_dim)`` (e.g. under :class:`~avalanche_fscl.models.FSCILNet`).

    Args:
        model: an open_clip model (only ``model.visual`` is kept).
        input_transform: maps the caller's images to the CLIP's input (default:
            :func:`clip_image_transform`, for pixels in ``[0, 1]`` or ``uint8``).
        feature_cache: a :class:`FeatureCache` reusing features of inputs seen before (the
            process-wide one by default; ``None``: compute every time). The same numbers
            either way (the tower is frozen and deterministic) up to float rounding: a cached
            row was computed in another batch, and batched matmuls round by batch shape.

    The weights never train: ``requires_grad`` is off, the tower stays in eval mode (no patch
    dropout) and features are computed without a graph.
    """

    def __init__(self, model: nn.Module, input_transform: Callable[[Tensor], Tensor] | None = None,
                 feature_cache: FeatureCache | None = FEATURE_CACHE):
        super().__init__()
        self.visual = model.visual
        self.input_transform = input_transform or clip_image_transform(model)
        self.feature_cache = feature_cache
        for p in self.visual.parameters():
            p.requires_grad_(False)
        out = getattr(self.visual, "output_dim", None)
        self.out_dim = int(out if out is not None else model.text_projection.shape[1])

    def train(self, mode: bool = True) -> "CLIPImageEncoder":
        super().train(mode)
        self.visual.eval()
        return self

    def _encode(self, x: Tensor) -> Tensor:
        return F.normalize(self.visual(x).float(), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            x = self.input_transform(x)
            if self.feature_cache is None:
                return self._encode(x)
            return self.feature_cache.features(self.visual, x, self._encode)
