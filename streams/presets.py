"""FSCIL presets on data available offline: Omniglot, Tiny ImageNet and scikit-learn's digits.

Each preset decodes once, caches the decoded ``uint8`` arrays (see
:func:`~avalanche_fscl.streams.data.cached_array`) and returns an
:class:`~avalanche_fscl.streams.FSCILScenario`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .data import (
    Compose,
    RandomCropFlip,
    TensorImageDataset,
    ToFloatNormalize,
    cached_array,
    dataset_folder,
    decode_images,
    file_fingerprint,
    require_files,
    resize_images,
)
from .registry import register_stream

if TYPE_CHECKING:  # the scenario module imports Avalanche: loaded when a preset runs
    from .fscil import FSCILScenario

__all__ = ["omniglot_fscil", "tiny_imagenet_fscil", "digits_fscil"]

TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# --------------------------------------------------------------------------- Omniglot


def _omniglot_source(root: Path) -> tuple[str, list[Path]]:
    """Which Omniglot layout ``root`` holds: ``("npz", files)`` or ``("folders", dirs)``."""
    npz = [root / "images_background.npz", root / "images_evaluation.npz"]
    if all(p.exists() for p in npz):
        return "npz", npz
    for base in (root / "omniglot-py", root):
        dirs = [base / "images_background", base / "images_evaluation"]
        if all(d.is_dir() for d in dirs):
            return "folders", dirs
    raise FileNotFoundError(
        f"data_root: no Omniglot data under {str(root)!r}: looked for "
        f"{npz[0]} + {npz[1]} (npz layout) and "
        f"{root / 'omniglot-py' / 'images_background'} (torchvision folder layout)"
    )


_OMNIGLOT_FILE = re.compile(r"^(\d{4})_(\d{2})\.png$")


def _omniglot_folder_index(folder: Path, first_id: int) -> tuple[list[Path], list[str]]:
    """Index a torchvision-layout split: PNG paths ordered (character, drawer) and names.

    Labels come from the official file names ``XXXX_YY.png`` (character id, drawer), so
    they agree with the npz layout: ``label = character_id - first_id``.
    """
    files: dict[tuple[int, int], Path] = {}
    names: dict[int, str] = {}
    for p in folder.glob("*/*/*.png"):
        m = _OMNIGLOT_FILE.match(p.name)
        if m:
            label, drawer = int(m.group(1)) - first_id, int(m.group(2)) - 1
            files[(label, drawer)] = p
            names[label] = f"{p.parent.parent.name} {p.parent.name}"
    n_chars = max((k[0] for k in files), default=-1) + 1
    missing = [(c, d) for c in range(n_chars) for d in range(20) if (c, d) not in files]
    if not files or missing:
        raise FileNotFoundError(
            f"data_root: Omniglot folder {folder} must hold 20 drawings XXXX_YY.png of every "
            f"character (missing (label, drawer): {missing[:5] if files else 'all'})"
        )
    return [files[(c, d)] for c in range(n_chars) for d in range(20)], [names[c] for c in range(n_chars)]


def _omniglot_arrays(root: Path, image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Background and evaluation images as ``uint8 (n_chars, 20, 1, S, S)``, ink = 255, + names."""
    kind, sources = _omniglot_source(root)
    if kind == "npz":
        key = f"omniglot_npz_{image_size}_{file_fingerprint(sources)}"
        tsv = root / "characters.tsv"
        rows = _read_tsv(tsv) if tsv.exists() else []
        names = [f"{r['alphabet']} {r['folder']}" for r in rows] or [f"character {i + 1}" for i in range(1623)]

        def load(split: int) -> np.ndarray:
            with np.load(sources[split], allow_pickle=False) as z:
                return _omniglot_resize(z["images"], image_size)

    else:
        index = [_omniglot_folder_index(sources[0], 1), _omniglot_folder_index(sources[1], 965)]
        key = f"omniglot_png_{image_size}_{file_fingerprint(index[0][0] + index[1][0])}"
        names = index[0][1] + index[1][1]

        def load(split: int) -> np.ndarray:
            paper = decode_images(index[split][0], channels=1) > 127  # True = paper, as in the npz
            return _omniglot_resize(paper.reshape(-1, 20, *paper.shape[-2:]), image_size)

    return cached_array(key + "_bg", lambda: load(0)), cached_array(key + "_ev", lambda: load(1)), names


