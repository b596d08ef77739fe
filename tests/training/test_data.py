"""Datasets: synthetic generator, splits, DMER (.mat) and WESAD (.pkl) loaders."""

import codecs
import os
import pickle

import numpy as np
import pytest
from scipy.io import savemat

from crafted import RunsShellCommand, WritesMarker
from helo_fast.data import (
    FeatureLayout,
    kfold_splits,
    load_dataset,
    load_dmer,
    load_wesad,
    loso_splits,
    make_synthetic_dataset,
    standardize,
    subject_dependent_splits,
    wesad_layout,
)
from helo_fast.data.safe_pickle import UnsafePickleError, load_plain_pickle
from helo_fast.data.synthetic import emotion_groups, partner_of


# --- synthetic ------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_dmer_shaped():
    a = make_synthetic_dataset(n_subjects=3, trials_per_subject=4, rows_per_trial=2, seed=5)
    b = make_synthetic_dataset(n_subjects=3, trials_per_subject=4, rows_per_trial=2, seed=5)
    c = make_synthetic_dataset(n_subjects=3, trials_per_subject=4, rows_per_trial=2, seed=6)
    assert a.features.shape == (24, 913) and a.labels.shape == (24, 10) and a.features.dtype == np.float32
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.features, c.features)
    np.testing.assert_allclose(a.labels.sum(1), 1.0, rtol=1e-6)
    assert sorted(set(a.subjects.tolist())) == [0, 1, 2]


def _ridge_r2(x_train, y_train, x_test, y_test, lam=100.0):
    mean, std = x_train.mean(0), x_train.std(0) + 1e-9
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    w = np.linalg.solve(xtr.T @ xtr + lam * np.eye(xtr.shape[1]), xtr.T @ (y_train - y_train.mean(0)))
    pred = xte @ w + y_train.mean(0)
    return 1 - ((pred - y_test) ** 2).sum(0) / ((y_test - y_test.mean(0)) ** 2).sum(0)


def test_synthetic_labels_depend_on_the_right_modality():
    data = make_synthetic_dataset(n_subjects=4, trials_per_subject=50, rows_per_trial=5, seed=0)
    train, test = data.trials % 2 == 0, data.trials % 2 == 1  # unseen trials
    cols = data.layout.block_slices()
    physio_cols = np.r_[cols["eeg"], cols["gsr"], cols["ppg"]]
    physio, video, both = emotion_groups(10)
    r2 = {
        name: _ridge_r2(data.features[train][:, c], data.labels[train], data.features[test][:, c], data.labels[test])
        for name, c in (("physio", physio_cols), ("video", np.arange(cols["video"].start, cols["video"].stop)))
    }
    assert r2["physio"][physio].min() > 0.4 and r2["video"][physio].max() < 0.15  # physiology-only emotions
    assert r2["video"][video].min() > 0.4 and r2["physio"][video].max() < 0.15  # video-only emotions
    assert r2["physio"][both].min() > 0.3 and r2["video"][both].min() > 0.3


def test_synthetic_emotions_co_occur_with_their_partner():
    data = make_synthetic_dataset(n_subjects=4, trials_per_subject=50, rows_per_trial=1, seed=1)
    partner = partner_of(10)
    primary = data.labels.argmax(1)
    second = np.argsort(data.labels, axis=1)[:, -2]
    share = (second == partner[primary]).mean()
    assert share > 0.4  # 50% of trials have the partner; a random runner-up would be ~11%
    assert len(set(primary.tolist())) == 10


def test_synthetic_small_layout_and_bad_arguments():
    layout = FeatureLayout(n_channels=3, band_features=2, gsr_features=4, ppg_features=4, video_features=8, n_classes=6)
    data = make_synthetic_dataset(n_subjects=2, trials_per_subject=3, rows_per_trial=2, layout=layout)
    assert data.features.shape == (12, 22) and data.labels.shape == (12, 6)
    with pytest.raises(ValueError, match="n_subjects"):
        make_synthetic_dataset(n_subjects=0)


