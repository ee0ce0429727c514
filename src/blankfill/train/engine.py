"""The training engine: everything about an optimizer step that is not the task.

Pretraining (``train/loop.py``) and fine-tuning (``finetune/loop.py``: cloze, classifier head,
seq2seq) both build one ``Engine`` and call ``Engine.step``. The task supplies only its loss (a
summed loss and a count of what it sums over) and its evaluation. The engine owns:

- device placement, and data parallelism (``dist.strategy``): DDP, or FSDP2 ``fully_shard`` on
  every block and then the root (``train/distributed.py``);
- precision ``auto | fp32 | bf16 | fp16``: autocast to bf16/fp16 with fp32 weights; fp16 adds a
  ``torch.amp.GradScaler``; ``auto`` is ``blankfill.hardware.choose_precision`` at the model's width;
- gradient accumulation with the loss normalised by the *global* count (over micro-batches and
  ranks, style §3.4), gradient sync on the last micro-batch only, clipping;
- activation checkpointing and ``torch.compile``, both per Transformer block;
- the non-finite guard, without a host sync: the fused AdamW kernel takes a ``found_inf`` tensor
  and skips the update (and its step count) on device when the loss or the gradient norm is not
  finite. The loop reads the flags back at its logging interval only.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import allocator
from ..config import OptimConfig
from ..kernels import onednn_available, training_by_onednn, training_kernels_
from .distributed import DistInfo, all_reduce_sum, no_grad_sync, wrap_model
from .optim import build_optimizer, set_lr

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: A task's loss on one micro-batch: (summed loss with grad, detached float64 stats whose entry 0
#: is the same summed loss). Called with the wrapped module (call it, so DDP/FSDP hooks run).
LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
#: How many units (target tokens, examples) a micro-batch's summed loss is over, on the device.
CountFn = Callable[[Any], torch.Tensor]


def resolve_precision(precision: str, device: torch.device, width: int | None = None) -> str:
    """``auto`` -> ``hardware.choose_precision(device, width=width)`` (``width``: the model's
    hidden size); checks the others can run here."""
    if precision == "auto":
        from ..hardware import choose_precision

        choice = choose_precision(device, width=width)
        log.info("precision auto -> %s (%s)", choice.precision, choice.reason)
        return choice.precision
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16; use precision=fp16 (with loss scaling) or fp32")
    return precision


def _width(blocks: Sequence[nn.Module]) -> int | None:
    """The hidden size of the blocks (their first LayerNorm's), for ``precision = "auto"``."""
    for module in blocks[0].modules() if blocks else ():
        if isinstance(module, nn.LayerNorm):
            return int(module.normalized_shape[-1])
    return None


def checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward instead of keeping them (per-block
    activation checkpointing). Applied from outside: the block's parameters and state-dict keys
    are unchanged; without grad (evaluation, decoding) the block runs as before."""
    inner = block.forward

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward  # type: ignore[method-assign]


class TaskModule(nn.Module):
    """The GLM plus a task's extra trained modules (a classifier head), called with the task's
    function: ``module(fn, *args)`` returns ``fn(glm, head, *args)``. Wrapping this one module
    with DDP/FSDP makes every task computation (``glm.hidden``, ``glm.logits``, the head) run
    inside the wrapper's forward, where DDP prepares its reducer and FSDP gathers parameters."""

    def __init__(self, glm: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.glm = glm
        self.head = head

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.glm, self.head, *args)


@dataclass
class StepResult:
    """One optimizer step, all on the device (read back at the logging interval)."""

    stats: torch.Tensor  # float64 [k]: the task's summed stats over micro-batches and ranks
    count: torch.Tensor  # float64 []: the global count the loss was divided by
    grad_norm: torch.Tensor  # float32 []: before clipping
    finite: torch.Tensor  # bool []: the update was applied


class Engine:
    """A module ready to train: placed, wrapped, with its optimizer and precision.

    Args:
        module: owns every trained parameter (``TargetLogits`` or ``TaskModule``).
        blocks: the Transformer blocks (checkpointed, compiled and sharded one by one).
        optim: the optimizer section (AdamW, fused, so the guard skips on device).
        info: this process.
        device: where to train.
        strategy: ``ddp`` or ``fsdp`` (several processes only).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        compile: ``torch.compile`` every block.
        activation_checkpointing: recompute every block's activations in backward.
        clip_grad: max global gradient norm (0: no clipping; the norm is still reported).
        keep_freed_memory: on the CPU, let glibc's malloc keep freed memory for the next step
            (``blankfill.allocator``; process-wide): no page faults on each step's large tensors.
        cpu_linears: fp32 CPU training: the blocks' Linears by ``"onednn"`` or ``"mkl"``
            (PyTorch's own), or ``"auto"``: oneDNN where ``kernels.training_by_onednn``
            measures it faster (a measurement, so two processes may choose differently: a run
            that must repeat another bit for bit pins it; the pretraining loop pins a resumed
            run to its checkpoint's choice).
    """

    def __init__(
        self,
        module: nn.Module,
        blocks: Sequence[nn.Module],
        optim: OptimConfig,
        *,
        info: DistInfo,
        device: torch.device,
        strategy: str = "ddp",
        precision: str = "fp32",
        compile: bool = False,
        activation_checkpointing: bool = False,
        clip_grad: float = 1.0,
        keep_freed_memory: bool = True,
        cpu_linears: str = "auto",
    ) -> None:
        if cpu_linears not in ("auto", "onednn", "mkl"):
            raise ValueError(f"cpu_linears must be auto, onednn or mkl, got {cpu_linears!r}")
        self.info, self.device, self.strategy = info, device, strategy
        self.precision = resolve_precision(precision, device, width=_width(blocks))
        self.clip_grad = clip_grad
        self.module = module.to(device)
        self.memory_kept = (
            device.type == "cpu" and keep_freed_memory and allocator.keep_freed_memory()
        )
        # fp32 on the CPU: the blocks' Linears by oneDNN where it measures faster than MKL
        # (``blankfill.kernels``; same parameters, rounding-level differences).
        self.onednn_linears = (
            self.precision == "fp32"
            and device.type == "cpu"
            and not compile
            and onednn_available()
            and (training_by_onednn() if cpu_linears == "auto" else cpu_linears == "onednn")
        )
        for block in blocks:
            if self.onednn_linears:
                training_kernels_(block)
            if activation_checkpointing:
                checkpoint_block(block)
            if compile:
                block.compile()
        self.sharded = info.wrapped and strategy == "fsdp"
        self.wrapped = wrap_model(self.module, list(blocks), strategy, info, device)
        self.optimizer = build_optimizer(self.module, optim, fused=True)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.scaler = (
            torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        )  # fp16's narrow range: scale the loss so small gradients do not flush to zero

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's autocast context (a no-op in fp32)."""
        if self.precision in DTYPES:
            return torch.autocast(self.device.type, dtype=DTYPES[self.precision])
        return contextlib.nullcontext()

    def step(self, micro: Sequence[Any], loss: LossFn, count: CountFn, lr: float) -> StepResult:
        """One optimizer step over this rank's micro-batches (already on the device).

        The loss is ``sum of every micro-batch's summed loss over every rank / global count``,
        so micro-batches and ranks weigh units (tokens, examples), not batches. No host sync.
        """
        set_lr(self.optimizer, lr)
        total = torch.stack([count(b).double() for b in micro]).sum()
        total = all_reduce_sum(total, self.info)
        scale = self.info.world_size / total.clamp(min=1.0)  # the wrappers average over ranks
        stats: torch.Tensor | None = None
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            with no_grad_sync(self.wrapped, self.strategy, self.info, sync=last):
                with self.autocast():
                    loss_sum, s = loss(self.wrapped, batch)
                scaled = loss_sum * scale.to(loss_sum.dtype)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            stats = s if stats is None else stats + s
        assert stats is not None, "a step needs at least one micro-batch"
        all_reduce_sum(stats, self.info)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        gnorm = nn.utils.clip_grad_norm_(self.params, self.clip_grad or math.inf)
        if hasattr(gnorm, "full_tensor"):  # FSDP2: a DTensor norm
            gnorm = gnorm.full_tensor()
        finite = torch.isfinite(stats[0]) & torch.isfinite(gnorm)
        self._guarded_step(finite)
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(stats=stats, count=total, grad_norm=gnorm.detach(), finite=finite)

    def _guarded_step(self, finite: torch.Tensor) -> None:
        # The fused AdamW kernel reads ``found_inf`` (the GradScaler protocol) and leaves
        # parameters, moments and step counts untouched where it is 1: a skipped step without
        # reading the flag back to the host.
        opt = self.optimizer
        opt.grad_scale = None  # type: ignore[attr-defined]
        opt.found_inf = (~finite).float()  # type: ignore[attr-defined]
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf  # type: ignore[attr-defined]

    @torch.no_grad()
    def weights_finite(self) -> bool:
        """Whether every parameter is finite (a host sync; the guard calls it before saving)."""
        bad = torch.zeros((), device=self.device)
        for p in self.module.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            bad += (~torch.isfinite(local)).sum()
        return not bool(all_reduce_sum(bad, self.info).item())


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated bytes on a CUDA device since the last reset (None elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


__all__ = [
    "Engine",
    "StepResult",
    "TaskModule",
    "checkpoint_block",
    "peak_memory_bytes",
    "resolve_precision",
]
