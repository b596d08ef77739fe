"""Model files (``model_<i>.pt``, the final model of each split of ``helo-fast train``): what one holds, the checks
of a loaded one before ``eval`` builds anything from it, and the re-scoring of saved models.

A file may not ask for more than ``FILE_CONFIG_CAPS`` (a ``d_model`` of 65536 made ``eval`` allocate 7 GB, an
``outer_iters`` of 2**31-1 ran forever); library callers of ``HeLoConfig`` are not capped. The data is matched
by content (SHA-256 of features, labels and subjects), not by path or row count. Every field is checked for type,
range and (tensors) shape: a bad file is a ``CheckpointError`` naming the file and the field.
"""

from __future__ import annotations

from typing import Any, List, Optional, Union

import numpy as np
import torch

from ..data import EmotionDataset, Split, standardize
from ..models import HeLo, HeLoConfig
from .checkpoint import CheckpointError, load_checked
from .config import TRAIN_DTYPES, TrainConfig, resolve_device
from .fingerprint import dataset_digest
from .precision import PRECISIONS, check_precision
from .report import summarize
from .resume_state import StateChecker
from .step import evaluate

MODEL_FORMAT = "helo_fast-model-v2"
# The most a model FILE may ask for (HELO_SPEC's model: d_model 128, 5 x 20 OT iterations, 913 features).
FILE_CONFIG_CAPS = {
    "d_model": 4096,
    "n_heads": 64,
    "lcd_heads": 64,
    "ffn_dim": 16384,
    "head_hidden": 16384,
    "outer_iters": 1000,
    "inner_iters": 10000,
    "n_channels": 1024,
    "band_features": 1024,
    "gsr_features": 4096,
    "ppg_features": 4096,
    "video_features": 16384,
    "n_classes": 1024,
}
MAX_BATCH_SIZE = 1 << 20


def saved_model_state(
    model: HeLo, model_config: HeLoConfig, dataset: EmotionDataset, split: Split, cfg: TrainConfig
) -> dict:
    """What ``model_<i>.pt`` holds for the final ``model`` of ``split``: weights, config, the rows it was trained
    and tested on, and what ``eval`` needs to score it as the run did (batch size, dtype, precision)."""
    return {
        "format": MODEL_FORMAT,
        "model_config": model_config.to_dict(),
        "state_dict": model.state_dict(),
        "split": split.name,
        "dataset": dataset.name,
        "dataset_rows": len(dataset),
        "dataset_sha256": dataset_digest(dataset),
        "train_rows": split.train,
        "test_rows": split.test,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "precision": cfg.precision,
    }


def _config(check: StateChecker, fields: Any, file: str) -> HeLoConfig:
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        check.fail("model_config", "a dict of HeLoConfig fields", fields)
    for name, cap in FILE_CONFIG_CAPS.items():
        if name in fields and (type(fields[name]) is not int or not 1 <= fields[name] <= cap):
            check.fail(
                f"model_config.{name}", f"an int in [1, {cap}] (the most a model file may ask for)", fields[name]
            )
    try:
        return HeLoConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model file {file!r}: field model_config: {exc}") from None


def _rows(check: StateChecker, rows: Any, field: str, n_rows: int) -> np.ndarray:
    if (
        not isinstance(rows, np.ndarray)
        or rows.ndim != 1
        or rows.dtype.kind not in "iu"
        or (len(rows) and (rows.min() < 0 or rows.max() >= n_rows))
    ):
        check.fail(field, f"a 1-D integer array of row indices in [0, {n_rows})", rows)
    return rows


def check_saved_model(saved: Any, file: str, dataset_sha256: str, n_rows: int, format_name: str):
    """(HeLoConfig, model dtype) of a loaded model file whose every field is checked; the model is built, and its
    ``state_dict`` checked against it, by ``build_saved_model``."""
    check = StateChecker(file)
    if not isinstance(saved, dict) or saved.get("format") != format_name:
        raise CheckpointError(f"{file!r} is not a model file written by `helo-fast train` (model_<i>.pt)")
    sha = saved.get("dataset_sha256")
    if sha is not None and sha != dataset_sha256:
        raise CheckpointError(
            f"{file!r} was trained on other data (SHA-256 {str(sha)[:12]}..., this dataset "
            f"{dataset_sha256[:12]}...): pass the dataset options used for training"
        )
    if sha is None and saved.get("dataset_rows") != n_rows:  # files written before the hash was stored
        raise CheckpointError(
            f"{file!r} was trained on {saved.get('dataset_rows')!r} rows, not on this dataset's "
            f"{n_rows}: pass the dataset options used for training"
        )
    for key, kind in (("split", str), ("batch_size", int), ("state_dict", dict)):
        if type(saved.get(key)) is not kind:
            check.fail(key, f"a {kind.__name__}", saved.get(key))
    check.integer(saved["batch_size"], "batch_size", 1, MAX_BATCH_SIZE)
    if saved.get("dtype", "float32") not in TRAIN_DTYPES:
        check.fail("dtype", f"one of {sorted(TRAIN_DTYPES)}", saved.get("dtype"))
    if saved.get("precision", "32") not in PRECISIONS:
        check.fail("precision", f"one of {list(PRECISIONS)}", saved.get("precision"))
    _rows(check, saved.get("train_rows"), "train_rows", n_rows)
    _rows(check, saved.get("test_rows"), "test_rows", n_rows)
    return _config(check, saved.get("model_config"), file), TRAIN_DTYPES[saved.get("dtype", "float32")]


def build_saved_model(saved: dict, config: HeLoConfig, file: str, device, dtype: torch.dtype) -> HeLo:
    """The model of a checked model file, its weights loaded after their names, shapes and dtypes are checked."""
    model = HeLo(config)
    StateChecker(file).like(saved["state_dict"], _cpu_state(model, dtype), "state_dict")
    model = model.to(device, dtype)
    model.load_state_dict(saved["state_dict"])
    return model


def _cpu_state(model: torch.nn.Module, dtype: torch.dtype) -> dict:
    return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in model.state_dict().items()}


def evaluate_saved_models(
    dataset: EmotionDataset,
    files: List[str],
    device: Union[str, torch.device] = "auto",
    precision: Optional[str] = None,
) -> dict:
    """Re-score final models written by a run (``model_<i>.pt``) on their own test rows of ``dataset``, in
    ``precision`` (None: the precision each model was trained in), on ``device`` (a name such as "auto", resolved
    by ``config.resolve_device``, or a device already resolved).

    Returns a summary with the HeLo row only (see ``format_table``).
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    results = []
    sha = dataset_digest(dataset)
    for file in files:
        saved = load_checked(file)
        config, dtype = check_saved_model(saved, file, sha, len(dataset), MODEL_FORMAT)
        file_precision = precision or saved.get("precision", "32")
        try:
            check_precision("precision", file_precision, dev, saved.get("dtype", "float32"))
        except ValueError as exc:
            raise ValueError(f"{file!r}: {exc}") from None
        model = build_saved_model(saved, config, file, dev, dtype)
        x_train, x_test = standardize(dataset.features[saved["train_rows"]], dataset.features[saved["test_rows"]])
        y_test = torch.from_numpy(dataset.labels[saved["test_rows"]]).to(dev, dtype)
        metrics = evaluate(
            model,
            torch.from_numpy(x_test).to(dev, dtype),
            y_test,
            saved["batch_size"],
            config.eval_first_sample_only,
            precision=file_precision,
        )
        results.append({"split": saved["split"], "file": file, "helo": metrics})
    out = summarize(results, TrainConfig(baselines=False))
    out["splits"] = results
    return out
