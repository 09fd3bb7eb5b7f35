"""In-memory image datasets, tensor transforms and the on-disk decode cache.

Every preset decodes its images once into a ``uint8`` tensor ``(N, C, H, W)`` (cached on
disk as ``.npy``), so epochs never touch JPEG/PNG decoding. Transforms work on single
tensors and are small picklable classes (DataLoader workers and ``deepcopy`` need that).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

DATA_ENV = "AVALANCHE_FSCL_DATA"
CACHE_ENV = "AVALANCHE_FSCL_CACHE"
DEFAULT_DATA_ROOT = "../shared/data"

__all__ = [
    "TensorImageDataset",
    "ToFloatNormalize",
    "RandomCropFlip",
    "resolve_data_root",
    "dataset_folder",
    "cache_dir",
    "cached_array",
    "atomic_path",
    "decode_images",
    "resize_images",
    "dataset_targets",
]


class TensorImageDataset(Dataset):
    """Samples held in memory as one tensor, with integer class labels.

    Args:
        data: ``(N, C, H, W)`` images, ``uint8`` (0-255) or float (any ``(N, ...)`` works).
        targets: ``(N,)`` integer class labels.
    """

    def __init__(self, data: Tensor, targets: Tensor | Sequence[int]):
        targets = torch.as_tensor(targets, dtype=torch.long)
        if data.ndim < 1:
            raise ValueError(f"data must be (N, ...), got shape {tuple(data.shape)}")
        if len(data) != len(targets):
            raise ValueError(f"data has {len(data)} items but targets has {len(targets)}")
        self.data = data
        # Avalanche reads `.targets` (a list keeps its DataAttribute fast and hashable).
        self.targets: list[int] = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.data[i], self.targets[i]


class ToFloatNormalize:
    """``uint8`` (0-255) or float tensor ``(C, H, W)`` -> normalised ``float32``.

    Args:
        mean, std: per-channel statistics of the [0, 1]-scaled images.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ToFloatNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomCropFlip:
    """Training augmentation on ``(C, H, W)`` tensors: zero-padded random crop + h-flip.

    Args:
        padding: pixels of zero padding before cropping back to the input size.
        flip: whether to flip horizontally with probability 0.5.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding = padding
        self.flip = flip

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.padding > 0:
            p = self.padding
            x = torch.nn.functional.pad(x, (p, p, p, p))
            i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = x[..., i : i + h, j : j + w]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


class Compose:
    """Apply tensor transforms in order (picklable, unlike a lambda)."""

    def __init__(self, *transforms: Callable[[Tensor], Tensor]):
        self.transforms = transforms

    def __call__(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose{self.transforms!r}"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The folder holding the shared datasets.

    Order: the ``data_root`` argument, then ``$AVALANCHE_FSCL_DATA``, then
    ``../shared/data`` relative to the working directory.
    """
    if data_root is None:
        data_root = os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT
    return Path(data_root).expanduser()


def dataset_folder(data_root: str | os.PathLike | None, name: str) -> Path:
    """``<root>/<name>`` when that folder exists, else ``<root>`` itself.

    ``<root>`` is :func:`resolve_data_root` of ``data_root``, so a preset accepts both the
    shared data folder (holding one sub-folder per dataset) and the dataset folder itself.
    """
    root = resolve_data_root(data_root)
    return root / name if (root / name).is_dir() else root


def require_files(folder: Path, names: Sequence[str], argument: str) -> None:
    """Raise ``FileNotFoundError`` naming the argument and every path looked at."""
    missing = [str(folder / n) for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{argument}={str(folder)!r}: missing {', '.join(missing)} "
            f"(set {argument}= or ${DATA_ENV} to the folder that holds the data)"
        )


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$AVALANCHE_FSCL_CACHE`` or ``~/.cache/avalanche_fscl``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "avalanche_fscl")


def file_fingerprint(paths: Sequence[Path]) -> str:
    """Cheap content key for source files: names, sizes and modification times."""
    h = hashlib.sha1()
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


_MEMORY_CACHE: dict[str, np.ndarray] = {}


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: restore at once
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    A killed process never leaves a half-written file under the final name. The file gets
    the permissions of any file the user creates (``0o666`` minus the umask, e.g. 0644),
    not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_array(key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
    """Return ``build()``, memoised in this process and cached on disk as ``<key>.npy``.

    The disk write is atomic; an unwritable cache folder only disables the disk cache.
    """
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = cache_dir() / f"{key}.npy"
    if path.exists():
        arr = np.load(path, allow_pickle=False)
    else:
        arr = build()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)  # a file object: np.save adds no suffix
        except OSError:
            pass
    _MEMORY_CACHE[key] = arr
    return arr


def resize_images(images: np.ndarray | Tensor, size: int) -> Tensor:
    """``uint8 (N, C, H, W)`` -> ``uint8 (N, C, size, size)``, antialiased bilinear, in chunks.

    Returns the input (as a tensor, no copy) when it already has that size.
    """
    t = torch.as_tensor(images)
    if tuple(t.shape[-2:]) == (size, size):
        return t
    out = [
        F.interpolate(t[i : i + 1024].float(), size=(size, size), mode="bilinear", antialias=True)
        .round_().clamp_(0, 255).to(torch.uint8)
        for i in range(0, len(t), 1024)
    ]
    return torch.cat(out)


def decode_images(
    sources: Sequence[bytes | str | os.PathLike],
    size: int | None = None,
    channels: int = 3,
    workers: int | None = None,
) -> np.ndarray:
    """Decode image files (paths or raw bytes) into one ``uint8`` array ``(N, C, size, size)``.

    Images are converted to ``channels`` (3 = RGB, 1 = grey), then, if ``size`` is given
    and differs, resized on the short side (bicubic, antialiased) and centre-cropped to
    ``size x size``. Decoding runs in a thread pool (Pillow releases the GIL while decoding).
    """
    from concurrent.futures import ThreadPoolExecutor
    from io import BytesIO

    from PIL import Image

    if not sources:
        raise ValueError("decode_images: no images to decode")
    mode = {3: "RGB", 1: "L"}[channels]

    def one(src) -> np.ndarray:
        with Image.open(BytesIO(src) if isinstance(src, (bytes, bytearray)) else src) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size, size):
                w, h = img.size
                scale = size / min(w, h)
                img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(one, sources, chunksize=256)))


def dataset_targets(dataset: Any) -> np.ndarray:
    """Integer labels of a classification dataset, as an ``int64`` array ``(N,)``.

    Accepts anything with ``.targets`` (torchvision datasets, Avalanche datasets,
    :class:`~avalanche_fscl.streams.TensorImageDataset`).
    """
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise ValueError(
            f"dataset of type {type(dataset).__name__} has no `.targets`; wrap it in "
            "avalanche_fscl.streams.TensorImageDataset or give it a `.targets` list of labels"
        )
    if isinstance(targets, torch.Tensor):
        return targets.detach().cpu().numpy().astype(np.int64)
    return np.asarray(list(targets), dtype=np.int64)
