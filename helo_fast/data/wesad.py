"""WESAD loader (HELO_SPEC §10): ``<root>/SX/SX.pkl`` per subject, windowed into feature rows.

Pickle layout: ``signal`` -> ``chest`` {ECG, EDA, EMG, Resp, Temp, ACC} at 700 Hz and ``wrist``
{BVP 64 Hz, EDA 4 Hz, TEMP 4 Hz, ACC 32 Hz}; ``label`` at 700 Hz (0 transient, 1 baseline, 2 stress,
3 amusement, 4 meditation). PANAS answers per condition come from the pickle's ``questionnaire``
entry (a dict condition -> item vector; condition given as 1..4 or as baseline/stress/amusement/
meditation) or, as in the public release, from ``<root>/SX/SX_quest.csv`` ("# ORDER" and "# PANAS" rows).

HeLo's WESAD mapping is not published; this loader uses (one row per window of ``window_s`` seconds
whose 700 Hz labels are all one condition in 1..4):
- query stream ("eeg" block, N x 5): chest ECG cut into N = ``ecg_segments`` sub-windows; per
  sub-window mean, std and log power in 0.5-5, 5-15 and 15-40 Hz;
- key/value stream 1 ("gsr" block, 12): EDA, chest and wrist, 6 statistics each;
- key/value stream 2 ("ppg" block, 9): wrist BVP, 6 statistics + log power in 0.5-1.5, 1.5-4, 4-8 Hz;
- behavioural stream ("video" block, 40): ACC, chest and wrist, 5 statistics per axis and of the magnitude;
- label: the subject's PANAS item vector (first ``n_items`` items, answers 1..5) for the window's
  condition, normalised to sum 1 (meditation: the mean of the meditation questionnaires).
The 6 statistics are mean, std, min, max, slope (per second) and mean absolute first difference.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, Optional, Sequence

import numpy as np

from .._validation import check_int_at_least, check_positive
from .dataset import EmotionDataset, FeatureLayout, normalize_distribution
from .safe_pickle import UnsafePickleError, load_plain_pickle

WESAD_SUBJECT_IDS = tuple(f"S{i}" for i in range(2, 18) if i != 12)
CONDITIONS = {1: "baseline", 2: "stress", 3: "amusement", 4: "meditation"}
# Names of the conditions in SX_quest.csv's "# ORDER" row.
QUEST_ORDER_NAMES = {"base": 1, "tsst": 2, "fun": 3, "medi 1": 4, "medi 2": 4, "medi1": 4, "medi2": 4}
CHEST_HZ, BVP_HZ, WRIST_EDA_HZ, WRIST_ACC_HZ = 700, 64, 4, 32
ECG_BANDS = ((0.5, 5.0), (5.0, 15.0), (15.0, 40.0))
BVP_BANDS = ((0.5, 1.5), (1.5, 4.0), (4.0, 8.0))


def wesad_layout(ecg_segments: int = 6, n_items: int = 20) -> FeatureLayout:
    """The FeatureLayout of this loader's rows."""
    return FeatureLayout(
        n_channels=ecg_segments,
        band_features=2 + len(ECG_BANDS),
        gsr_features=12,
        ppg_features=6 + len(BVP_BANDS),
        video_features=40,
        n_classes=n_items,
    )


def _stats(x: np.ndarray, hz: float) -> np.ndarray:
    """mean, std, min, max, slope per second, mean |diff| of a 1-D signal."""
    t = np.arange(len(x)) / hz
    slope = np.polyfit(t, x, 1)[0] if len(x) > 1 else 0.0
    mad = np.abs(np.diff(x)).mean() if len(x) > 1 else 0.0
    return np.array([x.mean(), x.std(), x.min(), x.max(), slope, mad])


def _band_log_power(x: np.ndarray, hz: float, bands) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(x - x.mean())) ** 2 / max(len(x), 1)
    freqs = np.fft.rfftfreq(len(x), 1.0 / hz)
    return np.array([np.log1p(spectrum[(freqs >= lo) & (freqs < hi)].sum()) for lo, hi in bands])


def _signal(record: dict, device: str, name: str, where: str, axes: int) -> np.ndarray:
    try:
        x = np.asarray(record["signal"][device][name], dtype=np.float64)
    except (KeyError, TypeError):
        raise ValueError(f"{where}: missing signal['{device}']['{name}']") from None
    x = x.reshape(len(x), -1) if x.ndim else x.reshape(1, 1)
    if x.shape[1] != axes:
        raise ValueError(f"{where}: signal['{device}']['{name}'] must have {axes} column(s), got shape {x.shape}")
    return x


