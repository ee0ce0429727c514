"""Batching ``Example``s into a ``Batch``: one sample per padded row, or several packed per row.

- ``collate_pad``: the official layout (``ConstructBlockStrategy.pad_batch``): each row holds one
  sample, right-padded with 0 to the longest; attention comes from ``context_len`` per row.
- ``collate_pack``: samples are packed first-fit into rows of at most ``row_len`` tokens; each
  sample keeps its own positions, and attention is isolated between samples by per-token
  ``segment_ids`` [R, T] (the sample of the row) and ``context_end`` [R, T] (where that sample's
  Part A ends), which the model expands on the device (``model.build_segment_mask``: query i sees
  key j iff both are in the same sample and j is in that sample's Part A or j <= i). Each padding
  token is a segment of its own, so it attends to itself only and no attention row is empty.
  Compact: 2 x 4 bytes per token instead of a [R, 1, T, T] bool mask (6.5 MB a glm-small batch)
  built in numpy and copied between processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .batch import Batch
from .corrupt import Example


def collate_pad(examples: Sequence[Example], *, pad_to: int | None = None) -> Batch:
    """One sample per row, right-padded with 0 (ids, labels, loss, positions) to the longest.

    Args:
        examples: B examples.
        pad_to: pad to at least this length (e.g. a fixed shape for compiled models).

    Returns:
        A ``Batch`` with ``context_len`` [B] and no ``attention_mask``.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    T = max(max(len(e) for e in examples), pad_to or 0)
    context_len = torch.tensor([e.context_len for e in examples], dtype=torch.long)
    return _rows_to_batch(examples, [[b] for b in range(len(examples))], T, context_len=context_len)


def _rows_to_batch(
    examples: Sequence[Example], rows: Sequence[Sequence[int]], T: int, **layout: torch.Tensor
) -> Batch:
    """Write each row's samples one after another into [R, T] arrays (zeros after them).

    ``layout`` is the row's attention form: ``context_len`` [R] or ``segment_ids`` and
    ``context_end`` [R, T].
    """
    R = len(rows)
    ids = np.zeros((R, T), np.int64)
    labels = np.zeros((R, T), np.int64)
    loss = np.zeros((R, T), np.float32)
    pos = np.zeros((R, 2, T), np.int64)
    obj = np.full((R, T), -1, np.int64)
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            ex = examples[i]
            sl = slice(o, o + len(ex))
            ids[r, sl], labels[r, sl], loss[r, sl] = ex.input_ids, ex.labels, ex.loss_mask
            pos[r, :, sl] = ex.position_ids
            obj[r, sl] = ex.objective
            o += len(ex)
    obj[loss <= 0] = -1  # only target tokens carry their sample's objective
    return Batch(
        input_ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        loss_mask=torch.from_numpy(loss),
        position_ids=torch.from_numpy(pos),
        objective=torch.from_numpy(obj),
        sample_index=torch.tensor([examples[m[0]].sample_index for m in rows], dtype=torch.long),
        **layout,
    )


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """First-fit assignment of samples (in stream order) to rows of capacity ``row_len``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        if n > row_len:
            raise ValueError(f"a sample of {n} tokens does not fit a packed row of {row_len}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(row_len - n)
    return rows


def collate_pack(examples: Sequence[Example], *, row_len: int) -> Batch:
    """Pack samples into as few rows of ``row_len`` tokens as first-fit allows.

    Returns:
        A ``Batch`` of R <= B rows, T = ``row_len``, with ``segment_ids`` and ``context_end``
        [R, T] (int32; see the module docstring) and ``context_len`` None; ``sample_index`` is the
        first sample of each row.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    rows = pack_rows([len(e) for e in examples], row_len)
    R, T = len(rows), row_len
    # padding token t: segment T + t, one of its own (samples are segments 0 .. len(row) - 1)
    seg = np.tile(np.arange(T, 2 * T, dtype=np.int32), (R, 1))  # [R, T]
    end = np.zeros((R, T), np.int32)  # [R, T] (0 for padding: it sees itself by causality)
    for r, members in enumerate(rows):
        o = 0
        for j, i in enumerate(members):
            n = len(examples[i])
            seg[r, o : o + n] = j
            end[r, o : o + n] = o + examples[i].context_len
            o += n
    return _rows_to_batch(
        examples, rows, T, segment_ids=torch.from_numpy(seg), context_end=torch.from_numpy(end)
    )


def packing_efficiency(examples: Sequence[Example], batch: Batch) -> float:
    """Fraction of the batch's token slots [B, T] that hold sample tokens rather than padding."""
    return sum(len(e) for e in examples) / batch.input_ids.numel()