def _omniglot_resize(background: np.ndarray, size: int) -> np.ndarray:
    """``bool (C, 20, 105, 105)`` with True = paper -> ``uint8 (C, 20, 1, size, size)``, ink = 255."""
    c, d, h, w = background.shape
    out = np.empty((c, d, 1, size, size), dtype=np.uint8)
    for i in range(0, c, 128):  # chunks keep the float copy small
        ink = torch.from_numpy(~background[i : i + 128]).float().view(-1, 1, h, w)
        if (h, w) != (size, size):
            ink = F.interpolate(ink, size=(size, size), mode="area")
        out[i : i + 128] = ink.mul(255).round().to(torch.uint8).view(-1, d, 1, size, size).numpy()
    return out


@register_stream("omniglot_fscil")
def omniglot_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    base_classes: int = 964,
    sessions: int = 10,
    ways: int = 10,
    shots: int = 5,
    image_size: int = 28,
    base_shots: int | None = None,
    heldout_classes: int | None = None,
    external_classes: int | None = None,
    validation: bool = False,
    seed: int = 0,
) -> FSCILScenario:
    """Omniglot FSCIL: 964 background characters, then 10 sessions of 10-way 5-shot.

    Protocol (defaults): the base session holds the 964 background characters (all 30
    background alphabets), drawers 0-14 for training (15 images per class) and drawers
    15-19 for test. Then ``sessions`` sessions of ``ways``-way ``shots``-shot over the first
    ``sessions * ways`` evaluation characters in label order (character id order); the
    shots are drawn by ``seed`` from drawers 0-14, test on drawers 15-19. ``base_classes``
    below 964 keeps the first background characters (quick runs).

    ``base_shots``: training images per base class (drawn by ``seed``; default all 15): with
    ``base_shots=shots`` every session is few-shot, the paper-style sequence of few-shot
    tasks.

    Images: ``1 x image_size x image_size`` (default 28), area-downsampled from 105x105,
    ink = 1 and paper = 0 (values in [0, 1], no mean/std normalisation), no augmentation.
    Class ids: background character ``i`` -> ``i``; evaluation character ``j`` ->
    ``base_classes + j``. Class names: ``"<alphabet> characterNN"``.

    Held-out pool (``scenario.heldout``, read by the ``heldout_fewshot`` column): the
    ``heldout_classes`` evaluation characters after the stream's (default ``None``: up to
    100, i.e. evaluation characters 100-199), all 20 drawers, labels ``0..heldout_classes-1``;
    0 for none.

    External retrieval corpus (``scenario.external``, e.g. RAML's memory): the
    ``external_classes`` evaluation characters after the novel and held-out ones (default
    ``None``: all of them, i.e. evaluation characters 200-658, 9,180 images), all 20
    drawers, labels ``0..external_classes-1``; 0 for none. No stream, test or held-out
    character is in it. With ``validation=True`` it is the same corpus.

    ``validation=True``: a protocol carved from the training split, for choosing
    hyper-parameters without touching a test image: background characters and drawers
    0-14 only. The last ``sessions * ways`` of the ``base_classes`` background characters
    become the novel classes (default: 864 base + 100 novel); drawers 0-9 train (shots drawn
    from them), drawers 10-14 test. Held-out pool: the ``heldout_classes`` background
    characters after ``base_classes`` (default ``None``: up to 100), drawers 0-14; none with
    the default 964 (every background character is in the protocol), so a held-out
    validation needs ``base_classes`` below 964 (e.g. the task sequence:
    ``base_classes=110, base_shots=5``: 10 + 100 stream characters, 100 held out).

    Data (``data_root/omniglot`` or ``data_root`` itself, default ``$AVALANCHE_FSCL_DATA``
    or ``../shared/data``): ``images_background.npz`` + ``images_evaluation.npz`` (+
    ``characters.tsv`` for names), or torchvision's Omniglot folder layout
    ``omniglot-py/images_{background,evaluation}/<alphabet>/characterNN/XXXX_YY.png``.
    """
    root = dataset_folder(data_root, "omniglot")
    bg, ev, names = _omniglot_arrays(root, image_size)
    if not 1 <= base_classes <= len(bg):
        raise ValueError(f"base_classes={base_classes}: allowed 1..{len(bg)} (background characters)")
    n_novel = sessions * ways
    tf = ToFloatNormalize([0.0], [1.0])

    def pool(chars: np.ndarray) -> TensorImageDataset:  # stored normalised: read without transforms
        return TensorImageDataset(
            torch.stack([tf(torch.from_numpy(x)) for x in chars.reshape(-1, 1, image_size, image_size)]),
            np.repeat(np.arange(len(chars)), chars.shape[1]),
        )

    # the external corpus starts after the test protocol's novel and held-out characters
    ext_start = n_novel + (max(0, min(100, len(ev) - n_novel)) if heldout_classes is None else heldout_classes)
    if external_classes is None:
        external_classes = max(0, len(ev) - ext_start)
    if external_classes < 0 or (external_classes and ext_start + external_classes > len(ev)):
        raise ValueError(
            f"external_classes={external_classes}: allowed 0..{max(0, len(ev) - ext_start)} (the evaluation "
            f"characters after {n_novel} novel + {ext_start - n_novel} held-out ones)"
        )
    external = (lambda: pool(ev[ext_start : ext_start + external_classes])) if external_classes else None
    heldout = None
    if validation:
        if n_novel >= base_classes:
            raise ValueError(
                f"validation=True: sessions={sessions} x ways={ways} = {n_novel} novel classes must be "
                f"fewer than base_classes={base_classes} (they are carved from the background characters)"
            )
        chars, split = bg[:base_classes], 10  # drawers 0-9 train, 10-14 test
        class_names = names[:base_classes]
        spare = len(bg) - base_classes  # background characters the protocol leaves out
        if heldout_classes is None:
            heldout_classes = min(100, spare)
        if not 0 <= heldout_classes <= spare:
            raise ValueError(
                f"validation=True: heldout_classes={heldout_classes}: allowed 0..{spare} (the background "
                f"characters after base_classes={base_classes})"
            )
        if heldout_classes:  # training drawers only: the real protocol's test drawers stay unread
            heldout = pool(bg[base_classes : base_classes + heldout_classes, :15])
        base_classes -= n_novel
    else:
        if heldout_classes is None:
            heldout_classes = max(0, min(100, len(ev) - n_novel))
        if n_novel + heldout_classes > len(ev):
            raise ValueError(
                f"sessions={sessions} x ways={ways} = {n_novel} novel classes + heldout_classes="
                f"{heldout_classes} but Omniglot has {len(ev)} evaluation characters"
            )
        chars, split = np.concatenate([bg[:base_classes], ev[:n_novel]]), 15  # (C, 20, 1, S, S)
        class_names = names[:base_classes] + names[len(bg) : len(bg) + n_novel]
        if heldout_classes:
            heldout = pool(ev[n_novel : n_novel + heldout_classes])
    n_test = 15 - split if validation else 5
    labels = np.repeat(np.arange(len(chars)), split), np.repeat(np.arange(len(chars)), n_test)
    train = TensorImageDataset(torch.from_numpy(chars[:, :split].reshape(-1, 1, image_size, image_size)), labels[0])
    test = TensorImageDataset(
        torch.from_numpy(chars[:, split : split + n_test].reshape(-1, 1, image_size, image_size)), labels[1]
    )
    from .fscil import fscil_benchmark  # Avalanche is imported when a stream is built

    return fscil_benchmark(
        train, test, base_classes=base_classes, ways=ways, shots=shots, sessions=sessions,
        seed=seed, class_names=class_names, eval_transform=tf, heldout=heldout, base_shots=base_shots,
        external=external,
    )


