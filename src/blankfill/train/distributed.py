"""Process group set-up and model wrapping. The ONLY place that reads rank/world-size env vars.

``torchrun --nproc-per-node N -m blankfill pretrain ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; ``init_distributed`` reads them once into a ``DistInfo`` that is passed explicitly
from then on. ``wrap_model`` applies DDP, or FSDP2 (``fully_shard`` on every block, then the root).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..config import DistConfig
from ..device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: global rank, number of processes, rank on this node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: a process group (and wrapper) even for one

    @property
    def wrapped(self) -> bool:
        """Whether the model gets a DDP/FSDP wrapper (several processes, or torchrun's one)."""
        return self.distributed or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """The torchrun environment (rank 0 of 1 when absent). Reads env vars; nothing else does."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            launched="TORCHELASTIC_RUN_ID" in os.environ,
        )
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from None


def init_distributed(cfg: DistConfig, device: torch.device) -> DistInfo:
    """Read the torchrun environment and, with several processes, join the process group."""
    info = env_dist_info()
    if info.wrapped and not dist.is_initialized():
        backend = cfg.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend,
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(minutes=30),
        )
    return info


def teardown(info: DistInfo) -> None:
    if info.wrapped and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks, in place (a no-op on one process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def wrap_model(
    module: nn.Module, blocks: list[nn.Module], strategy: str, info: DistInfo, device: torch.device
) -> nn.Module:
    """Wrap ``module`` for data-parallel training; one process returns it unchanged.

    Args:
        module: the module whose ``forward`` the loop calls (it owns every trained parameter).
        blocks: the Transformer blocks, each sharded on its own under FSDP2.
        strategy: ``ddp`` or ``fsdp``.
        info: this process.
        device: where the module lives.

    Both wrappers average gradients over ranks; the loop scales its loss by ``world_size`` so the
    result is the gradient of the global token-averaged loss.
    """
    if not info.wrapped:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(module, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        fully_shard(module)
        return module
    raise ValueError(f"dist.strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def no_grad_sync(model: nn.Module, strategy: str, info: DistInfo, sync: bool):
    """A context in which backward does (``sync``) or does not all-reduce gradients."""
    import contextlib

    if not info.wrapped or sync:
        if info.wrapped and strategy == "fsdp":
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if strategy == "ddp":
        return model.no_sync()
    model.set_requires_gradient_sync(False)
    return contextlib.nullcontext()


__all__ = [
    "DistInfo",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "env_dist_info",
    "init_distributed",
    "no_grad_sync",
    "resolve_device",
    "teardown",
    "wrap_model",
]