# --- splits ---------------------------------------------------------------------------------------
def test_splits_cover_rows_without_overlap():
    data = make_synthetic_dataset(n_subjects=5, trials_per_subject=4, rows_per_trial=5, seed=0)
    for split in subject_dependent_splits(data, test_fraction=0.2, seed=1):
        assert not set(split.train) & set(split.test)
        subject = data.subjects[split.test[0]]
        assert set(split.train) | set(split.test) == set(data.rows_of(subject).tolist())
        assert len(split.test) == 4
    assert [len(s.test) for s in loso_splits(data)] == [20] * 5
    folds = kfold_splits(data, folds=2, seed=0)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(data)))
    for f in folds:
        assert not set(data.subjects[f.train]) & set(data.subjects[f.test])
    with pytest.raises(ValueError, match="folds"):
        kfold_splits(data, folds=6)
    train, test = standardize(data.features[:50], data.features[50:])
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)


# --- DMER -----------------------------------------------------------------------------------------
def _write_dmer(folder, subject, rows=6, trials=3, base=1, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    fields = {
        "feas": rng.standard_normal((rows, 913)),
        "vids": (np.arange(rows) % trials + base)[:, None].astype(float),
        "dis_label": rng.uniform(0.1, 5.0, (trials, 10)),
    }
    fields.update(overrides)
    fields = {k: v for k, v in fields.items() if v is not None}
    savemat(os.path.join(folder, f"{subject}.mat"), fields)
    return fields


def test_dmer_round_trip(tmp_path):
    written = {sid: _write_dmer(tmp_path, sid, seed=sid, base=1 if sid == 1 else 0) for sid in (1, 5)}
    data = load_dmer(str(tmp_path))
    assert data.subject_ids == ["1", "5"] and data.features.shape == (12, 913)
    for i, sid in enumerate((1, 5)):
        rows = data.rows_of(i)
        fields = written[sid]
        np.testing.assert_allclose(data.features[rows], fields["feas"], rtol=1e-6)
        trial = fields["vids"][:, 0].astype(int) - (1 if sid == 1 else 0)
        expected = fields["dis_label"][trial] / fields["dis_label"][trial].sum(1, keepdims=True)
        np.testing.assert_allclose(data.labels[rows], expected, rtol=1e-6)
    assert load_dmer(str(tmp_path), subjects=[5]).subject_ids == ["5"]
    assert len(load_dataset("dmer", str(tmp_path))) == 12


def test_dmer_errors_name_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dmer(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no <subject_id>.mat"):
        load_dmer(str(tmp_path))
    _write_dmer(tmp_path, 7, dis_label=None)
    with pytest.raises(ValueError, match=r"DMER subject 7 .*7\.mat.*missing field.*dis_label"):
        load_dmer(str(tmp_path))
    _write_dmer(tmp_path, 7, feas=np.zeros((6, 900)))
    with pytest.raises(ValueError, match=r"7\.mat.*'feas' must have shape \[rows, 913\]"):
        load_dmer(str(tmp_path))
    _write_dmer(tmp_path, 7, vids=np.full((6, 1), 9.0))
    with pytest.raises(ValueError, match=r"7\.mat.*'vids'.*3 trials"):
        load_dmer(str(tmp_path))
    _write_dmer(tmp_path, 7, vids=np.ones((5, 1)))
    with pytest.raises(ValueError, match=r"7\.mat.*'vids' must be a vector of 6"):
        load_dmer(str(tmp_path))
    _write_dmer(tmp_path, 7)
    with pytest.raises(FileNotFoundError, match=r"subject\(s\) \[8\]"):
        load_dmer(str(tmp_path), subjects=[7, 8])


# --- WESAD ----------------------------------------------------------------------------------------
def _wesad_record(seconds_per_label=((1, 10), (0, 3), (2, 10), (3, 10), (4, 10)), seed=0):
    rng = np.random.default_rng(seed)
    label = np.concatenate([np.full(int(s * 700), c) for c, s in seconds_per_label])
    total = len(label) / 700
    n = lambda hz, axes=1: rng.standard_normal((int(round(total * hz)), axes))  # noqa: E731
    chest = {"ECG": n(700), "EDA": n(700), "EMG": n(700), "Resp": n(700), "Temp": n(700), "ACC": n(700, 3)}
    wrist = {"BVP": n(64), "EDA": n(4), "TEMP": n(4), "ACC": n(32, 3)}
    panas = {c: rng.integers(1, 6, 26).astype(float) for c in (1, 2, 3, 4)}
    return {
        "signal": {"chest": chest, "wrist": wrist},
        "label": label,
        "subject": "S2",
        "questionnaire": {"baseline": panas[1], 2: panas[2], "amusement": panas[3], 4: panas[4]},
    }, panas


def _write_wesad(root, subject, record, protocol=pickle.DEFAULT_PROTOCOL):
    os.makedirs(os.path.join(root, subject), exist_ok=True)
    with open(os.path.join(root, subject, f"{subject}.pkl"), "wb") as fh:
        pickle.dump(record, fh, protocol=protocol)


def test_wesad_round_trip(tmp_path):
    record, panas = _wesad_record()
    _write_wesad(tmp_path, "S2", record)
    record3, panas3 = _wesad_record(seed=3)
    _write_wesad(tmp_path, "S3", record3)
    data = load_wesad(str(tmp_path), window_s=5.0)
    layout = wesad_layout()
    assert data.layout == layout and data.features.shape[1] == layout.n_features == 6 * 5 + 12 + 9 + 40
    assert data.subject_ids == ["S2", "S3"]
    rows = data.rows_of(0)
    # 5 s windows from t=0: baseline 0-10 s -> 2; transient 10-13 s; stress 13-23 s -> only [15, 20);
    # amusement 23-33 s -> [25, 30); meditation 33-43 s -> [35, 40)
    conditions = data.trials[rows].tolist()
    assert conditions == [1, 1, 2, 3, 4]
    for row, cond in zip(rows, conditions):
        np.testing.assert_allclose(data.labels[row], panas[cond][:20] / panas[cond][:20].sum(), rtol=1e-6)
    assert np.isfinite(data.features).all()
    # the chest ECG drives the query block: change it and only that block changes
    record["signal"]["chest"]["ECG"] = record["signal"]["chest"]["ECG"] * 3
    _write_wesad(tmp_path, "S2", record)
    changed = load_wesad(str(tmp_path), subjects=["S2"], window_s=5.0)
    diff = np.abs(changed.features - data.features[rows]).max(0)
    assert diff[:30].max() > 0 and diff[30:].max() == 0


def test_wesad_questionnaire_csv(tmp_path):
    record, _ = _wesad_record()
    del record["questionnaire"]
    _write_wesad(tmp_path, "S2", record)
    rows = {"base": [1] * 20 + [2] * 4, "tsst": [5] * 26, "medi 1": [2] * 24, "fun": [3] * 24, "medi 2": [4] * 24}
    lines = ["# Subj;S2", "# ORDER;Base;TSST;Medi 1;Fun;Medi 2;sRead;fRead"]
    lines += ["# PANAS;" + ";".join(str(v) for v in values) for values in rows.values()]
    (tmp_path / "S2" / "S2_quest.csv").write_text("\n".join(lines) + "\n")
    data = load_wesad(str(tmp_path), window_s=5.0)
    med = data.labels[data.trials == 4]
    np.testing.assert_allclose(med, np.full((len(med), 20), 1 / 20), rtol=1e-6)  # mean of Medi 1 and 2
    assert len(med) == 1 and (data.trials == 1).sum() == 2


def test_wesad_errors_name_subject_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_wesad(str(tmp_path / "missing"))
    record, _ = _wesad_record()
    del record["signal"]["wrist"]["BVP"]
    _write_wesad(tmp_path, "S2", record)
    with pytest.raises(ValueError, match=r"WESAD subject S2 .*signal\['wrist'\]\['BVP'\]"):
        load_wesad(str(tmp_path))
    record, _ = _wesad_record()
    record["label"] = record["label"][:-7]
    _write_wesad(tmp_path, "S2", record)
    with pytest.raises(ValueError, match=r"S2 .*'chest'\]\['ECG'\] has .* samples but 'label'"):
        load_wesad(str(tmp_path))
    record, _ = _wesad_record()
    del record["questionnaire"]
    _write_wesad(tmp_path, "S2", record)
    with pytest.raises(ValueError, match="S2.*no PANAS answers"):
        load_wesad(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"S9 .*file not found"):
        load_wesad(str(tmp_path), subjects=["S9"])


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_wesad_pickles_of_every_protocol_load(tmp_path, protocol):
    record, _ = _wesad_record()
    record["extra"] = {
        "bytes": b"\x00\xff",
        "tuple": (1, 2.5, "x"),
        "set": {1},
        "scalar": np.float32(2.0),
        "ints": np.arange(3, dtype=np.int16),
        "fortran": np.asfortranarray(np.ones((2, 3))),
    }
    _write_wesad(tmp_path / "a", "S2", record)
    _write_wesad(tmp_path / "b", "S2", record, protocol=protocol)
    expected = load_wesad(str(tmp_path / "a"), window_s=5.0)
    np.testing.assert_array_equal(load_wesad(str(tmp_path / "b"), window_s=5.0).features, expected.features)
    loaded = load_plain_pickle(str(tmp_path / "b" / "S2" / "S2.pkl"))
    assert loaded["extra"]["bytes"] == b"\x00\xff" and loaded["extra"]["tuple"] == (1, 2.5, "x")
    assert loaded["extra"]["fortran"].flags.f_contiguous and loaded["extra"]["ints"].dtype == np.int16


def _crafted_records(marker):
    record, _ = _wesad_record()
    inside_signal, _ = _wesad_record()
    inside_signal["signal"]["chest"]["ECG"] = WritesMarker(marker)
    in_object_array, _ = _wesad_record()
    in_object_array["questionnaire"][2] = np.array([RunsShellCommand(marker)], dtype=object)
    return {
        "file-is-payload": WritesMarker(marker),
        "inside-signal": inside_signal,
        "object-array": in_object_array,
        "shell-command": {**record, "subject": RunsShellCommand(marker)},
    }


@pytest.mark.parametrize("kind", ["file-is-payload", "inside-signal", "object-array", "shell-command"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_crafted_wesad_pickle_never_runs_code(tmp_path, kind, protocol):
    marker = tmp_path / "marker"
    _write_wesad(tmp_path, "S2", _crafted_records(marker)[kind], protocol=protocol)
    file = os.path.join(str(tmp_path), "S2", "S2.pkl")
    # The object array is refused at its dtype, before the callable inside it is named.
    reason = "'O8' is not a plain numeric dtype" if kind == "object-array" else "not a numpy array, dtype or builtin"
    with pytest.raises(ValueError, match="refused") as error:
        load_wesad(str(tmp_path), window_s=5.0)
    assert file in str(error.value) and reason in str(error.value)
    with pytest.raises(UnsafePickleError, match=reason) as error:
        load_plain_pickle(file)
    assert file in str(error.value)
    assert not marker.exists()


def test_crafted_codec_call_is_refused(tmp_path):
    class Rot13:
        def __reduce__(self):
            return codecs.encode, ("text", "rot13")

    _write_wesad(tmp_path, "S2", {"signal": Rot13()}, protocol=2)
    with pytest.raises(ValueError, match="S2.pkl.*encoded as latin-1.*'rot13'"):
        load_wesad(str(tmp_path), window_s=5.0)


@pytest.mark.parametrize(
    "window_s, message",
    [
        (0.0, "window_s must be a finite float > 0"),
        (float("nan"), "window_s must be a finite float > 0"),
        (0.001, "window_s must be at least 6 samples"),
    ],
)
def test_wesad_window_is_checked(tmp_path, window_s, message):
    with pytest.raises(ValueError, match=message):
        load_wesad(str(tmp_path), window_s=window_s)