# --------------------------------------------------------------------- Tiny ImageNet


def _tiny_imagenet_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split (``"train_150pc"`` or ``"val"``) -> ``uint8 (N, 3, 64, 64)``, labels."""
    zpath, tsv = root / f"{split}.zip", root / f"{split}_labels.tsv"
    rows = _read_tsv(tsv)
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)

    def build() -> np.ndarray:
        with zipfile.ZipFile(zpath) as z:
            raw = [z.read(r["file"]) for r in rows]
        return decode_images(raw, size=64, channels=3)

    key = f"tiny_imagenet_{split}_{file_fingerprint([zpath, tsv])}"
    return cached_array(key, build), labels


@register_stream("tiny_imagenet_fscil")
def tiny_imagenet_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    base_classes: int = 100,
    sessions: int = 10,
    ways: int = 10,
    shots: int = 5,
    image_size: int = 64,
    augment: bool = True,
    heldout_per_class: int = 200,
    external_per_class: int = 500,
    validation: bool = False,
    seed: int = 0,
) -> FSCILScenario:
    """Tiny ImageNet FSCIL: 100 base classes (150 images each), then 10 sessions of 10-way 5-shot.

    Protocol (defaults): labels are positions in the sorted wnid list (torchvision
    ``ImageFolder`` order). The base session holds labels 0-99 with all 150 training
    images each; then ``sessions`` sessions of ``ways``-way ``shots``-shot over labels
    100-199 in order, shots drawn by ``seed``. Test: the 50 official validation images of
    every class seen.

    Images: ``3 x 64 x 64`` RGB (grey JPEGs converted), resized when ``image_size`` differs;
    normalised with Tiny ImageNet's mean/std; training augmentation (``augment=True``):
    random crop with 8-pixel zero padding + horizontal flip. Class names: the first WordNet
    synonym (``classes.tsv``).

    Data (``data_root/tiny_imagenet`` or ``data_root`` itself): ``train_150pc.zip`` +
    ``train_150pc_labels.tsv``, ``val.zip`` + ``val_labels.tsv``, ``classes.tsv`` (see the
    folder's README). Decoded once (about 10 s on 2 cores) and cached.

    Held-out pool (``scenario.heldout``, read by the ``heldout_fewshot`` column): the default
    protocol uses all 200 Tiny ImageNet classes, so the pool is another dataset: the first
    ``heldout_per_class`` CIFAR-10 *test* images of each of its 10 classes (from
    ``<data root>/cifar10_jpeg``; the CIFAR-10 training images stay free for other uses),
    resized to ``image_size`` and normalised with Tiny ImageNet's statistics; loaded on
    first use; ``None`` when that folder is absent or ``heldout_per_class=0``. Caveat: some
    CIFAR-10 categories are coarse versions of Tiny ImageNet classes (e.g. cat vs. tabby cat),
    so the pool is new *images and labels*, not unrelated concepts.

    External retrieval corpus (``scenario.external``, e.g. RAML's memory): the first
    ``external_per_class`` CIFAR-10 *training* images of each class (``train_1000pc.zip``;
    at most 1000), prepared like the held-out pool; no Tiny ImageNet image and no held-out
    image is in it (the same caveat on overlapping concepts applies). Loaded on first use;
    ``None`` when the folder is absent or ``external_per_class=0``; the same corpus with
    ``validation=True``.

    ``validation=True``: a protocol carved from the training split, for choosing
    hyper-parameters without touching a test image: the ``base_classes`` base classes' training
    images only, images 0-99 of each class to train and 100-149 to test. Their last
    ``n = min(sessions, base_classes // (2 * ways)) * ways`` classes become ``n / ways``
    novel sessions (default: 50 base + 5 sessions of 10-way). Its held-out pool: the first
    ``heldout_per_class // 10`` training images of each class the protocol leaves unused (labels
    ``base_classes``-199, relabelled from 0; 100 classes x 20 = 2,000 images by default, as many
    as the test protocol's CIFAR-10 pool), so that the held-out column can be validated too.
    """
    root = dataset_folder(data_root, "tiny_imagenet")
    require_files(
        root,
        ["train_150pc.zip", "train_150pc_labels.tsv", "val.zip", "val_labels.tsv", "classes.tsv"],
        "data_root",
    )
    names = [r["name"] for r in _read_tsv(root / "classes.tsv")]
    xtr, ytr = _tiny_imagenet_split(root, "train_150pc")
    xte, yte = _tiny_imagenet_split(root, "val")
    used = base_classes + sessions * ways
    if not 1 <= base_classes or used > len(names):
        raise ValueError(
            f"base_classes={base_classes} + sessions={sessions} x ways={ways} = {used} classes; "
            f"allowed at most {len(names)}"
        )
    if not 0 <= external_per_class <= 1000:
        raise ValueError(f"external_per_class={external_per_class}: allowed 0..1000 (CIFAR-10 train_1000pc)")
    norm = ToFloatNormalize(TINY_IMAGENET_MEAN, TINY_IMAGENET_STD)
    heldout = external = None
    cifar = dataset_folder(data_root, "cifar10_jpeg")
    if external_per_class and (cifar / "train_1000pc.zip").exists():
        external = lambda: _cifar10_pool(cifar, external_per_class, image_size, norm, split="train_1000pc")  # noqa: E731
    if validation:
        sessions = min(sessions, base_classes // (2 * ways))
        if sessions < 1:
            raise ValueError(f"validation=True needs base_classes >= 2 x ways; got base_classes={base_classes}, ways={ways}")
        keep = ytr < base_classes
        position = np.zeros(len(ytr), dtype=np.int64)  # index of each image within its class
        for c in np.unique(ytr):
            position[ytr == c] = np.arange(int((ytr == c).sum()))
        pool = (ytr >= base_classes) & (position < heldout_per_class // 10)
        if pool.any():
            hx, hy = xtr[pool], ytr[pool] - base_classes
            heldout = lambda: TensorImageDataset(  # noqa: E731
                torch.stack([norm(im) for im in resize_images(hx, image_size)]), hy)
        xte, yte = xtr[keep & (position >= 100)], ytr[keep & (position >= 100)]
        xtr, ytr = xtr[keep & (position < 100)], ytr[keep & (position < 100)]
        base_classes -= sessions * ways
    else:
        keep_tr, keep_te = ytr < used, yte < used
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
        if heldout_per_class and (cifar / "test.zip").exists():
            heldout = lambda: _cifar10_pool(cifar, heldout_per_class, image_size, norm)  # noqa: E731
    train = TensorImageDataset(resize_images(xtr, image_size), ytr)
    test = TensorImageDataset(resize_images(xte, image_size), yte)
    train_tf = Compose(RandomCropFlip(padding=image_size // 8), norm) if augment else norm
    from .fscil import fscil_benchmark  # Avalanche is imported when a stream is built

    return fscil_benchmark(
        train, test, base_classes=base_classes, ways=ways, shots=shots, sessions=sessions,
        seed=seed, class_names=names, train_transform=train_tf, eval_transform=norm, heldout=heldout,
        external=external,
    )


def _cifar10_pool(
    folder: Path, per_class: int, image_size: int, norm: ToFloatNormalize, split: str = "test"
) -> TensorImageDataset:
    """The first ``per_class`` CIFAR-10 images of each class of ``split`` (``"test"`` or
    ``"train_1000pc"``), normalised float tensors."""
    zpath, tsv = folder / f"{split}.zip", folder / f"{split}_labels.tsv"
    rows = sorted(_read_tsv(tsv), key=lambda r: r["file"])
    picked = [r for c in range(10) for r in [r for r in rows if int(r["label"]) == c][:per_class]]

    def build() -> np.ndarray:
        with zipfile.ZipFile(zpath) as z:
            return decode_images([z.read(r["file"]) for r in picked], size=32, channels=3)

    images = cached_array(f"cifar10_{split}_{per_class}_{file_fingerprint([zpath, tsv])}", build)
    x = resize_images(images, image_size)
    return TensorImageDataset(torch.stack([norm(im) for im in x]), [int(r["label"]) for r in picked])


# -------------------------------------------------------------------------- digits


@register_stream("digits_fscil")
def digits_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    base_classes: int = 4,
    sessions: int = 3,
    ways: int = 2,
    shots: int = 5,
    image_size: int = 8,
    seed: int = 0,
) -> FSCILScenario:
    """scikit-learn digits FSCIL (no data needed): 4 base classes, then 3 sessions of 2-way 5-shot.

    The embedded default stream: 1,797 real 8x8 handwritten digits bundled with
    scikit-learn. Fixed train/test split: a stratified 70/30 split with
    ``random_state=0`` (1,257 train / 540 test), independent of ``seed``. Base session:
    digits 0-3 with all their training images; sessions add digits 4-5, 6-7, 8-9 with
    ``shots`` images each (drawn by ``seed``); test on every test image of the classes seen.

    Images: ``1 x 8 x 8`` grey in [0, 1] (pixel / 16), bilinearly resized when
    ``image_size`` differs; no augmentation. Class names: ``"zero"`` .. ``"nine"``.
    ``data_root`` is accepted for a uniform preset signature and ignored.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = digits.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)
    train = TensorImageDataset(x[idx_tr], y[idx_tr])
    test = TensorImageDataset(x[idx_te], y[idx_te])
    from .fscil import fscil_benchmark  # Avalanche is imported when a stream is built

    return fscil_benchmark(
        train, test, base_classes=base_classes, ways=ways, shots=shots, sessions=sessions,
        seed=seed, class_names=DIGIT_NAMES, eval_transform=ToFloatNormalize([0.0], [1.0]),
    )
