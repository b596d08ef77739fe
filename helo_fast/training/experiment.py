"""Training and evaluation of HeLo under the evaluation protocols, with baselines and checkpoints.

``run_experiment(dataset, model_config, train_config)`` trains one fresh model per split of the
protocol (subject-dependent, leave-one-subject-out or subject-wise k-fold), scores it with the six
metrics of HELO_SPEC §9, computes two baselines on the same splits (the training-set mean
distribution and a single-modality MLP) and returns / writes the summary (mean ± std over splits).

Checkpoints (``checkpoint_dir``) are written atomically (temp file, then ``os.replace``) every
``checkpoint_every`` epochs and at the end of every split. They hold the model, optimiser,
scheduler, epoch, finished splits and every RNG state (torch, CUDA, each rank's mask generator,
the shuffling generator, numpy, python) and, for 16-mixed, the gradient scaler, so ``resume=True``
continues bit-for-bit. A resume is refused unless the run's fingerprint matches: the options that
change the numbers (the precision among them), the thread count, the device, the number of
processes and the backends the ops resolved to.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .._backend import choose_backend
from .atomic_files import remove_stale_temps, write_atomic
from .checkpoint import CheckpointError, atomic_save, load_checked, load_latest_good, previous_path
from .distributed import (DistContext, all_gather_tensor, all_reduce_sum, close_distributed, init_distributed,
                          local_device, shard, wrap_model)
from ..data import EmotionDataset, Split, make_splits, standardize
from ..metrics import LOWER_IS_BETTER, METRIC_NAMES, edl_metrics
from ..models import HeLo, HeLoConfig, helo_loss
from .precision import autocast, check_precision, grad_scaler
from .resume_state import check_run_state, check_split_state
from .run_dir import claim_run_dir
from .saved_model import build_saved_model, check_saved_model
from .config import TRAIN_DTYPES, TrainConfig, resolve_device

CHECKPOINT_FORMAT = "helo_fast-train-v2"
MODEL_FORMAT = "helo_fast-model-v2"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAMES = {"helo": "HeLo", "mlp": "MLP ({})", "mean": "train mean"}
# The custom ops a HeLo forward/backward runs (each resolved to a backend by choose_backend).
MODEL_OPS = ("lcd_attention", "gromov_wasserstein", "seeded_dropout")


class TrainingDiverged(ValueError):
    """The model's parameters or loss stopped being finite during training."""


