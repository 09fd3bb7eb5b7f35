"""Standard FSCIL presets on data that must be supplied locally: CIFAR-100, miniImageNet, CUB-200.

The three presets follow the TOPIC/CEC protocols. Each decodes its images once into a
``uint8`` array ``(N, 3, S, S)``, cached on disk (see
:func:`~avalanche_fscl.streams.data.cached_array`), and returns an
:class:`~avalanche_fscl.streams.FSCILScenario`. ``index_list_dir=`` reads the published
CEC/TOPIC index lists (``session_1.txt`` .. ``session_T.txt``), so the exact published
shots are used instead of shots drawn by ``seed``.
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

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

__all__ = ["cifar100_fscil", "mini_imagenet_fscil", "cub200_fscil"]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Matcher = Callable[[str], "int | None"]


# ------------------------------------------------------------------ shared helpers


def _locate(root: Path, layouts: Sequence[Sequence[str]], what: str) -> int:
    """Index of the first layout (relative paths under ``data_root``) whose files all exist.

    Raises ``FileNotFoundError`` naming ``data_root=`` and every path looked at.
    """
    for i, names in enumerate(layouts):
        if all((root / n).exists() for n in names):
            return i
    try:
        require_files(root, layouts[0], "data_root")
    except FileNotFoundError as e:
        others = " or ".join(", ".join(str(root / n) for n in names) for names in layouts[1:])
        also = f"; also looked for {others}" if others else ""
        raise FileNotFoundError(f"{e}{also} (no {what} found)") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _session_count(
    n_classes: int, base_classes: int, ways: int, sessions: int | None
) -> int | None:
    """Sessions (base included) the protocol asks for; ``None`` if the arguments are invalid.

    Invalid arguments are reported by :func:`fscil_benchmark` (it validates them first).
    """

    def ok(v: object, lo: int) -> bool:
        return isinstance(v, (int, np.integer)) and v >= lo

    if not (ok(base_classes, 1) and ok(ways, 1) and (sessions is None or ok(sessions, 0))):
        return None
    remaining = n_classes - base_classes
    if remaining < 0:
        return None
    if sessions is None:
        return None if remaining % ways else remaining // ways + 1
    return sessions + 1 if sessions * ways <= remaining else None


def _read_index_lists(index_list_dir: str | os.PathLike, n_lists: int, match: Matcher) -> list[list[int]]:
    """Read ``session_1.txt .. session_{n_lists}.txt`` (session_1 = base) -> training indices.

    Each non-empty line is turned into an index of the training set by ``match`` (``None``
    = no such training image). Returns one list per session, in file order.

    Raises:
        FileNotFoundError: a session file is missing (names every missing path).
        ValueError: a line matches no training image (names the dir, file and line).
    """
    folder = Path(index_list_dir).expanduser()
    files = [folder / f"session_{s}.txt" for s in range(1, n_lists + 1)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"index_list_dir={str(index_list_dir)!r}: missing {', '.join(missing)} (the "
            f"CEC/TOPIC index lists session_1.txt (base session) .. session_{n_lists}.txt)"
        )
    out: list[list[int]] = []
    for f in files:
        idx: list[int] = []
        for lineno, raw in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            i = match(line)
            if i is None:
                raise ValueError(
                    f"index_list_dir={str(index_list_dir)!r}: {f} line {lineno}: {line!r} "
                    "matches no training image"
                )
            idx.append(i)
        out.append(idx)
    return out


def _int_matcher(n_train: int) -> Matcher:
    """Lines are integer indices into a training set of ``n_train`` images."""

    def match(line: str) -> int | None:
        try:
            i = int(line)
        except ValueError:
            return None
        return i if 0 <= i < n_train else None

    return match


def _path_key(path: str, depth: int) -> str:
    return "/".join(PurePosixPath(path.replace("\\", "/")).parts[-depth:])


def _suffix_matcher(train_paths: Sequence[str], depth: int) -> Matcher:
    """Lines are image paths; matched on their last ``depth`` components."""
    lookup = {_path_key(p, depth): i for i, p in enumerate(train_paths)}
    return lambda line: lookup.get(_path_key(line, depth))


def _image_list_dataset(
    preset: str,
    split: str,
    paths: Sequence[Path],
    labels: Sequence[int],
    image_size: int,
    list_files: Sequence[Path],
    root: Path,
) -> TensorImageDataset:
    """Decode ``paths`` once (cached; key = preset, split, size, list-file fingerprint).

    Returns a dataset of ``uint8 (N, 3, image_size, image_size)`` images with ``labels``.
    """
    key = f"{preset}-{split}-{image_size}px-{file_fingerprint(list_files)}"

    def build() -> np.ndarray:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"data_root={str(root)!r}: {len(missing)} of the {len(paths)} {split} images listed "
                f"in {', '.join(map(str, list_files))} are missing, e.g. {missing[0]}"
            )
        return decode_images(list(paths), size=image_size, channels=3)

    return TensorImageDataset(torch.from_numpy(cached_array(key, build)), list(labels))


def _build(
    train: TensorImageDataset,
    test: TensorImageDataset,
    *,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    augment: bool,
    index_list_dir: str | os.PathLike | None,
    match: Callable[[], Matcher],
    base_classes: int,
    ways: int,
    shots: int,
    sessions: int | None,
    seed: int,
) -> FSCILScenario:
    """Transforms + index lists + :func:`fscil_benchmark` (class order = label order)."""
    norm = ToFloatNormalize(mean, std)
    train_tf = Compose(RandomCropFlip(padding=max(1, image_size // 8)), norm) if augment else norm
    shot_indices = None
    if index_list_dir is not None:
        n = _session_count(len(set(train.targets)), base_classes, ways, sessions)
        # [] when the protocol is invalid: fscil_benchmark reports the protocol error first.
        shot_indices = _read_index_lists(index_list_dir, n, match()) if n is not None else []
    from .fscil import fscil_benchmark  # Avalanche is imported when a stream is built

    return fscil_benchmark(
        train, test, base_classes=base_classes, ways=ways, shots=shots, sessions=sessions,
        seed=seed, shot_indices=shot_indices, class_names=list(class_names),
        train_transform=train_tf, eval_transform=norm,
    )


# ---------------------------------------------------------------------- CIFAR-100

_CIFAR_DIR = "cifar-100-python"
_CIFAR_FILES = ("train", "test", "meta")


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_split(folder: Path, split: str, image_size: int) -> TensorImageDataset:
    """One CIFAR-100 pickle -> ``uint8 (N, 3, S, S)`` images + fine labels (both cached)."""
    path = folder / split
    key = f"cifar100_fscil-{split}-{image_size}px-{file_fingerprint([path])}"
    raw: dict = {}

    def load() -> dict:
        if not raw:
            d = _unpickle(path)
            raw["x"] = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            raw["y"] = np.asarray(d[b"fine_labels"], dtype=np.int64)
        return raw

    labels = cached_array(key + "-labels", lambda: load()["y"])
    images = cached_array(key + "-images", lambda: resize_images(load()["x"], image_size).numpy())
    return TensorImageDataset(torch.from_numpy(images), labels.tolist())


@register_stream("cifar100_fscil")
def cifar100_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    index_list_dir: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    sessions: int | None = None,
    ways: int = 5,
    shots: int = 5,
    base_classes: int = 60,
    image_size: int = 32,
    augment: bool = True,
) -> FSCILScenario:
    """CIFAR-100 FSCIL (TOPIC/CEC): 60 base classes, then 8 sessions of 5-way 5-shot.

    Protocol (defaults): class order = label order 0..99. The base session holds classes
    0-59 with all 500 training images each (30,000); each of the 8 sessions adds the next 5
    classes with 5 training images each, drawn by ``seed`` or read from ``index_list_dir``.
    Test: the 100 official test images of every class seen so far.

    Images: ``3 x image_size x image_size`` (32 native; resized once, antialiased, when
    different); normalised with CIFAR-100's mean (0.5071, 0.4865, 0.4409) and std
    (0.2673, 0.2564, 0.2762). Training augmentation (``augment=True``): random crop with
    ``image_size // 8`` (4) pixels of zero padding + horizontal flip. Class names: the
    fine label names of ``meta`` with underscores -> spaces (``"aquarium fish"``).

    Data: the python-pickle release, ``data_root/cifar-100-python/{train,test,meta}`` (or
    ``data_root`` = the ``cifar-100-python`` folder itself). ``download=True`` fetches it with
    ``torchvision.datasets.CIFAR100(root, download=True)`` when missing (network needed).

    Index lists (``index_list_dir``): CEC's ``session_1.txt`` (base) .. ``session_9.txt``,
    one integer index into the training set per line.
    """
    root = dataset_folder(data_root, "cifar100")
    layouts = [[f"{_CIFAR_DIR}/{n}" for n in _CIFAR_FILES], list(_CIFAR_FILES)]
    if download and not any(all((root / n).exists() for n in names) for names in layouts):
        from torchvision.datasets import CIFAR100

        root.mkdir(parents=True, exist_ok=True)
        CIFAR100(str(root), train=True, download=True)  # the archive holds train, test and meta
    folder = root / _CIFAR_DIR if _locate(root, layouts, "CIFAR-100 python pickles") == 0 else root
    train = _cifar_split(folder, "train", image_size)
    test = _cifar_split(folder, "test", image_size)
    names = [n.decode("utf-8").replace("_", " ") for n in _unpickle(folder / "meta")[b"fine_label_names"]]
    return _build(
        train, test, class_names=names, mean=CIFAR100_MEAN, std=CIFAR100_STD,
        image_size=image_size, augment=augment, index_list_dir=index_list_dir,
        match=lambda: _int_matcher(len(train)), base_classes=base_classes, ways=ways,
        shots=shots, sessions=sessions, seed=seed,
    )


# ------------------------------------------------------------------ miniImageNet


def _read_split_csv(path: Path) -> list[tuple[str, str]]:
    """``filename,label`` rows (header skipped) -> ``[(filename, wnid), ...]``."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and rows[0][:2] == ["filename", "label"]:
        rows = rows[1:]
    bad = [r for r in rows if len(r) != 2]
    if bad or not rows:
        raise ValueError(f"{path}: expected a CSV 'filename,label' with one image per row, got {bad[:1] or 'no rows'}")
    return [(r[0], r[1]) for r in rows]


