"""The pretraining objective: logits of the target rows, summed cross-entropy, held-out loss.

Loss (spec §3.3 notes, style §3.4): the sum of target-token cross-entropies over every micro-batch
of every rank, divided by the global count of target tokens, so that varying Part-B lengths weigh
tokens, not samples. Logits are computed only on target rows (``model.logits(h[targets])``); the
row index is computed on the host before the batch moves to the device (``target_index``), so
selecting the rows does not read a device tensor back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import OBJECTIVES, Batch
from ..model import GLM, rows_from
from .distributed import DistInfo, all_reduce_sum

N_OBJ = len(OBJECTIVES)
#: Logit rows the CPU cross-entropy handles at once (32 x 8192 fp32 = 1 MiB: in a core's L2).
CE_ROWS = 32


def target_index(batch: Batch) -> torch.Tensor:
    """Flat indices [N] of the target tokens of ``batch`` (rows of ``h.flatten(0, 1)``)."""
    return (batch.loss_mask.flatten() > 0).nonzero().squeeze(1)


def first_target_row(index: torch.Tensor, T: int) -> int:
    """The first column of a [B, T] batch holding a target (0 for none), from a host-side
    ``target_index``: the last block runs from there (``GLM.hidden(first_row=...)``)."""
    return int((index % T).min()) if len(index) else 0


def to_device(batch: Batch, device: torch.device) -> tuple[Batch, torch.Tensor, int]:
    """(the batch, its ``target_index``, its ``first_target_row``) on ``device``; to a GPU from
    pinned memory without waiting for the copy (index and row are computed on the host first)."""
    index = target_index(batch)
    first = first_target_row(index, batch.input_ids.shape[1])
    if device.type != "cuda":
        return batch.to(device), index.to(device), first

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory().to(device, non_blocking=True)

    moved = Batch(**{k: None if v is None else move(v) for k, v in vars(batch).items()})
    return moved, move(index), first


class TargetLogits(nn.Module):
    """The GLM with the pretraining head: logits of the target rows only, [N, V]."""

    def __init__(self, glm: GLM) -> None:
        super().__init__()
        self.glm = glm

    def forward(
        self, batch: Batch, index: torch.Tensor | None = None, first_row: int | None = None
    ) -> torch.Tensor:
        """Logits [N, V] of the target rows (``index`` from ``target_index``; else computed).

        The last block computes the rows from ``first_row`` (``first_target_row``, host-side, as
        ``to_device`` gives it) on only (``GLM.hidden(first_row=...)``: glm-small's fp32 and
        bf16 steps 1.12x on an Intel Xeon with AMX). None: computed from ``index`` on the CPU;
        on an accelerator that would read the index back, so all rows run.
        """
        index = target_index(batch) if index is None else index
        T = batch.input_ids.shape[1]
        first = first_row
        if first is None:
            first = first_target_row(index, T) if index.device.type == "cpu" else 0
        h = self.glm.hidden(
            batch.input_ids, batch.position_ids, batch.context_len, batch.attention_mask,
            segment_ids=batch.segment_ids, context_end=batch.context_end, first_row=first,
        )  # [B, T - first, D]  # fmt: skip
        return self.glm.logits(h.flatten(0, 1).index_select(0, rows_from(index, T, first)))


class _RowCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy in fp32 (fp64 for fp64) of logits of any float dtype, a few rows
    at a time."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64
        lse = torch.empty(len(logits), dtype=dtype)
        picked = logits.gather(1, labels[:, None]).squeeze(1).to(dtype)  # [N]
        for x, out in zip(logits.split(CE_ROWS), lse.split(CE_ROWS), strict=True):
            torch.logsumexp(x.to(dtype), 1, out=out)
        ctx.save_for_backward(logits, labels, lse)
        return lse - picked  # [N]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        logits, labels, lse = ctx.saved_tensors
        dx = torch.empty_like(logits)
        rows = torch.arange(min(CE_ROWS, len(logits)))
        pieces = (t.split(CE_ROWS) for t in (logits, labels, lse, grad.to(lse.dtype), dx))
        for x, lab, m, g, out in zip(*pieces, strict=True):
            p = (x.to(lse.dtype) - m[:, None]).exp_()  # softmax [n, V]
            p[rows[: len(lab)], lab] -= 1.0
            out.copy_(p.mul_(g[:, None]))
        return dx, None


def target_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), labels, reduction="none")`` [N] for valid labels. On the
    CPU a few rows at a time in fp32 (``CE_ROWS``), so neither the fp32 copy of bf16 logits nor
    the full softmax and its gradient are made: on an Intel Xeon with AMX (2026-12-02, one thread,
    glm-small batch of 8 in bf16) the loss took ~150 ms of a 2.1 s step that way."""
    if logits.device.type != "cpu":
        return F.cross_entropy(logits.float(), labels, reduction="none")
    return _RowCrossEntropy.apply(logits, labels)


def loss_sums(
    logits: torch.Tensor, batch: Batch, index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed target cross-entropy (with grad) and detached stats.

    Args:
        logits: [N, V] for the N target rows of ``batch``.
        batch: the micro-batch.
        index: ``target_index(batch)`` (computed when None).

    Returns:
        ``(ce_sum, stats)``: ``ce_sum`` a scalar; ``stats`` float64 [2 + 2 * objectives]:
        ce sum, target count, per-objective ce sums, per-objective counts.
    """
    index = target_index(batch) if index is None else index

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.flatten().index_select(0, index)  # [N]

    weight = rows(batch.loss_mask).float()  # [N]
    ce = target_cross_entropy(logits, rows(batch.labels)) * weight  # [N]
    obj = rows(batch.objective).clamp(0, N_OBJ - 1)  # [N]
    stats = torch.zeros(2 + 2 * N_OBJ, dtype=torch.float64, device=logits.device)
    stats[0] = ce.detach().sum()
    stats[1] = weight.sum()
    stats[2 : 2 + N_OBJ].index_add_(0, obj, ce.detach().double())
    stats[2 + N_OBJ :].index_add_(0, obj, weight.double())
    return ce.sum(), stats


def summarize(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """``{loss, loss/MASK, ...}`` from summed stats (objectives with no targets are omitted)."""
    s = stats.tolist()
    out = {f"{prefix}loss": s[0] / max(s[1], 1.0)}
    for i, name in enumerate(OBJECTIVES):
        if s[2 + N_OBJ + i] > 0:
            out[f"{prefix}loss/{name}"] = s[2 + i] / s[2 + N_OBJ + i]
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable[Batch], device: torch.device, info: DistInfo, autocast=None
) -> dict[str, float]:
    """Token-averaged held-out loss (and per objective) of a ``TargetLogits`` over ``batches``."""
    autocast = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    total = torch.zeros(2 + 2 * N_OBJ, dtype=torch.float64, device=device)
    for batch in batches:
        batch, index, first = to_device(batch, device)  # index and row from the host: no read-back
        with autocast():
            logits = model(batch, index, first)
        total += loss_sums(logits, batch, index)[1]
    model.train(was_training)
    return summarize(all_reduce_sum(total, info))


__all__ = [
    "N_OBJ",
    "TargetLogits",
    "evaluate",
    "first_target_row",
    "loss_sums",
    "summarize",
    "target_cross_entropy",
    "target_index",
    "to_device",
]