# ----------------------------------------------------------------------------- checkpoints
def rng_state(mask_states: List[torch.Tensor], shuffle: Optional[torch.Generator]) -> dict:
    """Every RNG state a run depends on; ``mask_states``: each rank's mask-generator state, in rank order
    (the other generators are drawn from identically on every rank)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "masks": list(mask_states),
            "shuffle": None if shuffle is None else shuffle.get_state(),
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict, mask_generator: Optional[torch.Generator], shuffle: Optional[torch.Generator],
                  rank: int = 0) -> None:
    """Restore what ``rng_state`` saved (the generators in place; ``mask_generator`` gets rank ``rank``'s state)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None:
        mask_generator.set_state(state["masks"][rank])
    if shuffle is not None and state["shuffle"] is not None:
        shuffle.set_state(state["shuffle"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoint_size_cap(model_config: HeLoConfig, dtype: torch.dtype) -> int:
    """The most bytes a training checkpoint of ``model_config`` may have: the parameters and Adam's two moments,
    plus 64 MiB for the RNG states, history and JSON."""
    params = sum(p.numel() for p in HeLo(model_config).parameters())
    return 3 * params * torch.empty((), dtype=dtype).element_size() + (64 << 20)


def model_backends(backend: str, device: torch.device) -> Dict[str, str]:
    """The backend each op of HeLo resolves to for ``backend`` on ``device`` (RuntimeError if one cannot run)."""
    return {op: choose_backend(backend, device, op) for op in MODEL_OPS}


def dataset_digest(dataset: EmotionDataset) -> str:
    """SHA-256 of the dataset's arrays (features, labels, subjects): a resume must see the same data."""
    digest = hashlib.sha256()
    for array in (dataset.features, dataset.labels, dataset.subjects):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def run_fingerprint(dataset: EmotionDataset, model_config: HeLoConfig, cfg: TrainConfig, *, device: torch.device,
                    world_size: int = 1) -> dict:
    """What must match for a checkpoint to be resumed: the options that change the numbers, and the
    environment that does (torch's thread count, device, number of processes, kernel choices)."""
    keys = ("protocol", "epochs", "batch_size", "lr", "weight_decay", "lr_gamma", "seed", "folds", "test_fraction",
            "max_splits", "baselines", "baseline_modality", "dtype", "precision")
    environment = {"threads": torch.get_num_threads(), "world_size": world_size, "device": device.type,
                   "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "HELO_FAST_CPU_ISA": os.environ.get("HELO_FAST_CPU_ISA"),
                   "backends": model_backends(model_config.backend, device)}
    return {"train": {k: getattr(cfg, k) for k in keys}, "model": model_config.to_dict(), "environment": environment,
            "dataset": {"name": dataset.name, "rows": len(dataset), "features": int(dataset.features.shape[1]),
                        "sha256": dataset_digest(dataset)}}


def fingerprint_differences(saved, current, prefix: str = "") -> List[str]:
    """"key.sub: checkpoint X, this run Y" for every entry where two fingerprints differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in list(current) + [k for k in saved if k not in current]:
            out += fingerprint_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == current else [f"{prefix[:-1]}: checkpoint {saved!r}, this run {current!r}"]


# ----------------------------------------------------------------------------- evaluation
def scored_rows(n_rows: int, batch_size: int, first_sample_only: bool) -> np.ndarray:
    """Rows that count in the metrics: all, or (release defect) the first row of each test batch."""
    rows = np.arange(n_rows)
    return rows[::batch_size] if first_sample_only else rows


def make_optimizer(model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """HELO_SPEC §7's Adam, PyTorch's fused implementation: one pass over each parameter instead of about ten
    (on CPU ~12x faster than the default for-loop at HeLo's 4 M parameters, ~20% of a fused-model training step).

    Its rounding differs from the default implementation's in an ulp here and there, which HeLo's GW step amplifies
    as it does any rounding change (~0.2% in the metrics after 2 epochs); a 2-process DDP run still equals the
    single-process one (tests/test_distributed.py, torch 2.13; an earlier session's torch did not, and kept the
    default).
    """
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               config: Optional[HeLoConfig] = None, batch_total: Optional[int] = None, loss_scale: float = 1.0,
               precision: str = "32", scaler: Optional[torch.amp.GradScaler] = None):
    """One optimisation step: forward and HeLo loss (``config``'s terms, default ``model.config``) under the
    autocast of ``precision`` (``precision.py``), backward of ``loss * loss_scale`` (scaled by ``scaler`` when
    given, for 16-mixed), optimiser step.

    x: [B, F] features; y: [B, C] target distributions; ``batch_total``: see ``helo_loss`` (the
    global batch size in data-parallel training). Returns (loss, {"kl", "corr"}).
    """
    config = model.config if config is None else config
    with autocast(precision, x.device):
        loss, parts = helo_loss(model(x), y, kl_reduction=config.kl_reduction, lambda_corr=config.lambda_corr,
                                batch_total=batch_total)
    optimizer.zero_grad()
    total = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is None:
        total.backward()
        optimizer.step()
    else:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss, parts


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, precision: str = "32") -> torch.Tensor:
    """Predicted distributions [rows, C] of ``model`` (eval mode) in batches of ``batch_size``, under the autocast
    of ``precision``."""
    model.eval()
    outs = []
    for start in range(0, x.shape[0], batch_size):
        with autocast(precision, x.device):
            out = model(x[start:start + batch_size])
        outs.append(out.probs if isinstance(out, tuple) else out.exp())
    return torch.cat(outs)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             first_sample_only: bool = False, ctx: DistContext = DistContext(), precision: str = "32") -> Dict[str, float]:
    """The six metrics of ``model`` on (x [rows, F], y [rows, C]) (``first_sample_only``: release defect), its
    predictions made in ``precision``.

    Under data parallelism each rank scores its share of the rows and the per-row sums are reduced.
    """
    rows = torch.from_numpy(scored_rows(x.shape[0], batch_size, first_sample_only)).to(x.device)
    if not ctx.enabled:
        probs = predict(model, x, batch_size, precision)
        return edl_metrics(y[rows].cpu(), probs[rows].cpu())
    mine = shard(rows, ctx)
    sums = torch.zeros(len(METRIC_NAMES) + 1, dtype=torch.float64, device=x.device)
    if len(mine):
        per_row = edl_metrics(y[mine].cpu(), predict(model, x[mine], batch_size, precision).cpu(), per_sample=True)
        sums[:-1] = torch.stack([per_row[m].sum() for m in METRIC_NAMES]).to(x.device)
        sums[-1] = len(mine)
    all_reduce_sum(sums, ctx)
    return {m: float(sums[i] / sums[-1]) for i, m in enumerate(METRIC_NAMES)}


# ----------------------------------------------------------------------------- baselines
class SingleModalityMLP(nn.Module):
    """Baseline: one block of the row (e.g. the video features) -> Linear -> ReLU -> Dropout -> Linear
    -> log_softmax. forward(x [B, F]) -> log-probabilities [B, C]."""

    def __init__(self, columns: slice, n_classes: int, hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        self.columns = columns
        self.net = nn.Sequential(nn.Linear(columns.stop - columns.start, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x[:, self.columns]), dim=-1)


def mean_baseline(y_train: torch.Tensor, y_test: torch.Tensor) -> Dict[str, float]:
    """Metrics of predicting the training-set mean distribution for every test row."""
    mean = y_train.double().mean(dim=0, keepdim=True)
    return edl_metrics(y_test.cpu(), mean.expand_as(y_test).cpu())


def train_mlp_baseline(x_train, y_train, x_test, y_test, columns: slice, cfg: TrainConfig, seed: int) -> Dict[str, float]:
    """Train the single-modality MLP with the run's optimiser settings; return its test metrics."""
    torch.manual_seed(seed)
    model = SingleModalityMLP(columns, y_train.shape[1]).to(x_train.device, x_train.dtype)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
    shuffle = torch.Generator().manual_seed(seed + 1)
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(x_train.shape[0], generator=shuffle).split(cfg.batch_size):
            idx = idx.to(x_train.device)
            loss = F.kl_div(model(x_train[idx]), y_train[idx], reduction="batchmean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return evaluate(model, x_test, y_test, cfg.batch_size)


# ----------------------------------------------------------------------------- the run
class Experiment:
    """One run of a protocol: splits, per-split training, baselines, checkpoints, summary."""

    def __init__(self, dataset: EmotionDataset, model_config: HeLoConfig, cfg: TrainConfig,
                 on_epoch_end: Optional[Callable[[int, int, dict], None]] = None):
        if model_config.n_features != dataset.layout.n_features or model_config.n_classes != dataset.layout.n_classes:
            raise ValueError(f"model_config expects rows of {model_config.n_features} features and "
                             f"{model_config.n_classes} classes; dataset {dataset.name} has "
                             f"{dataset.layout.n_features} and {dataset.layout.n_classes}")
        self.dataset, self.model_config, self.cfg = dataset, model_config, cfg
        self.device = local_device(resolve_device(cfg.device))
        self.dtype = TRAIN_DTYPES[cfg.dtype]
        check_precision("precision", cfg.precision, self.device, cfg.dtype)
        self.dist = init_distributed(self.device)
        self.on_epoch_end = on_epoch_end
        splits = make_splits(dataset, cfg.protocol, folds=cfg.folds, test_fraction=cfg.test_fraction, seed=cfg.seed)
        self.splits: List[Split] = splits[:cfg.max_splits] if cfg.max_splits else splits
        self.fingerprint: Optional[dict] = None   # set by run() once the thread count is set, with checkpoint_dir
        self.show = not cfg.quiet and self.dist.is_main
        self.bars = self.show and sys.stderr.isatty()

    # -- helpers
    def _log(self, text: str) -> None:
        if self.show:
            tqdm.write(text)

    def _writes_checkpoints(self) -> bool:
        """Every rank reads checkpoints on resume; rank 0 alone writes them."""
        return bool(self.cfg.checkpoint_dir) and self.dist.is_main

    def _checkpoint_path(self) -> Optional[str]:
        return None if not self.cfg.checkpoint_dir else os.path.join(self.cfg.checkpoint_dir, CHECKPOINT_NAME)

    def _tensors(self, split: Split):
        x_train, x_test = standardize(self.dataset.features[split.train], self.dataset.features[split.test])
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, self.dtype)  # noqa: E731
        return (as_t(x_train), as_t(self.dataset.labels[split.train]), as_t(x_test),
                as_t(self.dataset.labels[split.test]))

    def _load_checkpoint(self) -> Optional[dict]:
        path = self._checkpoint_path()
        if not self.cfg.resume or path is None:
            return None
        if not os.path.isfile(path) and not os.path.isfile(previous_path(path)):
            raise FileNotFoundError(f"--resume: no checkpoint at {path!r}")
        # A kill between atomic_save's renames leaves only <path>.prev. The file may hold no more than this run's
        # model, Adam's two moments and the small state beside them: a larger one is refused before it is read.
        state = load_latest_good(path, max_bytes=checkpoint_size_cap(self.model_config, self.dtype))
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path!r} is not a helo_fast training checkpoint (format {found!r})")
        check_run_state(state, path, n_splits=len(self.splits), epochs=self.cfg.epochs)
        differences = fingerprint_differences(state["fingerprint"], self.fingerprint)
        if differences:
            raise ValueError(f"checkpoint {path!r} was written by a different run ({'; '.join(differences)}): "
                             "the results depend on each of these, so a resume must match them (the same dataset, "
                             "model and training options, --threads, device, number of processes and backends); "
                             "or start a fresh --checkpoint-dir")
        return state

    def _restore(self, state: dict, model: nn.Module, optimizer, scheduler, scaler, shuffle) -> None:
        """Load a mid-split checkpoint's state, each field checked against this split's fresh objects first."""
        path = self._checkpoint_path()
        masks = [model.mask_generator.get_state()] * self.dist.world_size
        check_split_state(state, path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                          rng_template=rng_state(masks, shuffle))
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None:
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], model.mask_generator, shuffle, rank=self.dist.rank)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {path!r}: its state cannot be restored ({type(exc).__name__}: "
                                  f"{exc})") from None

    def _check_finite(self, model: nn.Module, split: Split, epoch: int, cause: Optional[Exception],
                      force: bool = False) -> None:
        """Raise TrainingDiverged when the parameters (or, with ``force``, the loss) are no longer finite."""
        if not force and all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return
        raise TrainingDiverged(
            f"training diverged in {split.name}, epoch {epoch + 1}: the model's parameters or loss are no longer "
            f"finite; lower the learning rate (lr = {self.cfg.lr}; the default is 1e-3), or check the --config "
            "values (lambda_corr, beta)") from cause

    # -- one split
    def _train_split(self, index: int, split: Split, resume_state: Optional[dict], results: List[dict]) -> dict:
        cfg = self.cfg
        split_seed = cfg.seed + 7919 * index
        x_train, y_train, x_test, y_test = self._tensors(split)
        torch.manual_seed(split_seed)
        # Ranks draw independent DropKey/dropout masks (rank 0 keeps the single-process seed).
        model = HeLo(self.model_config, mask_seed=split_seed + 1 + 1_000_003 * self.dist.rank).to(self.device, self.dtype)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
        scaler = grad_scaler(cfg.precision, self.device)
        shuffle = torch.Generator().manual_seed(split_seed + 2)
        start_epoch, history, seconds = 0, [], 0.0
        if resume_state is not None:
            self._restore(resume_state, model, optimizer, scheduler, scaler, shuffle)
            start_epoch, history, seconds = resume_state["epoch"], resume_state["history"], resume_state["seconds"]
        trained = wrap_model(model, self.dist, self.device)  # DistributedDataParallel under torchrun
        bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{split.name} ({index + 1}/{len(self.splits)})",
                   initial=start_epoch, total=cfg.epochs, disable=not self.bars, leave=False)
        for epoch in bar:
            tic = time.perf_counter()
            model.train()
            totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, kl, corr summed over batches
            batches = torch.randperm(x_train.shape[0], generator=shuffle).split(cfg.batch_size)
            for idx in batches:
                rows, weight = shard(idx, self.dist), 1.0
                if len(rows) == 0:  # a last global batch smaller than the job: join the all-reduce with weight 0
                    rows, weight = idx[:1], 0.0
                rows = rows.to(self.device)
                try:
                    loss, parts = train_step(trained, optimizer, x_train[rows], y_train[rows], config=self.model_config,
                                             batch_total=len(idx) if self.dist.enabled else None,
                                             loss_scale=weight * self.dist.world_size, precision=cfg.precision,
                                             scaler=scaler)
                except ValueError as exc:  # the ops refuse non-finite inputs: say why they became non-finite
                    self._check_finite(model, split, epoch, exc)
                    raise
                totals += weight * torch.stack([loss.detach(), parts["kl"], parts["corr"]]).double()
            all_reduce_sum(totals, self.dist)
            if not bool(torch.isfinite(totals).all()):
                self._check_finite(model, split, epoch, None, force=True)
            totals = dict(zip(("loss", "kl", "corr"), totals.tolist()))
            scheduler.step()
            seconds += time.perf_counter() - tic
            metrics = evaluate(model, x_test, y_test, cfg.batch_size, self.model_config.eval_first_sample_only, self.dist,
                               cfg.precision)
            record = {"epoch": epoch + 1, **{f"train_{k}": v / len(batches) for k, v in totals.items()}, **metrics}
            history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", test_kl=f"{metrics['kl']:.4f}")
            self._log(f"{split.name} epoch {epoch + 1}/{cfg.epochs}  train loss {record['train_loss']:.4f} "
                      f"(kl {record['train_kl']:.4f}, corr {record['train_corr']:.4f})  test: "
                      + "  ".join(f"{m} {metrics[m]:.4f}" for m in METRIC_NAMES))
            done = epoch + 1
            if self.cfg.checkpoint_dir and (done % cfg.checkpoint_every == 0 or done == cfg.epochs):
                # Every rank takes part: rank 0 writes each rank's own mask-generator state.
                masks = all_gather_tensor(model.mask_generator.get_state(), self.dist, self.device)
                if self._writes_checkpoints():
                    atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "results": results,
                                 "split_index": index, "epoch": done, "history": history, "seconds": seconds,
                                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict(), "rng": rng_state(masks, shuffle),
                                 "scaler": None if scaler is None else scaler.state_dict()},
                                self._checkpoint_path())
            if self.on_epoch_end is not None:
                self.on_epoch_end(index, done, record)
        bar.close()
        result = {"split": split.name, "train_rows": len(split.train), "test_rows": len(split.test),
                  "train_seconds": seconds, "helo": {m: history[-1][m] for m in METRIC_NAMES},
                  "history": history}
        if cfg.baselines:
            result["mean"] = mean_baseline(y_train, y_test)
            columns = self.dataset.layout.block_slices()[cfg.baseline_modality]
            result["mlp"] = train_mlp_baseline(x_train, y_train, x_test, y_test, columns, cfg, split_seed + 3)
        if self._writes_checkpoints() and cfg.save_models:
            atomic_save({"format": MODEL_FORMAT, "model_config": self.model_config.to_dict(),
                         "state_dict": model.state_dict(), "split": split.name, "dataset": self.dataset.name,
                         "dataset_rows": len(self.dataset), "dataset_sha256": dataset_digest(self.dataset),
                         "train_rows": split.train, "test_rows": split.test, "batch_size": cfg.batch_size, "dtype": cfg.dtype,
                         "precision": cfg.precision},
                        os.path.join(self.cfg.checkpoint_dir, f"model_{index}.pt"), keep_previous=False)
        return result

    def run(self) -> dict:
        """Train/evaluate every split (resuming when asked); return the summary dict (also written
        to ``output_json`` when set). The checkpoint directory is locked for the whole run, and one that holds
        another run is refused unless ``resume`` or ``overwrite`` (see ``run_dir``)."""
        lock = None
        if self._writes_checkpoints():
            lock = claim_run_dir(self.cfg.checkpoint_dir, resume=self.cfg.resume, overwrite=self.cfg.overwrite)
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        if self._writes_checkpoints():   # temp files of killed saves (checkpoints are ~3x the model each)
            remove_stale_temps(self.cfg.checkpoint_dir)
        if self.cfg.checkpoint_dir:  # only checkpoints carry it (hashing a large dataset takes a moment)
            self.fingerprint = run_fingerprint(self.dataset, self.model_config, self.cfg, device=self.device,
                                               world_size=self.dist.world_size)
        state = self._load_checkpoint()
        results: List[dict] = [] if state is None else list(state["results"])
        split_bar = tqdm(total=len(self.splits), initial=len(results), desc="splits", disable=not self.bars)
        for index in range(len(results), len(self.splits)):
            # A mid-split checkpoint carries the model; the one written after a split does not.
            resume_state = state if state is not None and state["split_index"] == index and "model" in state else None
            results.append(self._train_split(index, self.splits[index], resume_state, results))
            state = None
            if self._writes_checkpoints():
                atomic_save({"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "results": results,
                             "split_index": index + 1, "epoch": 0}, self._checkpoint_path())
            split_bar.update(1)
        split_bar.close()
        summary = summarize(results, self.cfg)
        summary.update(dataset=self.dataset.name, protocol=self.cfg.protocol, device=str(self.device),
                       world_size=self.dist.world_size, rank=self.dist.rank,
                       train_config=dataclasses.asdict(self.cfg), model_config=self.model_config.to_dict(),
                       splits=results)
        if self.cfg.output_json and self.dist.is_main:
            write_json(summary, self.cfg.output_json)
        return summary


