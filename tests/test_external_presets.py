"""CIFAR-100, miniImageNet and CUB-200 FSCIL presets on small fake trees in the real layouts."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avalanche_fscl.streams import data as data_mod
from avalanche_fscl.streams import external
from avalanche_fscl.streams.external import cifar100_fscil, cub200_fscil, mini_imagenet_fscil
from avalanche_fscl.streams.registry import list_streams

CIFAR_TRAIN, CIFAR_TEST = 6, 2  # images per class in the fake CIFAR-100 / miniImageNet
CUB_TRAIN, CUB_TEST = 5, 1  # images per class in the fake CUB (200 classes)
RED = (200, 40, 120)  # the known solid-colour image of every fake tree


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALANCHE_FSCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod, "_MEMORY_CACHE", {})


def _normalised(rgb, mean, std) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(mean)) / torch.tensor(std)


def _eval_pixel(scenario, original_index: int) -> torch.Tensor:
    """Centre pixel (C,) of a training image, by its index in the original train set, eval transform."""
    pos = scenario.shot_indices[0].index(original_index)
    x, y, t = scenario.train_stream[0].dataset.eval()[pos]
    return x[:, x.shape[1] // 2, x.shape[2] // 2]


def _write_jpeg(path: Path, rgb, size=(20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(v) for v in rgb)).save(path, quality=95)


def _check_protocol(scenario, *, n_sessions, base, ways, shots, train_per_class, test_per_class):
    assert scenario.n_sessions == n_sessions
    assert len(scenario.train_stream) == len(scenario.test_stream) == n_sessions
    n_train = [len(e.dataset) for e in scenario.train_stream]
    n_test = [len(e.dataset) for e in scenario.test_stream]
    assert n_train == [base * train_per_class] + [ways * shots] * (n_sessions - 1)
    assert n_test == [base * test_per_class] + [ways * test_per_class] * (n_sessions - 1)
    assert scenario.session_classes[1] == list(range(base, base + ways))


# -------------------------------------------------------------------------- CIFAR-100


def _cifar_labels(per_class: int) -> list[int]:
    return [c for _ in range(per_class) for c in range(100)]  # interleaved, like the real file


def _make_cifar(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, per_class in [("train", CIFAR_TRAIN), ("test", CIFAR_TEST)]:
        labels = _cifar_labels(per_class)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        if split == "train":
            data[7] = np.repeat(np.array(RED, dtype=np.uint8), 1024)  # label 7, first of its class
        batch = {b"filenames": [b"x.png"] * len(labels), b"batch_label": split.encode(),
                 b"fine_labels": labels, b"coarse_labels": [c // 5 for c in labels], b"data": data}
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f)
    meta = {b"fine_label_names": [f"class_{i}_x".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return root


def test_registered():
    names = list_streams()
    for n in ["cifar100_fscil", "mini_imagenet_fscil", "cub200_fscil"]:
        assert n in names and names[n]
    assert external.__all__ == ["cifar100_fscil", "mini_imagenet_fscil", "cub200_fscil"]


def test_cifar100_protocol_names_and_pixels(tmp_path):
    root = _make_cifar(tmp_path / "data")
    sc = cifar100_fscil(root)
    _check_protocol(sc, n_sessions=9, base=60, ways=5, shots=5,
                    train_per_class=CIFAR_TRAIN, test_per_class=CIFAR_TEST)
    assert sc.class_names[:2] == ["class 0 x", "class 1 x"] and len(sc.class_names) == 100
    assert sc.class_order == list(range(100))
    x, _, _ = sc.train_stream[0].dataset.eval()[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    want = _normalised(RED, external.CIFAR100_MEAN, external.CIFAR100_STD)
    torch.testing.assert_close(_eval_pixel(sc, 7), want)
    # same seed, same shots; root may also be the cifar-100-python folder itself
    again = cifar100_fscil(root / "cifar-100-python", augment=False)
    assert again.shot_indices == sc.shot_indices


def test_cifar100_resize_sessions_and_cache(tmp_path, monkeypatch):
    root = _make_cifar(tmp_path / "data")
    sc = cifar100_fscil(root, image_size=16, sessions=2)
    assert sc.n_sessions == 3
    x, _, _ = sc.train_stream[1].dataset.eval()[0]
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(
        _eval_pixel(sc, 7), _normalised(RED, external.CIFAR100_MEAN, external.CIFAR100_STD)
    )
    # a second load reads the on-disk cache: the pickles are not read again
    monkeypatch.setattr(data_mod, "_MEMORY_CACHE", {})
    monkeypatch.setattr(external, "resize_images", lambda *a: pytest.fail("decoded twice"))
    assert cifar100_fscil(root, image_size=16, sessions=2).shot_indices == sc.shot_indices


def _cifar_index_lists(folder: Path) -> list[list[int]]:
    labels = np.array(_cifar_labels(CIFAR_TRAIN))
    rng = np.random.default_rng(3)
    lists = [rng.permutation(np.flatnonzero(labels < 60)).tolist()]
    for s in range(8):
        lists.append([int(i) for c in range(60 + 5 * s, 65 + 5 * s)
                      for i in np.flatnonzero(labels == c)[[0, 2, 3, 4, 5]]])
    folder.mkdir(parents=True)
    for s, idx in enumerate(lists, 1):
        (folder / f"session_{s}.txt").write_text("\n".join(map(str, idx)) + "\n")
    return lists


def test_cifar100_index_lists(tmp_path):
    root = _make_cifar(tmp_path / "data")
    lists = _cifar_index_lists(tmp_path / "index_list" / "cifar100")
    sc = cifar100_fscil(root, index_list_dir=tmp_path / "index_list" / "cifar100")
    assert sc.shot_indices == lists
    assert [len(e.dataset) for e in sc.train_stream] == [360] + [25] * 8


def test_cifar100_index_list_errors(tmp_path):
    root = _make_cifar(tmp_path / "data")
    folder = tmp_path / "lists"
    _cifar_index_lists(folder)
    with open(folder / "session_2.txt", "a") as f:
        f.write("600\n")  # only 600 training images: 0..599
    with pytest.raises(ValueError, match=r"index_list_dir=.*lists.*session_2\.txt line 26: '600' matches no training image"):
        cifar100_fscil(root, index_list_dir=folder)
    (folder / "session_3.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "session_3.txt"))):
        cifar100_fscil(root, index_list_dir=folder)
    # a bad protocol is reported as such, before any session file is looked for
    with pytest.raises(ValueError, match=r"sessions=None .* ways=7"):
        cifar100_fscil(root, index_list_dir=folder, ways=7)
    # only the session files the protocol needs are read
    assert cifar100_fscil(root, index_list_dir=folder, sessions=0).n_sessions == 1


def test_cifar100_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"data_root=.*nowhere.*cifar-100-python[/\\]train") as e:
        cifar100_fscil(missing)
    assert str(missing / "meta") in str(e.value)  # also the cifar-100-python-folder layout


def test_cifar100_download_calls_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_cifar100(root, train, download):
        calls.append((root, train, download))
        _make_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    root = tmp_path / "dl"
    sc = cifar100_fscil(root, download=True, sessions=1)
    assert calls == [(str(root), True, True)] and sc.n_sessions == 2
    cifar100_fscil(root, download=True, sessions=1)  # present: no second download
    assert len(calls) == 1


# ----------------------------------------------------------------------- miniImageNet

WNIDS = [f"n{1000000 + 37 * i:08d}" for i in range(100)]
MINI_ORDER = [WNIDS[(7 * i) % 100] for i in range(100)]  # first-appearance order in train.csv


def _make_mini(root: Path, csv_in_split: bool = True) -> Path:
    rng = np.random.default_rng(1)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    n = 0
    for split, per_class in [("train", CIFAR_TRAIN), ("test", CIFAR_TEST)]:
        for k in range(per_class):
            for w in MINI_ORDER:
                rows[split].append((f"{w}{n:08d}.jpg", w))  # unique names, as in the real set
                n += 1
    for split in rows:
        for j, (fname, w) in enumerate(rows[split]):
            colour = RED if (split, j) == ("train", 0) else rng.integers(0, 256, 3)
            _write_jpeg(root / "images" / fname, colour)
    csv_dir = root / "split" if csv_in_split else root
    csv_dir.mkdir(parents=True, exist_ok=True)
    for split in rows:
        text = "filename,label\n" + "".join(f"{f},{w}\n" for f, w in rows[split])
        (csv_dir / f"{split}.csv").write_text(text)
    return root


def test_mini_imagenet_protocol_names_and_pixels(tmp_path):
    root = _make_mini(tmp_path / "miniimagenet")
    sc = mini_imagenet_fscil(root, image_size=16)
    _check_protocol(sc, n_sessions=9, base=60, ways=5, shots=5,
                    train_per_class=CIFAR_TRAIN, test_per_class=CIFAR_TEST)
    assert sc.class_names == MINI_ORDER  # class id = first appearance in train.csv
    x, y, _ = sc.train_stream[0].dataset.eval()[0]
    assert x.shape == (3, 16, 16) and y == 0
    got = _eval_pixel(sc, 0)  # solid RED JPEG: within JPEG rounding
    torch.testing.assert_close(got, _normalised(RED, external.IMAGENET_MEAN, external.IMAGENET_STD),
                               atol=4 / 255 / 0.224, rtol=0)


def test_mini_imagenet_flat_csvs_and_index_lists(tmp_path):
    root = _make_mini(tmp_path / "mini", csv_in_split=False)
    train_rows = [l.split(",") for l in (root / "train.csv").read_text().split()[1:]]
    by_class = {w: [i for i, (_, lw) in enumerate(train_rows) if lw == w] for w in MINI_ORDER}
    lists = [[i for w in MINI_ORDER[:60] for i in by_class[w]]]
    lists += [[i for w in MINI_ORDER[60 + 5 * s: 65 + 5 * s] for i in by_class[w][1:]] for s in range(8)]
    folder = tmp_path / "index_list" / "mini_imagenet"
    folder.mkdir(parents=True)
    for s, idx in enumerate(lists, 1):
        lines = [f"MINI-ImageNet/train/{train_rows[i][1]}/{train_rows[i][0]}" for i in idx]
        (folder / f"session_{s}.txt").write_text("\n".join(lines) + "\n")
    sc = mini_imagenet_fscil(root, image_size=16, index_list_dir=folder, augment=False)
    assert sc.shot_indices == lists
    with open(folder / "session_9.txt", "a") as f:
        f.write("MINI-ImageNet/train/n0/n0_missing.jpg\n")
    with pytest.raises(ValueError, match=r"session_9\.txt line 26: 'MINI-ImageNet/train/n0/n0_missing\.jpg'"):
        mini_imagenet_fscil(root, image_size=16, index_list_dir=folder)


def test_mini_imagenet_missing_root(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=r"data_root=.*empty.*split[/\\]train\.csv") as e:
        mini_imagenet_fscil(root)
    assert str(root / "images") in str(e.value) and str(root / "test.csv") in str(e.value)


# ------------------------------------------------------------------------- CUB-200


def _make_cub(root: Path) -> Path:
    cub = root / "CUB_200_2011"
    rng = np.random.default_rng(2)
    folders = [f"{c + 1:03d}.Bird_{c}_name" for c in range(200)]
    images, labels, split = [], [], []
    for c, folder in enumerate(folders):
        for k in range(CUB_TRAIN + CUB_TEST):
            images.append(f"{folder}/Bird_{c}_{k:04d}.jpg")
            labels.append(c + 1)
            split.append(0 if k == 1 else 1)  # the test image is not the last: mixed order
    for j, rel in enumerate(images):
        _write_jpeg(cub / "images" / rel, RED if j == 0 else rng.integers(0, 256, 3), size=(18, 14))
    (cub / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(images, 1)))
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {l}\n" for i, l in enumerate(labels, 1)))
    (cub / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in enumerate(split, 1)))
    (cub / "classes.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(folders, 1)))
    return root


def test_cub200_protocol_names_pixels_and_index_lists(tmp_path):
    root = _make_cub(tmp_path / "cub")
    sc = cub200_fscil(root, image_size=16)
    _check_protocol(sc, n_sessions=11, base=100, ways=10, shots=5,
                    train_per_class=CUB_TRAIN, test_per_class=CUB_TEST)
    assert sc.class_names[0] == "Bird 0 name" and sc.class_names[199] == "Bird 199 name"
    got = _eval_pixel(sc, 0)
    torch.testing.assert_close(got, _normalised(RED, external.IMAGENET_MEAN, external.IMAGENET_STD),
                               atol=4 / 255 / 0.224, rtol=0)

    # index lists: CEC paths, matched on <class folder>/<file>; root = CUB_200_2011 itself
    lines = (root / "CUB_200_2011" / "images.txt").read_text().splitlines()
    split = (root / "CUB_200_2011" / "train_test_split.txt").read_text().splitlines()
    train_paths = [l.split()[1] for l, s in zip(lines, split) if s.split()[1] == "1"]
    cls = [int(p[:3]) - 1 for p in train_paths]
    lists = [[i for i, c in enumerate(cls) if c < 100][::-1]]
    lists += [[i for i, c in enumerate(cls) if 100 + 10 * s <= c < 110 + 10 * s] for s in range(10)]
    folder = tmp_path / "index_list" / "cub200"
    folder.mkdir(parents=True)
    for s, idx in enumerate(lists, 1):
        text = "".join(f"CUB_200_2011/images/{train_paths[i]}\n" for i in idx)
        (folder / f"session_{s}.txt").write_text(text)
    sc2 = cub200_fscil(root / "CUB_200_2011", image_size=16, index_list_dir=folder)
    assert sc2.shot_indices == lists
    # a file name that exists, but under another class folder, does not match
    with open(folder / "session_4.txt", "a") as f:
        f.write(f"CUB_200_2011/images/002.Bird_1_name/{train_paths[0].split('/')[1]}\n")
    with pytest.raises(ValueError, match=r"index_list_dir=.*cub200.*session_4\.txt line 51"):
        cub200_fscil(root, image_size=16, index_list_dir=folder)
    (folder / "session_11.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"index_list_dir=.*session_11\.txt"):
        cub200_fscil(root, image_size=16, index_list_dir=folder)


def test_cub200_missing_root_and_images(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_root=.*CUB_200_2011[/\\]images\.txt.*classes\.txt"):
        cub200_fscil(tmp_path / "none")
    root = _make_cub(tmp_path / "cub")
    gone = next((root / "CUB_200_2011" / "images").glob("*/*.jpg"))
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=r"data_root=.*1 of the \d+ (train|test) images .*missing"):
        cub200_fscil(root, image_size=16)
