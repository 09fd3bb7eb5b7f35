"""Image-caption corpora from ``../shared/data`` for CLIP pretraining and GRAM meta-training.

Captions are written from class names and CLIP's prompt templates (``text/``), with every
WordNet synonym of a Tiny ImageNet class, plus the free image-text pairs. Every image carries a
*concept* id: images of one class share it, each free pair has its own. The contrastive loss of
``pretrain-clip`` treats pairs of one concept as positives (UniCL, Yang et al. 2022).

Splits, fixed here so that no evaluation image is ever trained on:
- Tiny ImageNet ``train_150pc``: images ``K < 150 - TINY_CLIP_HOLDOUT`` of each class (file
  index ``K``) are the corpus; the last ``TINY_CLIP_HOLDOUT`` (30) per class are the *shot pool*
  that the CLIP never sees (few-shot prompt tuning draws its shots from it);
  ``val`` (50 per class) is the test set. Neither is in any corpus.
- CIFAR-10 ``train_1000pc`` is in the corpus; ``test`` is the cross-dataset test set.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .data import cached_array, dataset_folder, decode_images, file_fingerprint, require_files, resize_images
from .presets import _read_tsv  # one TSV reader for the shared data

__all__ = [
    "TINY_CLIP_HOLDOUT",
    "CORPUS_SOURCES",
    "CaptionCorpus",
    "caption_corpus",
    "clip_templates",
    "tiny_imagenet_classes",
    "tiny_imagenet_images",
    "cifar10_images",
]

TINY_CLIP_HOLDOUT = 30
CORPUS_SOURCES = ("tiny_imagenet", "cifar10", "image_text_pairs")


def clip_templates(dataset: str, data_root: str | os.PathLike | None = None) -> list[str]:
    """CLIP's zero-shot prompt templates for ``dataset`` (a key of clip_benchmark's
    ``en_zeroshot_classification_templates.json``: ``imagenet1k`` (80), ``cifar10`` (18), ...),
    with ``{c}`` where the class name goes."""
    folder = dataset_folder(data_root, "text")
    require_files(folder, ["clip_benchmark_en_zeroshot_templates.json"], "data_root")
    table = json.loads((folder / "clip_benchmark_en_zeroshot_templates.json").read_text())
    if dataset not in table:
        raise ValueError(f"clip_templates: dataset={dataset!r}; allowed: {', '.join(sorted(table))}")
    return list(table[dataset])


def tiny_imagenet_classes(data_root: str | os.PathLike | None = None) -> tuple[list[str], list[list[str]]]:
    """Tiny ImageNet class names in label order and, per class, all its WordNet synonyms."""
    folder = dataset_folder(data_root, "tiny_imagenet")
    require_files(folder, ["classes.tsv"], "data_root")
    rows = sorted(_read_tsv(folder / "classes.tsv"), key=lambda r: int(r["label"]))
    return [r["name"] for r in rows], [[w.strip() for w in r["words"].split(",") if w.strip()] for r in rows]


def tiny_imagenet_images(
    data_root: str | os.PathLike | None, split: str
) -> tuple[Tensor, Tensor]:
    """Tiny ImageNet images ``uint8 (N, 3, 64, 64)`` and labels ``(N,)`` of one split:
    ``"corpus"`` (train images ``K < 120`` per class), ``"shots"`` (train ``K >= 120``, never in a
    corpus), ``"val"`` (50 per class, the test set) or ``"train"`` (all 150)."""
    if split not in ("corpus", "shots", "val", "train"):
        raise ValueError(f"tiny_imagenet_images: split={split!r}; allowed: corpus, shots, val, train")
    folder = dataset_folder(data_root, "tiny_imagenet")
    src = "val" if split == "val" else "train_150pc"
    zpath, tsv = folder / f"{src}.zip", folder / f"{src}_labels.tsv"
    require_files(folder, [zpath.name, tsv.name, "classes.tsv"], "data_root")
    rows = _read_tsv(tsv)

    def build() -> np.ndarray:
        with zipfile.ZipFile(zpath) as z:
            return decode_images([z.read(r["file"]) for r in rows], size=64, channels=3)

    images = torch.from_numpy(cached_array(f"tiny_imagenet_{src}_{file_fingerprint([zpath, tsv])}", build))
    labels = torch.tensor([int(r["label"]) for r in rows])
    if split in ("val", "train"):
        return images, labels
    k = torch.tensor([int(re.search(r"_(\d+)\.\w+$", r["file"]).group(1)) for r in rows])
    keep = k < 150 - TINY_CLIP_HOLDOUT if split == "corpus" else k >= 150 - TINY_CLIP_HOLDOUT
    return images[keep], labels[keep]


def cifar10_images(data_root: str | os.PathLike | None, split: str) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10 ``uint8 (N, 3, 32, 32)`` images, labels and the 10 class names; ``split`` is
    ``"train_1000pc"`` (in the corpus) or ``"test"``."""
    if split not in ("train_1000pc", "test"):
        raise ValueError(f"cifar10_images: split={split!r}; allowed: train_1000pc, test")
    folder = dataset_folder(data_root, "cifar10_jpeg")
    zpath, tsv = folder / f"{split}.zip", folder / f"{split}_labels.tsv"
    require_files(folder, [zpath.name, tsv.name, "classes.txt"], "data_root")
    rows = sorted(_read_tsv(tsv), key=lambda r: r["file"])

    def build() -> np.ndarray:
        with zipfile.ZipFile(zpath) as z:
            return decode_images([z.read(r["file"]) for r in rows], size=32, channels=3)

    images = torch.from_numpy(cached_array(f"cifar10_{split}_all_{file_fingerprint([zpath, tsv])}", build))
    names = (folder / "classes.txt").read_text().split()
    return images, torch.tensor([int(r["label"]) for r in rows]), names


