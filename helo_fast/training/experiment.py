"""One run of a protocol: ``run_experiment(dataset, model_config, train_config)``, or ``run_plan(dataset, plan)`` for
a plan already made (``plan.plan_run``: the device and the backends, resolved once).

It trains one fresh model per split of the protocol (subject-dependent, leave-one-subject-out or subject-wise
k-fold), scores it with the six metrics of HELO_SPEC §9, computes two baselines on the same splits (the
training-set mean distribution and a single-modality MLP) and returns / writes the summary (mean ± std over
splits).

Checkpoints (``checkpoint_dir``) are written atomically (temp file, then ``os.replace``) every
``checkpoint_every`` epochs and at the end of every split. They hold the model, optimiser,
scheduler, epoch, finished splits and every RNG state (``rng_state``) and, for 16-mixed, the gradient scaler, so
``resume=True`` continues bit-for-bit. A resume is refused unless the run's fingerprint matches (``fingerprint``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import EmotionDataset, Split, make_splits, standardize
from ..metrics import METRIC_NAMES
from ..models import HeLo, HeLoConfig
from .atomic_files import remove_stale_temps
from .baselines import mean_baseline, train_mlp_baseline
from .checkpoint import CheckpointError, atomic_save, load_latest_good, previous_path
from .config import TRAIN_DTYPES, TrainConfig
from .distributed import all_gather_tensor, all_reduce_sum, close_distributed, init_distributed, shard, wrap_model
from .fingerprint import fingerprint_differences, run_fingerprint
from .plan import RunPlan, plan_run
from .precision import grad_scaler
from .report import summarize, write_json
from .resume_state import check_run_state, check_split_state
from .rng_state import rng_state, set_rng_state
from .run_dir import claim_run_dir
from .saved_model import saved_model_state
from .step import evaluate, make_optimizer, train_step

CHECKPOINT_FORMAT = "helo_fast-train-v2"
CHECKPOINT_NAME = "checkpoint.pt"


class TrainingDiverged(ValueError):
    """The model's parameters or loss stopped being finite during training."""


def checkpoint_size_cap(model_config: HeLoConfig, dtype: torch.dtype) -> int:
    """The most bytes a training checkpoint of ``model_config`` may have: the parameters and Adam's two moments,
    plus 64 MiB for the RNG states, history and JSON."""
    params = sum(p.numel() for p in HeLo(model_config).parameters())
    return 3 * params * torch.empty((), dtype=dtype).element_size() + (64 << 20)


@dataclass
class SplitState:
    """What one split trains and a mid-split checkpoint holds: the model, its optimiser, scheduler, gradient
    scaler (16-mixed) and shuffling generator, the epochs done, their records and the seconds they took."""

    model: HeLo
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional[torch.amp.GradScaler]
    shuffle: torch.Generator
    epoch: int = 0
    history: List[dict] = field(default_factory=list)
    seconds: float = 0.0


