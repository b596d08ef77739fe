"""Datasets: the embedded synthetic generator (default), DMER (.mat) and WESAD (.pkl) loaders, splits."""

from typing import Optional

from .dataset import (
    DMER_LAYOUT,
    PROTOCOLS,
    EmotionDataset,
    FeatureLayout,
    Split,
    kfold_splits,
    loso_splits,
    make_splits,
    standardize,
    subject_dependent_splits,
)
from .dmer import DMER_SUBJECT_IDS, load_dmer
from .synthetic import make_synthetic_dataset
from .wesad import WESAD_SUBJECT_IDS, load_wesad, wesad_layout

DATASETS = ("synthetic", "dmer", "wesad")


def dataset_layout(name: str) -> FeatureLayout:
    """The row layout ``load_dataset(name)`` gives with the loaders' default layouts (synthetic and DMER:
    ``DMER_LAYOUT``; WESAD: ``wesad_layout()``), known before any file is read."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return wesad_layout() if name == "wesad" else DMER_LAYOUT


def load_dataset(name: str, path: Optional[str] = None, **options) -> EmotionDataset:
    """``name`` "synthetic" (generated from ``options``; no path), "dmer" or "wesad" (read from ``path``)."""
    if name == "synthetic":
        if path is not None:
            raise ValueError("the synthetic dataset is generated, not read: pass no path")
        return make_synthetic_dataset(**options)
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if path is None:
        raise ValueError(f"the {name} dataset needs a path (--data-path)")
    return load_dmer(path, **options) if name == "dmer" else load_wesad(path, **options)


__all__ = [
    "EmotionDataset",
    "FeatureLayout",
    "Split",
    "DMER_LAYOUT",
    "PROTOCOLS",
    "DATASETS",
    "make_splits",
    "subject_dependent_splits",
    "loso_splits",
    "kfold_splits",
    "standardize",
    "make_synthetic_dataset",
    "load_dmer",
    "load_wesad",
    "wesad_layout",
    "load_dataset",
    "dataset_layout",
    "DMER_SUBJECT_IDS",
    "WESAD_SUBJECT_IDS",
]
