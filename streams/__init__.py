"""Continual few-shot streams: FSCIL scenarios, presets and episode sampling."""

from .data import RandomCropFlip, TensorImageDataset, ToFloatNormalize, resolve_data_root
from .fscil import FSCILScenario, dataset_targets, fscil_benchmark

__all__ = [
    "FSCILScenario",
    "fscil_benchmark",
    "dataset_targets",
    "TensorImageDataset",
    "ToFloatNormalize",
    "RandomCropFlip",
    "resolve_data_root",
]
