"""Data-parallel training across processes (``torchrun --nproc-per-node N -m helo_fast train ...``).

Each global batch of ``batch_size`` rows is sharded across the ranks (rank r takes rows r, r+N, ...
of it); every rank's loss is its exact share of the global-batch loss (``helo_loss(batch_total=)``)
and is scaled by N because DistributedDataParallel averages gradients, so the update equals a
single-process step on the whole global batch. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank in [0, world_size)."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process created the process group (and destroys it in close_distributed)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, JSON and the printed tables."""
        return self.rank == 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1); else single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    owns_group = not dist.is_initialized()
    if owns_group:
        # Imported after the group exists, torch._dynamo (which the optimizers and DistributedDataParallel import
        # on first use) keeps references to it (torch 2.13), so destroy_process_group would leave its threads alive.
        import torch._dynamo  # noqa: F401

        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), owns_group)


def close_distributed(ctx: DistContext) -> None:
    """Destroy the process group ``init_distributed`` created (a group the caller made is left alone), joining its
    worker threads.

    A process that exits with the group alive can abort at exit ("terminate called without an active exception"):
    a gloo worker thread that releases a finished collective's tensors takes the GIL, and a thread that asks for it
    while the interpreter finalizes is ended in the middle of C++ code. tests/support/ddp_resume_worker.py checks that
    no gloo thread outlives a run.
    """
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, each process uses the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def shard(rows: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's rows of a global batch of row indices (rank r takes r, r + N, ...)."""
    return rows[ctx.rank :: ctx.world_size] if ctx.enabled else rows


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_tensor(tensor: torch.Tensor, ctx: DistContext, device: torch.device) -> List[torch.Tensor]:
    """``tensor`` (same shape and dtype on every rank) from every rank, in rank order, as CPU tensors.

    ``device``: where the collective runs (the rank's CUDA device under nccl). One process: ``[tensor]``.
    """
    if not ctx.enabled:
        return [tensor]
    local = tensor.to(device)
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    return [t.cpu() for t in gathered]


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when the job has several processes."""
    if not ctx.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
