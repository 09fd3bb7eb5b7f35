"""Presets on offline data: protocols, pixel conventions, caching, and clear errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from avalanche_fscl.streams import digits_fscil, omniglot_fscil, tiny_imagenet_fscil

from conftest import require_dataset


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVALANCHE_FSCL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_digits_protocol():
    bm = digits_fscil()
    assert bm.session_classes == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    assert [len(e.dataset) for e in bm.train_stream][1:] == [10, 10, 10]
    assert sum(len(e.dataset) for e in bm.test_stream) == 540  # fixed 30% stratified split
    assert len(bm.train_stream[0].dataset) == 503  # every training image of digits 0-3
    x, y, t = bm.test_stream[3].dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert bm.class_names[9] == "nine"
    # the test split does not depend on the seed; the shots do
    other = digits_fscil(seed=1)
    assert other.shot_indices[1] != bm.shot_indices[1]
    assert [len(e.dataset) for e in other.test_stream] == [len(e.dataset) for e in bm.test_stream]


def test_digits_image_size_and_custom_protocol():
    bm = digits_fscil(image_size=16, base_classes=2, ways=4, sessions=2, shots=3)
    assert bm.train_stream[0].dataset[0][0].shape == (1, 16, 16)
    assert bm.session_classes == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]


def test_omniglot_default_protocol(data_root):
    require_dataset(data_root, "omniglot")
    bm = omniglot_fscil(data_root)
    assert bm.n_sessions == 11 and len(bm.base_classes) == 964
    assert len(bm.train_stream[0].dataset) == 964 * 15 and len(bm.test_stream[0].dataset) == 964 * 5
    assert [len(e.dataset) for e in bm.train_stream[1:]] == [50] * 10
    assert [len(e.dataset) for e in bm.test_stream[1:]] == [50] * 10
    assert bm.session_classes[1] == list(range(964, 974))
    assert bm.class_names[0] == "Arcadian character01"
    assert bm.class_names[964] == "Angelic character01"  # evaluation character id 965
    x = bm.train_stream[0].dataset[0][0]
    assert x.shape == (1, 28, 28)
    ink = x.mean().item()
    assert 0.03 < ink < 0.3, "ink = 1 on a mostly-0 background"
    # shots come from drawers 0-14: class 964's training images are its indices 15*964 ..
    shots = bm.shot_indices[1][:5]
    assert all(964 * 15 <= i < 965 * 15 for i in shots)


def test_omniglot_matches_the_raw_npz_and_loads_fast_from_cache(data_root):
    folder = require_dataset(data_root, "omniglot")
    omniglot_fscil(data_root, base_classes=5, sessions=1, ways=5)  # warm the cache
    t = time.perf_counter()
    bm = omniglot_fscil(data_root, base_classes=5, sessions=1, ways=5, image_size=105)
    raw = np.load(folder / "images_evaluation.npz")["images"]
    # 105 px = no resampling: the preset's pixels are exactly the inverted bitmap
    test_x = bm.test_stream[1].dataset[0][0]
    assert torch.equal(test_x[0] > 0.5, torch.from_numpy(~raw[0, 15]))
    t = time.perf_counter()
    omniglot_fscil(data_root)
    assert time.perf_counter() - t < 5.0, "cached Omniglot must load in seconds"


def test_omniglot_accepts_the_torchvision_folder_layout(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    base = tmp_path / "omniglot-py"
    bitmaps = {}
    for split, first, alphabet, n in [("images_background", 1, "Latin", 3), ("images_evaluation", 965, "Angelic", 2)]:
        for c in range(n):
            folder = base / split / alphabet / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(20):
                bm = rng.random((105, 105)) > 0.1  # True = paper
                bitmaps[(first + c, d)] = bm
                Image.fromarray(bm).save(folder / f"{first + c:04d}_{d + 1:02d}.png")
    scenario = omniglot_fscil(tmp_path, base_classes=3, sessions=1, ways=2, shots=2, image_size=105)
    assert scenario.class_names == ["Latin character01", "Latin character02", "Latin character03",
                                    "Angelic character01", "Angelic character02"]
    x = scenario.test_stream[1].dataset[0][0]  # evaluation char 965, drawer 15
    assert torch.equal(x[0] > 0.5, torch.from_numpy(~bitmaps[(965, 15)]))


def test_omniglot_missing_folder_names_the_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_root: no Omniglot data under .*images_background\.npz"):
        omniglot_fscil(tmp_path)


def test_omniglot_rejects_too_many_sessions(data_root):
    require_dataset(data_root, "omniglot")
    with pytest.raises(ValueError, match=r"sessions=70 x ways=10 = 700 novel classes .*659"):
        omniglot_fscil(data_root, sessions=70)


@pytest.mark.slow  # decodes ~20k-65k JPEGs into a private cache (10-20 s each on 2 cores)
def test_tiny_imagenet_protocol(data_root):
    require_dataset(data_root, "tiny_imagenet")
    bm = tiny_imagenet_fscil(data_root)
    assert bm.n_sessions == 11 and bm.base_classes == list(range(100))
    assert len(bm.train_stream[0].dataset) == 100 * 150
    assert [len(e.dataset) for e in bm.train_stream[1:]] == [50] * 10
    assert len(bm.test_stream[0].dataset) == 5000 and [len(e.dataset) for e in bm.test_stream[1:]] == [500] * 10
    assert bm.class_names[0] == "goldfish"
    x = bm.test_stream[0].dataset.eval()[0][0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert -3 < x.min() < 0 < x.max() < 3  # normalised
    small = tiny_imagenet_fscil(data_root, image_size=32, sessions=2, augment=False)
    assert small.test_stream[2].dataset[0][0].shape == (3, 32, 32) and small.n_sessions == 3


def test_tiny_imagenet_missing_files_name_the_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data_root=.*missing .*train_150pc\.zip"):
        tiny_imagenet_fscil(tmp_path)


def test_omniglot_heldout_pool_and_validation_protocol(data_root):
    require_dataset(data_root, "omniglot")
    bm = omniglot_fscil(data_root)
    pool = bm.heldout
    assert len(pool) == 100 * 20 and sorted(set(pool.targets)) == list(range(100))
    # the pool is evaluation characters 100-199: none of them is a stream class
    raw = np.load(data_root / "omniglot" / "images_evaluation.npz")["images"]
    first = torch.from_numpy(~raw[100, 0]).float()[None, None]
    expected = torch.nn.functional.interpolate(first, size=(28, 28), mode="area").mul(255).round().div(255)
    assert torch.allclose(pool.data[0], expected[0], atol=1e-6), "normalised ink in [0, 1], ready to use"
    assert omniglot_fscil(data_root, heldout_classes=0).heldout is None
    with pytest.raises(ValueError, match=r"heldout_classes=600 but Omniglot has 659 evaluation characters"):
        omniglot_fscil(data_root, heldout_classes=600)

    val = omniglot_fscil(data_root, validation=True)
    assert len(val.base_classes) == 864 and val.n_sessions == 11 and val.heldout is None
    assert len(val.train_stream[0].dataset) == 864 * 10 and len(val.test_stream[0].dataset) == 864 * 5
    assert val.class_order[864:874] == list(range(864, 874)), "novel classes are background characters"
    # only training drawers (0-14): the test images of the real protocol (drawers 15-19) are never read
    real = bm.test_stream[0].dataset
    val_imgs = torch.stack([val.test_stream[0].dataset[i][0] for i in range(0, 4320, 431)])
    real_imgs = torch.stack([real[i][0] for i in range(len(real))])
    assert not any(torch.equal(v, r) for v in val_imgs for r in real_imgs[:2000])
    with pytest.raises(ValueError, match=r"validation=True: sessions=10 x ways=10 = 100 novel classes must be fewer than base_classes=50"):
        omniglot_fscil(data_root, validation=True, base_classes=50)
    # a validation held-out pool: the background characters after the protocol's, drawers 0-14 only
    tasks = omniglot_fscil(data_root, validation=True, base_classes=110, base_shots=5)
    assert len(tasks.base_classes) == 10 and len(tasks.heldout) == 100 * 15
    bg = torch.from_numpy(~np.load(data_root / "omniglot" / "images_background.npz")["images"][110, 14]).float()
    expected = torch.nn.functional.interpolate(bg[None, None], size=(28, 28), mode="area").mul(255).round().div(255)
    assert torch.allclose(tasks.heldout.data[14], expected[0], atol=1e-6), "character 110, drawer 14"
    assert sorted(set(tasks.heldout.targets)) == list(range(100))
    assert len(omniglot_fscil(data_root, validation=True, base_classes=900).heldout) == 64 * 15
    with pytest.raises(ValueError, match=r"validation=True: heldout_classes=65: allowed 0\.\.64"):
        omniglot_fscil(data_root, validation=True, base_classes=900, heldout_classes=65)


@pytest.mark.slow  # decodes ~20k-65k JPEGs into a private cache (10-20 s each on 2 cores)
def test_tiny_imagenet_heldout_is_cifar10_test_and_validation_uses_train_images(data_root):
    require_dataset(data_root, "tiny_imagenet")
    require_dataset(data_root, "cifar10_jpeg")
    bm = tiny_imagenet_fscil(data_root, image_size=32, heldout_per_class=20)
    pool = bm.heldout
    assert len(pool) == 200 and pool.data.shape == (200, 3, 32, 32) and pool.data.dtype == torch.float32
    assert np.bincount(pool.targets).tolist() == [20] * 10
    assert abs(pool.data.mean().item()) < 1.0, "normalised with Tiny ImageNet statistics"
    assert tiny_imagenet_fscil(data_root, image_size=32, heldout_per_class=0).heldout is None

    val = tiny_imagenet_fscil(data_root, image_size=32, validation=True)
    assert len(val.base_classes) == 50 and val.n_sessions == 6
    assert len(val.train_stream[0].dataset) == 50 * 100 and len(val.test_stream[0].dataset) == 50 * 50
    assert val.class_order == list(range(100)), "only the real protocol's base classes"
    # the validation held-out pool: 20 training images of each class the protocol leaves unused (100-199)
    vpool = val.heldout
    assert vpool.data.shape == (2000, 3, 32, 32) and np.bincount(vpool.targets).tolist() == [20] * 100
    from avalanche_fscl.streams.presets import _tiny_imagenet_split

    xtr, ytr = _tiny_imagenet_split(data_root / "tiny_imagenet", "train_150pc")
    raw = torch.as_tensor(xtr[ytr == 100][:1])  # held-out label 0 = Tiny ImageNet class 100, its first image
    small = torch.nn.functional.interpolate(raw.float(), size=(32, 32), mode="bilinear", antialias=True)
    a, b = (vpool.data[0] - vpool.data[0].mean()).flatten(), (small[0] - small[0].mean()).flatten()
    assert vpool.targets[0] == 0 and torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert tiny_imagenet_fscil(data_root, image_size=32, validation=True, heldout_per_class=0).heldout is None


def test_omniglot_external_corpus_is_the_characters_nothing_else_uses(data_root):
    require_dataset(data_root, "omniglot")
    bm = omniglot_fscil(data_root)
    ext = bm.external
    assert len(ext) == 459 * 20 and sorted(set(ext.targets)) == list(range(459))
    raw = np.load(data_root / "omniglot" / "images_evaluation.npz")["images"]
    first = torch.from_numpy(~raw[200, 0]).float()[None, None]  # after 100 novel + 100 held-out
    expected = torch.nn.functional.interpolate(first, size=(28, 28), mode="area").mul(255).round().div(255)
    assert torch.allclose(ext.data[0], expected[0], atol=1e-6)
    held = bm.heldout.data.flatten(1)
    assert not any(torch.equal(ext.data[i].flatten(), h) for i in range(0, len(ext), 500) for h in held[::20])
    assert len(omniglot_fscil(data_root, validation=True).external) == len(ext), "same corpus"
    assert len(omniglot_fscil(data_root, external_classes=10).external) == 200
    assert omniglot_fscil(data_root, external_classes=0).external is None
    with pytest.raises(ValueError, match=r"external_classes=460: allowed 0..459"):
        omniglot_fscil(data_root, external_classes=460)


@pytest.mark.slow  # decodes ~20k-65k JPEGs into a private cache (10-20 s each on 2 cores)
def test_tiny_imagenet_external_corpus_is_cifar10_train_images(data_root):
    require_dataset(data_root, "tiny_imagenet")
    require_dataset(data_root, "cifar10_jpeg")
    bm = tiny_imagenet_fscil(data_root, image_size=32, heldout_per_class=20, external_per_class=30)
    ext, held = bm.external, bm.heldout
    assert ext.data.shape == (300, 3, 32, 32) and np.bincount(ext.targets).tolist() == [30] * 10
    # training images, not the held-out pool's test images
    assert not any(torch.equal(e, h) for e in ext.data for h in held.data)
    assert tiny_imagenet_fscil(data_root, image_size=32, external_per_class=0).external is None
    with pytest.raises(ValueError, match=r"external_per_class=1001: allowed 0..1000"):
        tiny_imagenet_fscil(data_root, image_size=32, external_per_class=1001)