def run_experiment(dataset: EmotionDataset, model_config: HeLoConfig, cfg: TrainConfig, **kwargs) -> dict:
    """Train and evaluate HeLo (and the baselines) on ``dataset`` under ``cfg.protocol``; see Experiment."""
    experiment = Experiment(dataset, model_config, cfg, **kwargs)
    try:
        return experiment.run()
    finally:
        close_distributed(experiment.dist)


# ----------------------------------------------------------------------------- reporting
def summarize(results: List[dict], cfg: TrainConfig) -> dict:
    """{"summary": {model: {metric: {"mean", "std"}}}, "models": display names} over the splits."""
    keys = [k for k in ("helo", "mlp", "mean") if all(k in r for r in results)]
    summary = {}
    for key in keys:
        summary[key] = {}
        for metric in METRIC_NAMES:
            values = np.array([r[key][metric] for r in results], dtype=np.float64)
            summary[key][metric] = {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0}
    names = {k: MODEL_NAMES[k].format(cfg.baseline_modality) for k in keys}
    return {"summary": summary, "models": names, "n_splits": len(results)}


def format_table(summary: dict) -> str:
    """The metrics table: one row per model, mean ± std over splits, arrows say which way is better."""
    header = ["model"] + [f"{m} {'↓' if LOWER_IS_BETTER[m] else '↑'}" for m in METRIC_NAMES]
    rows = [[summary["models"][key]] + [f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in METRIC_NAMES]
            for key, v in summary["summary"].items()]
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


# ----------------------------------------------------------------------------- eval of saved models
def evaluate_saved_models(dataset: EmotionDataset, files: List[str], device: str = "auto",
                          precision: Optional[str] = None) -> dict:
    """Re-score final models written by a run (``model_<i>.pt``) on their own test rows of ``dataset``, in
    ``precision`` (None: the precision each model was trained in).

    Returns a summary with the HeLo row only (see ``format_table``).
    """
    dev = resolve_device(device)
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
        metrics = evaluate(model, torch.from_numpy(x_test).to(dev, dtype), y_test, saved["batch_size"],
                           config.eval_first_sample_only, precision=file_precision)
        results.append({"split": saved["split"], "file": file, "helo": metrics})
    out = summarize(results, TrainConfig(baselines=False))
    out["splits"] = results
    return out
