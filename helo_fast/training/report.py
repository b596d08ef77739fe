"""A run's summary: mean and std of each metric over the splits, the printed table, the JSON file."""

from __future__ import annotations

import json
import math
from typing import List

import numpy as np

from ..metrics import LOWER_IS_BETTER, METRIC_NAMES
from .atomic_files import write_atomic
from .config import TrainConfig

MODEL_NAMES = {"helo": "HeLo", "mlp": "MLP ({})", "mean": "train mean"}


def summarize(results: List[dict], cfg: TrainConfig) -> dict:
    """{"summary": {model: {metric: {"mean", "std"}}}, "models": display names} over the splits."""
    keys = [k for k in ("helo", "mlp", "mean") if all(k in r for r in results)]
    summary = {}
    for key in keys:
        summary[key] = {}
        for metric in METRIC_NAMES:
            values = np.array([r[key][metric] for r in results], dtype=np.float64)
            std = float(values.std()) if len(values) > 1 else 0.0
            summary[key][metric] = {"mean": float(values.mean()), "std": std}
    names = {k: MODEL_NAMES[k].format(cfg.baseline_modality) for k in keys}
    return {"summary": summary, "models": names, "n_splits": len(results)}


def format_table(summary: dict) -> str:
    """The metrics table: one row per model, mean ± std over splits, arrows say which way is better."""
    header = ["model"] + [f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in METRIC_NAMES]
    rows = [
        [summary["models"][key]] + [f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in METRIC_NAMES]
        for key, v in summary["summary"].items()
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    text = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    text.append(f"(mean ± std over {summary['n_splits']} split(s))")
    return "\n".join(text)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(obj: dict, path: str) -> None:
    """Write ``obj`` as JSON atomically (exclusive temp file, then os.replace; see ``atomic_files``)."""
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default).encode())