@register_stream("mini_imagenet_fscil")
def mini_imagenet_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    index_list_dir: str | os.PathLike | None = None,
    seed: int = 0,
    sessions: int | None = None,
    ways: int = 5,
    shots: int = 5,
    base_classes: int = 60,
    image_size: int = 84,
    augment: bool = True,
) -> FSCILScenario:
    """miniImageNet FSCIL (TOPIC/CEC): 60 base classes, then 8 sessions of 5-way 5-shot.

    Protocol (defaults): 100 classes; class order = order of first appearance of each wnid
    in ``train.csv`` (as CEC numbers them). The base session holds the first 60 classes
    with all their training images (500 each in the CEC split); each of the 8 sessions adds
    the next 5 classes with 5 training images each, drawn by ``seed`` or read from
    ``index_list_dir``. Test: every ``test.csv`` image (100 per class) of the classes seen.

    Images: ``3 x image_size x image_size`` (default 84; short side resized, antialiased,
    then centre-cropped), decoded once and cached; normalised with ImageNet mean
    (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225). Training augmentation
    (``augment=True``): random crop with ``image_size // 8`` pixels of zero padding +
    horizontal flip. Class names: the wnids (``"n01532829"``).

    Data (CEC/TOPIC layout): ``data_root/images/<filename>.jpg`` and the split CSVs
    ``data_root/split/{train,test}.csv`` (or ``data_root/{train,test}.csv``), header
    ``filename,label`` with ``label`` a wnid.

    Index lists (``index_list_dir``): CEC's ``session_1.txt`` .. ``session_9.txt``, one
    image path per line (``MINI-ImageNet/train/n01532829/n0153282900000005.jpg``), matched
    to ``train.csv`` by file name.
    """
    root = dataset_folder(data_root, "mini_imagenet")
    layouts = [["images", "split/train.csv", "split/test.csv"], ["images", "train.csv", "test.csv"]]
    csv_dir = root / "split" if _locate(root, layouts, "miniImageNet") == 0 else root
    train_csv, test_csv = csv_dir / "train.csv", csv_dir / "test.csv"
    train_rows, test_rows = _read_split_csv(train_csv), _read_split_csv(test_csv)
    wnids = list(dict.fromkeys(w for _, w in train_rows))
    label_of = {w: i for i, w in enumerate(wnids)}
    unknown = sorted({w for _, w in test_rows} - set(label_of))
    if unknown:
        raise ValueError(f"{test_csv}: wnids {unknown[:5]} do not appear in {train_csv}")

    def dataset(split: str, rows: list[tuple[str, str]], list_file: Path) -> TensorImageDataset:
        paths = [root / "images" / f for f, _ in rows]
        labels = [label_of[w] for _, w in rows]
        return _image_list_dataset("mini_imagenet_fscil", split, paths, labels, image_size, [list_file], root)

    train = dataset("train", train_rows, train_csv)
    test = dataset("test", test_rows, test_csv)
    return _build(
        train, test, class_names=wnids, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        image_size=image_size, augment=augment, index_list_dir=index_list_dir,
        match=lambda: _suffix_matcher([f for f, _ in train_rows], depth=1),
        base_classes=base_classes, ways=ways, shots=shots, sessions=sessions, seed=seed,
    )


