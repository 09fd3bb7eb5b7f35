"""Continual few-shot streams: FSCIL scenarios, stream presets and episode sampling.

- :func:`fscil_benchmark` turns any pair of classification datasets into a few-shot
  class-incremental :class:`FSCILScenario` (an Avalanche ``CLScenario``).
- Presets (registered by name, see :func:`list_streams`): ``digits_fscil`` (embedded),
  ``omniglot_fscil``, ``tiny_imagenet_fscil`` (offline data), ``cifar100_fscil``,
  ``mini_imagenet_fscil``, ``cub200_fscil`` (standard protocols on your own copy).
- :func:`few_shot_episodes` samples N-way K-shot episodes reproducibly.

Names load on first use: the registry and the presets' signatures need no Avalanche
import (:func:`check_stream_args` answers in about a second).
"""

from .. import _lazy_exports

_EXPORTS = {
    "FSCILScenario": ".fscil",
    "fscil_benchmark": ".fscil",
    "dataset_targets": ".data",
    "few_shot_episodes": ".episodes",
    "FewShotEpisodes": ".episodes",
    "Episode": ".episodes",
    "digits_fscil": ".presets",
    "omniglot_fscil": ".presets",
    "tiny_imagenet_fscil": ".presets",
    "cifar100_fscil": ".external",
    "mini_imagenet_fscil": ".external",
    "cub200_fscil": ".external",
    "get_stream": ".registry",
    "list_streams": ".registry",
    "check_stream_args": ".registry",
    "register_stream": ".registry",
    "STREAMS": ".registry",
    "TensorImageDataset": ".data",
    "ToFloatNormalize": ".data",
    "RandomCropFlip": ".data",
    "Compose": ".data",
    "decode_images": ".data",
    "resolve_data_root": ".data",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