class Experiment:
    """One run of a protocol: splits, per-split training, baselines, checkpoints, summary."""

    def __init__(
        self, dataset: EmotionDataset, plan: RunPlan, on_epoch_end: Optional[Callable[[int, int, dict], None]] = None
    ):
        model_config, cfg = plan.model_config, plan.train_config
        if model_config.n_features != dataset.layout.n_features or model_config.n_classes != dataset.layout.n_classes:
            raise ValueError(
                f"model_config expects rows of {model_config.n_features} features and "
                f"{model_config.n_classes} classes; dataset {dataset.name} has "
                f"{dataset.layout.n_features} and {dataset.layout.n_classes}"
            )
        self.dataset, self.plan, self.model_config, self.cfg = dataset, plan, model_config, cfg
        self.device = plan.device
        self.dtype = TRAIN_DTYPES[cfg.dtype]
        self.dist = init_distributed(self.device)
        self.on_epoch_end = on_epoch_end
        splits = make_splits(dataset, cfg.protocol, folds=cfg.folds, test_fraction=cfg.test_fraction, seed=cfg.seed)
        self.splits: List[Split] = splits[: cfg.max_splits] if cfg.max_splits else splits
        self.fingerprint: Optional[dict] = None  # set by run() once the thread count is set, with checkpoint_dir
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
        return (
            as_t(x_train),
            as_t(self.dataset.labels[split.train]),
            as_t(x_test),
            as_t(self.dataset.labels[split.test]),
        )

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
            raise ValueError(
                f"checkpoint {path!r} was written by a different run ({'; '.join(differences)}): "
                "the results depend on each of these, so a resume must match them (the same dataset, "
                "model and training options, --threads, device, number of processes and backends); "
                "or start a fresh --checkpoint-dir"
            )
        return state

    # -- one split: build (or restore), train epoch by epoch, save
    def _build_split(self, split_seed: int) -> SplitState:
        """This split's fresh model, optimiser, scheduler, scaler and shuffling generator (seeded from
        ``split_seed``; ranks draw independent DropKey/dropout masks, rank 0 keeps the single-process seed)."""
        cfg = self.cfg
        torch.manual_seed(split_seed)
        model = HeLo(self.model_config, mask_seed=split_seed + 1 + 1_000_003 * self.dist.rank).to(
            self.device, self.dtype
        )
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)
        scaler = grad_scaler(cfg.precision, self.device)
        shuffle = torch.Generator().manual_seed(split_seed + 2)
        return SplitState(model, optimizer, scheduler, scaler, shuffle)

    def _restore(self, state: dict, split: SplitState) -> None:
        """Load a mid-split checkpoint's state into ``split``, each field checked against its fresh objects first."""
        path = self._checkpoint_path()
        masks = [split.model.mask_generator.get_state()] * self.dist.world_size
        check_split_state(
            state,
            path,
            model=split.model,
            optimizer=split.optimizer,
            scheduler=split.scheduler,
            scaler=split.scaler,
            rng_template=rng_state(masks, split.shuffle),
        )
        try:
            split.model.load_state_dict(state["model"])
            split.optimizer.load_state_dict(state["optimizer"])
            split.scheduler.load_state_dict(state["scheduler"])
            if split.scaler is not None:
                split.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], split.model.mask_generator, split.shuffle, rank=self.dist.rank)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise CheckpointError(
                f"checkpoint {path!r}: its state cannot be restored ({type(exc).__name__}: {exc})"
            ) from None
        split.epoch, split.history, split.seconds = state["epoch"], state["history"], state["seconds"]

    def _check_finite(
        self, model: nn.Module, split: Split, epoch: int, cause: Optional[Exception], force: bool = False
    ) -> None:
        """Raise TrainingDiverged when the parameters (or, with ``force``, the loss) are no longer finite."""
        if not force and all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return
        raise TrainingDiverged(
            f"training diverged in {split.name}, epoch {epoch + 1}: the model's parameters or loss are no longer "
            f"finite; lower the learning rate (lr = {self.cfg.lr}; the default is 1e-3), or check the --config "
            "values (lambda_corr, beta)"
        ) from cause

    def _train_epoch(self, state: SplitState, trained: nn.Module, split: Split, data) -> dict:
        """One epoch of ``state``'s model (``trained``: it, wrapped for DDP): the shuffled batches, each rank's
        share of them, then the test metrics. Returns the epoch's record (train loss parts and test metrics)."""
        cfg, model, epoch = self.cfg, state.model, state.epoch
        x_train, y_train, x_test, y_test = data
        tic = time.perf_counter()
        model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, kl, corr summed over batches
        batches = torch.randperm(x_train.shape[0], generator=state.shuffle).split(cfg.batch_size)
        for idx in batches:
            rows, weight = shard(idx, self.dist), 1.0
            if len(rows) == 0:  # a last global batch smaller than the job: join the all-reduce with weight 0
                rows, weight = idx[:1], 0.0
            rows = rows.to(self.device)
            try:
                loss, parts = train_step(
                    trained,
                    state.optimizer,
                    x_train[rows],
                    y_train[rows],
                    config=self.model_config,
                    batch_total=len(idx) if self.dist.enabled else None,
                    loss_scale=weight * self.dist.world_size,
                    precision=cfg.precision,
                    scaler=state.scaler,
                )
            except ValueError as exc:  # the ops refuse non-finite inputs: say why they became non-finite
                self._check_finite(model, split, epoch, exc)
                raise
            totals += weight * torch.stack([loss.detach(), parts["kl"], parts["corr"]]).double()
        all_reduce_sum(totals, self.dist)
        if not bool(torch.isfinite(totals).all()):
            self._check_finite(model, split, epoch, None, force=True)
        totals = dict(zip(("loss", "kl", "corr"), totals.tolist()))
        state.scheduler.step()
        state.seconds += time.perf_counter() - tic
        metrics = evaluate(
            model, x_test, y_test, cfg.batch_size, self.model_config.eval_first_sample_only, self.dist, cfg.precision
        )
        record = {"epoch": epoch + 1, **{f"train_{k}": v / len(batches) for k, v in totals.items()}, **metrics}
        state.history.append(record)
        state.epoch = epoch + 1
        self._log(
            f"{split.name} epoch {epoch + 1}/{cfg.epochs}  train loss {record['train_loss']:.4f} "
            f"(kl {record['train_kl']:.4f}, corr {record['train_corr']:.4f})  test: "
            + "  ".join(f"{m} {metrics[m]:.4f}" for m in METRIC_NAMES)
        )
        return record

    def _save_checkpoint(self, index: int, state: SplitState, results: List[dict]) -> None:
        """Checkpoint the split in progress. Every rank takes part: rank 0 writes each rank's mask-generator state."""
        masks = all_gather_tensor(state.model.mask_generator.get_state(), self.dist, self.device)
        if self._writes_checkpoints():
            atomic_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "fingerprint": self.fingerprint,
                    "results": results,
                    "split_index": index,
                    "epoch": state.epoch,
                    "history": state.history,
                    "seconds": state.seconds,
                    "model": state.model.state_dict(),
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(),
                    "rng": rng_state(masks, state.shuffle),
                    "scaler": None if state.scaler is None else state.scaler.state_dict(),
                },
                self._checkpoint_path(),
            )

    def _train_split(self, index: int, split: Split, resume_state: Optional[dict], results: List[dict]) -> dict:
        """Train a fresh model on ``split`` (or continue the one in ``resume_state``), score it and the baselines;
        returns the split's result (metrics, history, sizes, seconds)."""
        cfg = self.cfg
        split_seed = cfg.seed + 7919 * index
        data = self._tensors(split)
        state = self._build_split(split_seed)
        if resume_state is not None:
            self._restore(resume_state, state)
        trained = wrap_model(state.model, self.dist, self.device)  # DistributedDataParallel under torchrun
        bar = tqdm(
            range(state.epoch, cfg.epochs),
            desc=f"{split.name} ({index + 1}/{len(self.splits)})",
            initial=state.epoch,
            total=cfg.epochs,
            disable=not self.bars,
            leave=False,
        )
        for _ in bar:
            record = self._train_epoch(state, trained, split, data)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", test_kl=f"{record['kl']:.4f}")
            if cfg.checkpoint_dir and (state.epoch % cfg.checkpoint_every == 0 or state.epoch == cfg.epochs):
                self._save_checkpoint(index, state, results)
            if self.on_epoch_end is not None:
                self.on_epoch_end(index, state.epoch, record)
        bar.close()
        x_train, y_train, x_test, y_test = data
        result = {
            "split": split.name,
            "train_rows": len(split.train),
            "test_rows": len(split.test),
            "train_seconds": state.seconds,
            "helo": {m: state.history[-1][m] for m in METRIC_NAMES},
            "history": state.history,
        }
        if cfg.baselines:
            result["mean"] = mean_baseline(y_train, y_test)
            columns = self.dataset.layout.block_slices()[cfg.baseline_modality]
            result["mlp"] = train_mlp_baseline(x_train, y_train, x_test, y_test, columns, cfg, split_seed + 3)
        if self._writes_checkpoints() and cfg.save_models:
            atomic_save(
                saved_model_state(state.model, self.model_config, self.dataset, split, cfg),
                os.path.join(cfg.checkpoint_dir, f"model_{index}.pt"),
                keep_previous=False,
            )
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
        if self._writes_checkpoints():  # temp files of killed saves (checkpoints are ~3x the model each)
            remove_stale_temps(self.cfg.checkpoint_dir)
        if self.cfg.checkpoint_dir:  # only checkpoints carry it (hashing a large dataset takes a moment)
            self.fingerprint = run_fingerprint(self.dataset, self.plan, world_size=self.dist.world_size)
        state = self._load_checkpoint()
        results: List[dict] = [] if state is None else list(state["results"])
        split_bar = tqdm(total=len(self.splits), initial=len(results), desc="splits", disable=not self.bars)
        for index in range(len(results), len(self.splits)):
            # A mid-split checkpoint carries the model; the one written after a split does not.
            resume_state = state if state is not None and state["split_index"] == index and "model" in state else None
            results.append(self._train_split(index, self.splits[index], resume_state, results))
            state = None
            if self._writes_checkpoints():
                atomic_save(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": self.fingerprint,
                        "results": results,
                        "split_index": index + 1,
                        "epoch": 0,
                    },
                    self._checkpoint_path(),
                )
            split_bar.update(1)
        split_bar.close()
        summary = summarize(results, self.cfg)
        summary.update(
            dataset=self.dataset.name,
            protocol=self.cfg.protocol,
            device=str(self.device),
            world_size=self.dist.world_size,
            rank=self.dist.rank,
            train_config=dataclasses.asdict(self.cfg),
            model_config=self.model_config.to_dict(),
            splits=results,
        )
        if self.cfg.output_json and self.dist.is_main:
            write_json(summary, self.cfg.output_json)
        return summary


def run_experiment(dataset: EmotionDataset, model_config: HeLoConfig, cfg: TrainConfig, **kwargs) -> dict:
    """Train and evaluate HeLo (and the baselines) on ``dataset`` under ``cfg.protocol``; see Experiment.

    ValueError for a device or precision that cannot train here, RuntimeError for a backend that cannot run one of
    HeLo's ops here (see ``plan.plan_run``); ``kwargs``: ``on_epoch_end``. Returns the summary dict.
    """
    return run_plan(dataset, plan_run(model_config, cfg), **kwargs)


def run_plan(dataset: EmotionDataset, plan: RunPlan, **kwargs) -> dict:
    """``run_experiment`` of a plan already made (``plan.plan_run``)."""
    experiment = Experiment(dataset, plan, **kwargs)
    try:
        return experiment.run()
    finally:
        close_distributed(experiment.dist)