# ------------------------------------------------------------------------ CUB-200

_CUB_DIR = "CUB_200_2011"
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")


def _read_id_table(path: Path) -> dict[int, str]:
    """``"<id> <value>"`` lines -> ``{id: value}``."""
    out: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path} line {lineno}: expected '<id> <value>', got {line!r}")
        out[int(parts[0])] = parts[1].strip()
    return out


def _cub_class_name(folder_name: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``."""
    head, _, tail = folder_name.partition(".")
    return (tail if head.isdigit() and tail else folder_name).replace("_", " ")


@register_stream("cub200_fscil")
def cub200_fscil(
    data_root: str | os.PathLike | None = None,
    *,
    index_list_dir: str | os.PathLike | None = None,
    seed: int = 0,
    sessions: int | None = None,
    ways: int = 10,
    shots: int = 5,
    base_classes: int = 100,
    image_size: int = 224,
    augment: bool = True,
) -> FSCILScenario:
    """CUB-200-2011 FSCIL (TOPIC/CEC): 100 base classes, then 10 sessions of 10-way 5-shot.

    Protocol (defaults): 200 bird species; class order = label order (``classes.txt`` ids
    1..200 -> 0..199). The base session holds classes 0-99 with all their training images
    (official ``train_test_split.txt``, about 30 per class); each of the 10 sessions adds
    the next 10 classes with 5 training images each, drawn by ``seed`` or read from
    ``index_list_dir``. Test: every official test image of the classes seen so far.

    Images: ``3 x image_size x image_size`` (default 224; short side resized, antialiased,
    then centre-cropped), decoded once and cached; normalised with ImageNet mean
    (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225). Training augmentation
    (``augment=True``): random crop with ``image_size // 8`` pixels of zero padding +
    horizontal flip. Class names from ``classes.txt``
    (``001.Black_footed_Albatross`` -> ``"Black footed Albatross"``).

    Data (official release): ``data_root/CUB_200_2011/{images.txt, image_class_labels.txt,
    train_test_split.txt, classes.txt, images/<class folder>/<file>.jpg}`` (or ``data_root`` =
    the ``CUB_200_2011`` folder itself).

    Index lists (``index_list_dir``): CEC's ``session_1.txt`` .. ``session_11.txt``, one
    image path per line (``CUB_200_2011/images/001.Black_footed_Albatross/xxx.jpg``),
    matched to the training images by ``<class folder>/<file>``.
    """
    root = dataset_folder(data_root, "cub200")
    layouts = [[f"{_CUB_DIR}/{n}" for n in _CUB_FILES], list(_CUB_FILES)]
    folder = root / _CUB_DIR if _locate(root, layouts, "CUB-200-2011") == 0 else root
    lists = [folder / n for n in _CUB_FILES[:4]]
    images, labels, is_train, classes = (_read_id_table(p) for p in lists)
    ids = sorted(images)
    lacking = [p for p, t in zip(lists[1:3], (labels, is_train)) if set(t) != set(ids)]
    if lacking:
        raise ValueError(f"{lacking[0]} does not list the same image ids as {lists[0]}")
    class_ids = sorted(classes)
    names = [_cub_class_name(classes[c]) for c in class_ids]
    label_of = {c: i for i, c in enumerate(class_ids)}  # 1-based ids -> 0-based labels
    bad = sorted({labels[i] for i in ids if not labels[i].isdigit() or int(labels[i]) not in label_of})
    if bad:
        raise ValueError(f"{lists[1]}: class ids {bad[:5]} are not in {lists[3]}")

    def dataset(split: str, flag: str) -> tuple[TensorImageDataset, list[str]]:
        chosen = [i for i in ids if is_train[i] == flag]
        rel = [images[i] for i in chosen]
        paths = [folder / "images" / r for r in rel]
        y = [label_of[int(labels[i])] for i in chosen]
        return _image_list_dataset("cub200_fscil", split, paths, y, image_size, lists[:3], root), rel

    train, train_rel = dataset("train", "1")
    test, _ = dataset("test", "0")
    return _build(
        train, test, class_names=names, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        image_size=image_size, augment=augment, index_list_dir=index_list_dir,
        match=lambda: _suffix_matcher(train_rel, depth=2),
        base_classes=base_classes, ways=ways, shots=shots, sessions=sessions, seed=seed,
    )