@dataclass
class CaptionCorpus:
    """Images with the captions that may describe them.

    Attributes:
        images: ``uint8 (N, 3, S, S)``.
        concept: ``int64 (N,)``, index into ``captions``.
        captions: per concept, the caption strings it may be described by (one is drawn per use).
        concept_names: per concept, a short name (class name or the caption itself).
        source: per concept, the dataset it comes from.
    """

    images: Tensor
    concept: Tensor
    captions: list[list[str]]
    concept_names: list[str]
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def sample_captions(self, idx: Tensor, generator: torch.Generator) -> list[str]:
        """One caption per image ``idx`` (drawn with ``generator``)."""
        r = torch.randint(0, 1 << 30, (len(idx),), generator=generator).tolist()
        return [self.captions[c][j % len(self.captions[c])] for c, j in zip(self.concept[idx].tolist(), r)]


def caption_corpus(
    data_root: str | os.PathLike | None = None,
    sources: Sequence[str] = CORPUS_SOURCES,
    image_size: int = 64,
    tiny_classes: Sequence[int] | None = None,
) -> CaptionCorpus:
    """The image-caption corpus of ``sources`` (any of :data:`CORPUS_SOURCES`), images resized to
    ``image_size``. ``tiny_classes`` restricts the Tiny ImageNet part to those labels (default all).
    No Tiny ImageNet val or shot-pool image and no CIFAR-10 test image is ever included."""
    bad = [s for s in sources if s not in CORPUS_SOURCES]
    if bad or not sources:
        raise ValueError(f"caption_corpus: sources={list(sources)!r}; allowed: {', '.join(CORPUS_SOURCES)}")
    images, concept, captions, names, origin = [], [], [], [], []
    if "tiny_imagenet" in sources:
        x, y = tiny_imagenet_images(data_root, "corpus")
        cls_names, synonyms = tiny_imagenet_classes(data_root)
        keep = sorted(set(range(len(cls_names))) if tiny_classes is None else set(tiny_classes))
        templates = clip_templates("imagenet1k", data_root)
        mask = torch.isin(y, torch.tensor(keep))
        remap = {c: len(captions) + i for i, c in enumerate(keep)}
        images.append(resize_images(x[mask], image_size))
        concept.append(torch.tensor([remap[c] for c in y[mask].tolist()]))
        for c in keep:
            captions.append([t.replace("{c}", s) for s in synonyms[c] for t in templates])
            names.append(cls_names[c])
            origin.append("tiny_imagenet")
    if "cifar10" in sources:
        x, y, cls_names = cifar10_images(data_root, "train_1000pc")
        templates = clip_templates("cifar10", data_root)
        images.append(resize_images(x, image_size))
        concept.append(y + len(captions))
        for n in cls_names:
            captions.append([t.replace("{c}", n) for t in templates])
            names.append(n)
            origin.append("cifar10")
    if "image_text_pairs" in sources:
        folder = dataset_folder(data_root, "image_text_pairs")
        require_files(folder, ["captions.tsv", "skimage_clip_demo_images.zip"], "data_root")
        rows = _read_tsv(folder / "captions.tsv")
        with zipfile.ZipFile(folder / "skimage_clip_demo_images.zip") as z:
            x = decode_images([z.read(r["file"]) for r in rows], size=image_size, channels=3)
        images.append(torch.from_numpy(x))
        concept.append(torch.arange(len(rows)) + len(captions))
        for r in rows:
            captions.append([r["caption"]])
            names.append(r["caption"])
            origin.append("image_text_pairs")
    return CaptionCorpus(torch.cat(images), torch.cat(concept).long(), captions, names, origin)