def window_features(ecg, chest_eda, chest_acc, wrist_bvp, wrist_eda, wrist_acc, ecg_segments: int) -> np.ndarray:
    """One window's feature row (see the module docstring) from its signal slices."""
    ecg = ecg[:, 0]
    query = [
        np.concatenate([[seg.mean(), seg.std()], _band_log_power(seg, CHEST_HZ, ECG_BANDS)])
        for seg in np.array_split(ecg, ecg_segments)
    ]
    eda = np.concatenate([_stats(chest_eda[:, 0], CHEST_HZ), _stats(wrist_eda[:, 0], WRIST_EDA_HZ)])
    bvp = np.concatenate([_stats(wrist_bvp[:, 0], BVP_HZ), _band_log_power(wrist_bvp[:, 0], BVP_HZ, BVP_BANDS)])
    acc = []
    for sig, hz in ((chest_acc, CHEST_HZ), (wrist_acc, WRIST_ACC_HZ)):
        for axis in list(sig.T) + [np.linalg.norm(sig, axis=1)]:
            acc.append(_stats(axis, hz)[[0, 1, 2, 3, 5]])
    return np.concatenate([np.concatenate(query), eda, bvp, np.concatenate(acc)])


def _panas_from_pickle(questionnaire, where: str) -> Dict[int, np.ndarray]:
    if not isinstance(questionnaire, dict):
        raise ValueError(f"{where}: 'questionnaire' must be a dict condition -> PANAS item vector")
    names = {v: k for k, v in CONDITIONS.items()}
    out = {}
    for key, items in questionnaire.items():
        cond = key if key in CONDITIONS else names.get(str(key).lower())
        if cond is None:
            raise ValueError(f"{where}: questionnaire condition {key!r} is not one of 1..4 or {list(names)}")
        out[cond] = np.asarray(items, dtype=np.float64).reshape(-1)
    return out


def read_quest_csv(file: str) -> Dict[int, np.ndarray]:
    """PANAS answers per condition from a WESAD ``SX_quest.csv`` (meditation: mean of its questionnaires).

    ValueError naming ``file`` for text that is not UTF-8, a PANAS entry that is not a number, or missing rows."""
    order, panas = None, []
    try:
        with open(file, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh, delimiter=";"):
                if not row:
                    continue
                head = row[0].strip().lower()
                if head == "# order":
                    order = [c.strip().lower() for c in row[1:] if c.strip()]
                elif head == "# panas":
                    panas.append(np.array([float(c) for c in row[1:] if c.strip()]))
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"WESAD questionnaire {file!r}: cannot be read ({type(exc).__name__}: {exc})") from None
    if order is None or not panas:
        raise ValueError(f"WESAD questionnaire {file!r}: needs a '# ORDER' row and '# PANAS' rows")
    conditions = [QUEST_ORDER_NAMES[name] for name in order if name in QUEST_ORDER_NAMES]
    if len(conditions) != len(panas):
        raise ValueError(
            f"WESAD questionnaire {file!r}: {len(panas)} PANAS rows for {len(conditions)} conditions in '# ORDER'"
        )
    grouped: Dict[int, list] = {}
    for cond, items in zip(conditions, panas):
        grouped.setdefault(cond, []).append(items)
    width = min(len(v) for rows in grouped.values() for v in rows)
    return {c: np.mean([v[:width] for v in rows], axis=0) for c, rows in grouped.items()}


def check_window(window_s: float, ecg_segments: int = 6, name: str = "window_s") -> None:
    """ValueError/TypeError naming ``name`` unless ``window_s`` is a finite length > 0 that gives every
    ECG sub-window at least one sample."""
    check_positive(name, window_s)
    check_int_at_least("ecg_segments", ecg_segments, 1)
    if int(round(window_s * CHEST_HZ)) < ecg_segments:
        raise ValueError(
            f"{name} must be at least {ecg_segments} samples at {CHEST_HZ} Hz "
            f"({ecg_segments / CHEST_HZ:g} s) for ecg_segments={ecg_segments}, got {window_s}"
        )


