"""An embedded synthetic DMER-shaped dataset whose labels truly depend on the modalities.

How a sample is made (all randomness from ``seed``):
- Each trial has emotion intensities a in [0, 1]^C: one primary emotion (0.6-1.0); with probability
  ``partner_prob`` its partner emotion co-occurs (0.3-0.7); the rest get 0-0.15. The label
  distribution is softmax(``sharpness`` * a): co-occurring emotions make the labels correlated.
- The classes are split into three groups: visible only in physiology (the first third), only in
  the video (the second third), in both (the rest). Partners pair a physiology-only emotion with a
  video-only one, so neither modality alone can tell whether the partner is present.
- Each block (eeg, gsr, ppg, video) is a fixed random linear map of the intensities it can see,
  times a per-subject gain, plus a per-subject offset and per-row noise.
A model that fuses the modalities and learns which emotions co-occur can beat one that does not.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .dataset import DMER_LAYOUT, EmotionDataset, FeatureLayout


def emotion_groups(n_classes: int):
    """(physiology-only, video-only, both) class indices: thirds of ``range(n_classes)``."""
    third = max(1, n_classes // 3)
    classes = np.arange(n_classes)
    return classes[:third], classes[third : 2 * third], classes[2 * third :]


def partner_of(n_classes: int) -> np.ndarray:
    """partner[c]: the emotion that may co-occur with c (physiology-only <-> video-only, the rest in pairs)."""
    physio, video, both = emotion_groups(n_classes)
    partner = np.arange(n_classes)
    partner[physio], partner[video] = video, physio
    for i in range(0, len(both) - 1, 2):
        partner[both[i]], partner[both[i + 1]] = both[i + 1], both[i]
    return partner


def make_synthetic_dataset(
    n_subjects: int = 8,
    trials_per_subject: int = 20,
    rows_per_trial: int = 5,
    *,
    layout: Optional[FeatureLayout] = None,
    seed: int = 0,
    noise: float = 0.5,
    subject_offset: float = 1.0,
    partner_prob: float = 0.5,
    sharpness: float = 4.0,
) -> EmotionDataset:
    """A deterministic synthetic dataset (same ``seed`` -> same arrays), DMER-shaped by default.

    Returns an EmotionDataset with n_subjects * trials_per_subject * rows_per_trial rows of
    ``layout.n_features`` float32 features (913 for DMER) and C-class label distributions.
    """
    layout = DMER_LAYOUT if layout is None else layout
    for name, value in (
        ("n_subjects", n_subjects),
        ("trials_per_subject", trials_per_subject),
        ("rows_per_trial", rows_per_trial),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_classes = layout.n_classes
    if n_classes < 3:
        raise ValueError(f"layout.n_classes must be >= 3 for the synthetic dataset, got {n_classes}")
    rng = np.random.default_rng(seed)
    physio, video, _ = emotion_groups(n_classes)
    partner = partner_of(n_classes)
    visible_physio = np.ones(n_classes, dtype=bool)
    visible_physio[video] = False
    visible_video = np.ones(n_classes, dtype=bool)
    visible_video[physio] = False

    blocks = layout.block_slices()
    block_visibility = {"eeg": visible_physio, "gsr": visible_physio, "ppg": visible_physio, "video": visible_video}
    projections = {
        name: rng.standard_normal((n_classes, cols.stop - cols.start)) / np.sqrt(block_visibility[name].sum())
        for name, cols in blocks.items()
    }

    n_trials = n_subjects * trials_per_subject
    intensity = rng.uniform(0.0, 0.15, (n_trials, n_classes))
    primary = rng.integers(0, n_classes, n_trials)
    intensity[np.arange(n_trials), primary] = rng.uniform(0.6, 1.0, n_trials)
    with_partner = rng.random(n_trials) < partner_prob
    idx = np.flatnonzero(with_partner)
    intensity[idx, partner[primary[idx]]] = rng.uniform(0.3, 0.7, len(idx))
    logits = sharpness * intensity
    trial_labels = np.exp(logits - logits.max(axis=1, keepdims=True))
    trial_labels /= trial_labels.sum(axis=1, keepdims=True)

    trial_subject = np.repeat(np.arange(n_subjects), trials_per_subject)
    gains = rng.uniform(0.7, 1.3, (n_subjects, len(blocks)))
    offsets = subject_offset * rng.standard_normal((n_subjects, layout.n_features))

    row_trial = np.repeat(np.arange(n_trials), rows_per_trial)
    row_subject = trial_subject[row_trial]
    features = np.empty((len(row_trial), layout.n_features))
    for b, (name, cols) in enumerate(blocks.items()):
        seen = intensity[row_trial] * block_visibility[name]
        features[:, cols] = gains[row_subject, b, None] * (seen @ projections[name])
    features += offsets[row_subject] + noise * rng.standard_normal(features.shape)
    return EmotionDataset(
        features=features.astype(np.float32),
        labels=trial_labels[row_trial].astype(np.float32),
        subjects=row_subject.astype(np.int64),
        subject_ids=[f"S{i + 1:02d}" for i in range(n_subjects)],
        layout=layout,
        name=f"synthetic(seed={seed})",
        trials=(row_trial % trials_per_subject).astype(np.int64),
    )
