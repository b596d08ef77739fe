"""The in-memory dataset shared by every loader, and the evaluation protocols' splits.

An ``EmotionDataset`` holds one row of features and one label distribution per sample, the subject
of each row, and the ``FeatureLayout`` that says how a row splits into HeLo's four input blocks
(query stream | key/value stream 1 | key/value stream 2 | behavioural stream; DMER: eeg | gsr | ppg | video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

PROTOCOLS = ("subject-dependent", "loso", "kfold")


@dataclass(frozen=True)
class FeatureLayout:
    """Column layout of a row: ``n_channels * band_features | gsr | ppg | video``.

    The field names match ``HeLoConfig``'s, so ``HeLoConfig(**layout.as_config(), ...)`` fits a model.
    """

    n_channels: int = 18
    band_features: int = 5
    gsr_features: int = 28
    ppg_features: int = 27
    video_features: int = 768
    n_classes: int = 10

    @property
    def n_features(self) -> int:
        return self.n_channels * self.band_features + self.gsr_features + self.ppg_features + self.video_features

    def block_slices(self) -> Dict[str, slice]:
        """Column ranges of the blocks: eeg, gsr, ppg, video (DMER's names for the four streams)."""
        sizes = (
            ("eeg", self.n_channels * self.band_features),
            ("gsr", self.gsr_features),
            ("ppg", self.ppg_features),
            ("video", self.video_features),
        )
        out, start = {}, 0
        for name, size in sizes:
            out[name] = slice(start, start + size)
            start += size
        return out

    def as_config(self) -> Dict[str, int]:
        """The layout as keyword arguments of ``HeLoConfig``."""
        return dataclasses.asdict(self)


DMER_LAYOUT = FeatureLayout()


@dataclass
class EmotionDataset:
    """features: float32 [rows, F]; labels: float32 [rows, C] (rows sum to 1); subjects: int64 [rows]
    index into ``subject_ids``; trials: int64 [rows] (trial of each row within its subject, or -1)."""

    features: np.ndarray
    labels: np.ndarray
    subjects: np.ndarray
    subject_ids: List[str]
    layout: FeatureLayout
    name: str = "dataset"
    trials: Optional[np.ndarray] = None

    def __post_init__(self):
        rows = self.features.shape[0]
        if self.features.ndim != 2 or self.features.shape[1] != self.layout.n_features:
            raise ValueError(
                f"{self.name}: features must have shape [rows, {self.layout.n_features}], got {self.features.shape}"
            )
        if self.labels.shape != (rows, self.layout.n_classes):
            raise ValueError(
                f"{self.name}: labels must have shape [rows, {self.layout.n_classes}] = "
                f"{(rows, self.layout.n_classes)}, got {self.labels.shape}"
            )
        if self.subjects.shape != (rows,):
            raise ValueError(f"{self.name}: subjects must have shape [rows] = ({rows},), got {self.subjects.shape}")
        if self.trials is None:
            self.trials = np.full(rows, -1, dtype=np.int64)

    def __len__(self) -> int:
        return self.features.shape[0]

    def rows_of(self, subject: int) -> np.ndarray:
        """Row indices of subject number ``subject`` (an index into ``subject_ids``)."""
        return np.flatnonzero(self.subjects == subject)


@dataclass
class Split:
    """One train/test split of a protocol: ``name`` (e.g. "subject 7", "fold 2") and row indices."""

    name: str
    train: np.ndarray
    test: np.ndarray


def normalize_distribution(labels: np.ndarray, where: str) -> np.ndarray:
    """Rows re-normalised to sum 1; ValueError naming ``where`` on a negative, non-finite or all-zero row."""
    labels = np.asarray(labels, dtype=np.float64)
    if not np.isfinite(labels).all():
        raise ValueError(f"{where}: label distributions contain NaN or inf")
    if (labels < 0).any():
        raise ValueError(f"{where}: label distributions contain negative entries")
    sums = labels.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise ValueError(f"{where}: a label vector sums to 0 (row {int(np.flatnonzero(sums[:, 0] <= 0)[0])})")
    return (labels / sums).astype(np.float32)


def subject_dependent_splits(
    dataset: EmotionDataset, *, test_fraction: float = 0.2, seed: int = 0, subjects: Optional[Sequence[int]] = None
) -> List[Split]:
    """Per subject, a random ``1 - test_fraction`` / ``test_fraction`` split of its rows (one model each)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    splits = []
    for subject in range(len(dataset.subject_ids)) if subjects is None else subjects:
        rows = dataset.rows_of(subject)
        if len(rows) < 2:
            raise ValueError(
                f"{dataset.name}: subject {dataset.subject_ids[subject]} has {len(rows)} rows; "
                "the subject-dependent protocol needs at least 2"
            )
        order = np.random.default_rng([seed, subject]).permutation(rows)
        n_test = min(max(1, int(round(test_fraction * len(rows)))), len(rows) - 1)
        splits.append(
            Split(f"subject {dataset.subject_ids[subject]}", np.sort(order[n_test:]), np.sort(order[:n_test]))
        )
    return splits


def loso_splits(dataset: EmotionDataset, *, subjects: Optional[Sequence[int]] = None) -> List[Split]:
    """Leave-one-subject-out: each (chosen) subject once as the test set, all other subjects train."""
    if len(dataset.subject_ids) < 2:
        raise ValueError(f"{dataset.name}: leave-one-subject-out needs at least 2 subjects")
    splits = []
    for subject in range(len(dataset.subject_ids)) if subjects is None else subjects:
        test = dataset.subjects == subject
        splits.append(Split(f"subject {dataset.subject_ids[subject]}", np.flatnonzero(~test), np.flatnonzero(test)))
    return splits


def kfold_splits(dataset: EmotionDataset, *, folds: int = 5, seed: int = 0) -> List[Split]:
    """Subject-wise k-fold: subjects shuffled with ``seed`` and dealt into ``folds`` groups."""
    n_subjects = len(dataset.subject_ids)
    if not 2 <= folds <= n_subjects:
        raise ValueError(f"folds must be in [2, number of subjects = {n_subjects}], got {folds}")
    order = np.random.default_rng(seed).permutation(n_subjects)
    splits = []
    for fold, held_out in enumerate(np.array_split(order, folds)):
        test = np.isin(dataset.subjects, held_out)
        splits.append(Split(f"fold {fold}", np.flatnonzero(~test), np.flatnonzero(test)))
    return splits


def make_splits(
    dataset: EmotionDataset, protocol: str, *, folds: int = 5, test_fraction: float = 0.2, seed: int = 0
) -> List[Split]:
    """The splits of ``protocol``: "subject-dependent", "loso" or "kfold"."""
    if protocol == "subject-dependent":
        return subject_dependent_splits(dataset, test_fraction=test_fraction, seed=seed)
    if protocol == "loso":
        return loso_splits(dataset)
    if protocol == "kfold":
        return kfold_splits(dataset, folds=folds, seed=seed)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def standardize(train: np.ndarray, *others: np.ndarray):
    """Z-score every column with the mean/std of ``train`` (std 0 -> 1). Returns (train, *others) float32."""
    mean = train.mean(axis=0, keepdims=True)
    std = train.std(axis=0, keepdims=True)
    std[std == 0] = 1.0
    return tuple(((x - mean) / std).astype(np.float32) for x in (train,) + others)