def load_wesad_subject(folder: str, subject: str, *, window_s: float = 10.0, ecg_segments: int = 6, n_items: int = 20):
    """One subject -> (features float32 [windows, F], labels float32 [windows, n_items], conditions int64 [windows]).

    The pickle is read with ``load_plain_pickle`` (numpy arrays and builtin containers only).
    """
    check_window(window_s, ecg_segments)
    file = os.path.join(folder, subject, f"{subject}.pkl")
    where = f"WESAD subject {subject} ({file})"
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{where}: file not found (expected <root>/{subject}/{subject}.pkl)")
    try:
        record = load_plain_pickle(file)
    except UnsafePickleError as exc:
        raise ValueError(f"{where}: refused: {exc.reason}") from None
    except Exception as exc:
        raise ValueError(f"{where}: cannot be unpickled ({exc})") from exc
    if not isinstance(record, dict) or "signal" not in record or "label" not in record:
        raise ValueError(f"{where}: expected a dict with keys 'signal' and 'label'")
    label = np.asarray(record["label"]).reshape(-1)
    chest = {n: _signal(record, "chest", n, where, a) for n, a in (("ECG", 1), ("EDA", 1), ("ACC", 3))}
    wrist = {n: _signal(record, "wrist", n, where, a) for n, a in (("BVP", 1), ("EDA", 1), ("ACC", 3))}
    for name, sig in chest.items():
        if len(sig) != len(label):
            raise ValueError(
                f"{where}: signal['chest']['{name}'] has {len(sig)} samples but 'label' has {len(label)} "
                "(both are 700 Hz)"
            )
    quest_csv = os.path.join(folder, subject, f"{subject}_quest.csv")
    if "questionnaire" in record:
        panas = _panas_from_pickle(record["questionnaire"], where)
    elif os.path.isfile(quest_csv):
        panas = read_quest_csv(quest_csv)
    else:
        raise ValueError(f"{where}: no PANAS answers: neither a 'questionnaire' entry nor {quest_csv}")
    for cond, items in panas.items():
        if len(items) < n_items:
            raise ValueError(
                f"{where}: PANAS vector of condition {cond} has {len(items)} items, need n_items={n_items}"
            )

    win = int(round(window_s * CHEST_HZ))
    rows, labels, conds = [], [], []
    for start in range(0, len(label) - win + 1, win):
        seg = label[start : start + win]
        cond = int(seg[0])
        if cond not in CONDITIONS or not (seg == cond).all() or cond not in panas:
            continue
        t0, t1 = start / CHEST_HZ, (start + win) / CHEST_HZ
        sl = {hz: slice(int(round(t0 * hz)), int(round(t1 * hz))) for hz in (BVP_HZ, WRIST_EDA_HZ, WRIST_ACC_HZ)}
        wrist_parts = (wrist["BVP"][sl[BVP_HZ]], wrist["EDA"][sl[WRIST_EDA_HZ]], wrist["ACC"][sl[WRIST_ACC_HZ]])
        if min(len(p) for p in wrist_parts) < 2:
            continue  # the wrist recording ended before the chest one
        rows.append(
            window_features(
                chest["ECG"][start : start + win],
                chest["EDA"][start : start + win],
                chest["ACC"][start : start + win],
                *wrist_parts,
                ecg_segments,
            )
        )
        labels.append(panas[cond][:n_items])
        conds.append(cond)
    if not rows:
        raise ValueError(f"{where}: no {window_s:g} s window lies within a single condition 1..4 with PANAS answers")
    features = np.stack(rows)
    if not np.isfinite(features).all():
        raise ValueError(f"{where}: a signal contains NaN or inf")
    return features.astype(np.float32), normalize_distribution(np.stack(labels), where), np.array(conds, dtype=np.int64)


def load_wesad(
    path: str,
    subjects: Optional[Sequence[str]] = None,
    *,
    window_s: float = 10.0,
    ecg_segments: int = 6,
    n_items: int = 20,
) -> EmotionDataset:
    """Load ``<path>/SX/SX.pkl`` for each subject (None: every SX folder present) into an EmotionDataset.

    ``trials`` of the result holds each window's condition (1 baseline .. 4 meditation).
    """
    check_window(window_s, ecg_segments)
    check_int_at_least("n_items", n_items, 1)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"WESAD path {path!r} is not a directory (expected <root>/SX/SX.pkl per subject)")
    if subjects is None:
        subjects = sorted(
            (
                d
                for d in os.listdir(path)
                if d.startswith("S") and d[1:].isdigit() and os.path.isdir(os.path.join(path, d))
            ),
            key=lambda d: int(d[1:]),
        )
        if not subjects:
            raise FileNotFoundError(f"no SX subject folders (e.g. S2/S2.pkl) in WESAD directory {path!r}")
    layout = wesad_layout(ecg_segments, n_items)
    features, labels, index, conds = [], [], [], []
    for i, subject in enumerate(subjects):
        x, y, c = load_wesad_subject(path, subject, window_s=window_s, ecg_segments=ecg_segments, n_items=n_items)
        features.append(x)
        labels.append(y)
        conds.append(c)
        index.append(np.full(len(x), i, dtype=np.int64))
    return EmotionDataset(
        features=np.concatenate(features),
        labels=np.concatenate(labels),
        subjects=np.concatenate(index),
        subject_ids=list(subjects),
        layout=layout,
        name=f"WESAD({path})",
        trials=np.concatenate(conds),
    )
