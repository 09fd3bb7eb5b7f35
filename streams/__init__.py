"""Continual few-shot streams: FSCIL scenarios, stream presets and episode sampling.

- :func:`fscil_benchmark` turns any pair of classification datasets into a few-shot
  class-incremental :class:`FSCILScenario` (an Avalanche ``CLScenario``).
- Presets (registered by name, see :func:`list_streams`): ``digits_fscil`` (embedded),
  ``omniglot_fscil``, ``tiny_imagenet_fscil`` (offline data), ``cifar100_fscil``,
  ``mini_imagenet_fscil``, ``cub200_fscil`` (standard protocols on your own copy).
- :func:`few_shot_episodes` samples N-way K-shot episodes reproducibly.
"""

from .data import (
    Compose,
    RandomCropFlip,
    TensorImageDataset,
    ToFloatNormalize,
    decode_images,
    resolve_data_root,
)
from .episodes import Episode, FewShotEpisodes, few_shot_episodes
from .external import cifar100_fscil, cub200_fscil, mini_imagenet_fscil
from .fscil import FSCILScenario, dataset_targets, fscil_benchmark
from .presets import digits_fscil, omniglot_fscil, tiny_imagenet_fscil
from .registry import STREAMS, get_stream, list_streams, register_stream

__all__ = [
    "FSCILScenario",
    "fscil_benchmark",
    "dataset_targets",
    "few_shot_episodes",
    "FewShotEpisodes",
    "Episode",
    "digits_fscil",
    "omniglot_fscil",
    "tiny_imagenet_fscil",
    "cifar100_fscil",
    "mini_imagenet_fscil",
    "cub200_fscil",
    "get_stream",
    "list_streams",
    "register_stream",
    "STREAMS",
    "TensorImageDataset",
    "ToFloatNormalize",
    "RandomCropFlip",
    "Compose",
    "decode_images",
    "resolve_data_root",
]
