"""DMER loader (HELO_SPEC §1): one ``<subject_id>.mat`` file per subject in a directory.

Each file holds ``feas`` (rows x 913 features: eeg 0:90 | gsr 90:118 | ppg 118:145 | video 145:913),
``vids`` (the trial index of each row) and ``dis_label`` (trials x 10 label vectors). The label of a
row is ``dis_label[vids[row]]`` re-normalised to sum 1. ``vids`` is read 0-based when it contains a
0 and 1-based (MATLAB) otherwise, unless ``trial_index_base`` says which.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .dataset import DMER_LAYOUT, EmotionDataset, FeatureLayout, normalize_distribution

# The 73 subjects of the public release: ids 1..80 without these.
DMER_MISSING_IDS = (3, 4, 13, 16, 17, 27, 31)
DMER_SUBJECT_IDS = tuple(i for i in range(1, 81) if i not in DMER_MISSING_IDS)
FIELDS = ("feas", "vids", "dis_label")
# What the three fields may declare in all, before they are decompressed: 100 x the file's size or 256 MiB,
# whichever is more (a real subject's file is tens of MB and compresses less than 10x).
DECLARED_BYTES_PER_FILE_BYTE, MIN_DECLARED_CAP = 100, 256 << 20
_NUMERIC_CLASSES = (
    "double",
    "single",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "logical",
)


def _check_declared_sizes(file: str, where: str) -> None:
    """The fields' classes and declared sizes (``whosmat`` reads headers only) against the file's size."""
    from scipy.io import whosmat

    try:
        declared = {name: (shape, kind) for name, shape, kind in whosmat(file) if name in FIELDS}
    except Exception as exc:  # scipy raises several types for a corrupt or non-MAT file
        raise ValueError(f"{where}: cannot be read as a MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    cap = max(MIN_DECLARED_CAP, DECLARED_BYTES_PER_FILE_BYTE * os.path.getsize(file))
    total = 0
    for name, (shape, kind) in declared.items():
        if kind not in _NUMERIC_CLASSES:
            raise ValueError(f"{where}: field {name!r} must be a numeric array, the file declares a {kind}")
        elements = 1
        for d in shape:
            elements *= int(d)
        total += 8 * elements
    if total > cap:
        raise ValueError(
            f"{where}: its fields declare {total} bytes, more than the {cap} a .mat file of "
            f"{os.path.getsize(file)} bytes may unpack to"
        )


def _subject_files(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"DMER path {path!r} does not exist (expected a directory of <subject_id>.mat files)")
    if not os.path.isdir(path):
        raise NotADirectoryError(
            f"DMER path {path!r} is not a directory (expected a directory of <subject_id>.mat files)"
        )
    found = {}
    for entry in os.listdir(path):
        stem, ext = os.path.splitext(entry)
        if ext == ".mat" and stem.isdigit():
            found[int(stem)] = os.path.join(path, entry)
    if not found:
        raise FileNotFoundError(f"no <subject_id>.mat files (e.g. 1.mat) in DMER directory {path!r}")
    return found


def load_dmer_subject(file: str, *, layout: FeatureLayout = DMER_LAYOUT, trial_index_base: Optional[int] = None):
    """Read one subject's file -> (features float32 [rows, F], labels float32 [rows, C], trials int64 [rows]).

    Raises ValueError naming the file and field when a field is missing, has the wrong shape, or declares more
    than the file's size allows (checked before anything is decompressed).
    """
    from scipy.io import loadmat

    where = f"DMER subject {os.path.splitext(os.path.basename(file))[0]} ({file})"
    _check_declared_sizes(file, where)
    try:
        mat = loadmat(file, variable_names=FIELDS)
    except Exception as exc:  # scipy raises several types for a corrupt or non-MAT file
        raise ValueError(f"{where}: cannot be read as a MATLAB .mat file ({exc})") from exc
    missing = [f for f in FIELDS if f not in mat]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; expected fields {list(FIELDS)}")
    feas = np.asarray(mat["feas"], dtype=np.float64)
    if feas.ndim != 2 or feas.shape[1] != layout.n_features:
        raise ValueError(f"{where}: field 'feas' must have shape [rows, {layout.n_features}], got {feas.shape}")
    if not np.isfinite(feas).all():
        raise ValueError(f"{where}: field 'feas' contains NaN or inf")
    vids = np.asarray(mat["vids"])
    if vids.size != feas.shape[0] or (vids.ndim == 2 and min(vids.shape) != 1) or vids.ndim > 2:
        raise ValueError(
            f"{where}: field 'vids' must be a vector of {feas.shape[0]} trial indices (one per row "
            f"of 'feas'), got shape {vids.shape}"
        )
    vids = vids.reshape(-1)
    if not np.all(np.equal(np.mod(vids, 1), 0)):
        raise ValueError(f"{where}: field 'vids' must hold integer trial indices")
    vids = vids.astype(np.int64)
    dis_label = np.asarray(mat["dis_label"], dtype=np.float64)
    if dis_label.ndim != 2 or dis_label.shape[1] != layout.n_classes:
        raise ValueError(
            f"{where}: field 'dis_label' must have shape [trials, {layout.n_classes}], got {dis_label.shape}"
        )
    base = trial_index_base if trial_index_base is not None else (0 if (vids == 0).any() else 1)
    trials = vids - base
    if trials.min() < 0 or trials.max() >= dis_label.shape[0]:
        raise ValueError(
            f"{where}: field 'vids' holds trial indices {vids.min()}..{vids.max()} ({base}-based) but "
            f"'dis_label' has {dis_label.shape[0]} trials"
        )
    labels = normalize_distribution(dis_label[trials], f"{where}, field 'dis_label'")
    return feas.astype(np.float32), labels, trials


def load_dmer(
    path: str,
    subjects: Optional[Sequence[int]] = None,
    *,
    layout: FeatureLayout = DMER_LAYOUT,
    trial_index_base: Optional[int] = None,
) -> EmotionDataset:
    """Load ``<path>/<id>.mat`` for each subject id in ``subjects`` (None: every such file present).

    Returns an EmotionDataset (subject_ids are the file ids as strings).
    """
    files = _subject_files(path)
    wanted = sorted(files) if subjects is None else list(subjects)
    absent = [s for s in wanted if s not in files]
    if absent:
        raise FileNotFoundError(f"DMER directory {path!r} has no file for subject(s) {absent} (expected <id>.mat)")
    features, labels, subject_index, trials = [], [], [], []
    for i, sid in enumerate(wanted):
        x, y, t = load_dmer_subject(files[sid], layout=layout, trial_index_base=trial_index_base)
        features.append(x)
        labels.append(y)
        trials.append(t)
        subject_index.append(np.full(len(x), i, dtype=np.int64))
    return EmotionDataset(
        features=np.concatenate(features),
        labels=np.concatenate(labels),
        subjects=np.concatenate(subject_index),
        subject_ids=[str(s) for s in wanted],
        layout=layout,
        name=f"DMER({path})",
        trials=np.concatenate(trials),
    )
