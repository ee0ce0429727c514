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
- ``collate_plans``: either layout for a batch whose span samples are still ``Planned`` (the
  loader's path): their Part A / Part B go straight into the rows, one masked assignment per
  field, so they never become Examples; ``collate_pad`` / ``collate_pack`` are it for Examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .batch import Batch
from .corrupt import Example
from .layout import FlatBlocks, Planned, SpanPlan


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
    return collate_plans(examples, pad_to=pad_to)


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """First-fit assignment of samples (in stream order) to rows of capacity ``row_len``."""
    rows: list[list[int]] = []
    room: list[int] = []
    most = -1  # max(room): a sample longer than that opens a row without a scan
    for i, n in enumerate(lengths):
        if n > row_len:
            raise ValueError(f"a sample of {n} tokens does not fit a packed row of {row_len}")
        if n <= most:
            r = next(r for r, free in enumerate(room) if n <= free)
            rows[r].append(i)
            room[r] -= n
            most = max(room)
        else:
            rows.append([i])
            room.append(row_len - n)
            most = max(most, row_len - n)
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
    return collate_plans(examples, row_len=row_len)


def _local(lengths: np.ndarray) -> np.ndarray:
    """int64 [sum(lengths)]: 0..n_i-1 for each i, end to end."""
    return np.arange(int(lengths.sum())) - np.repeat(lengths.cumsum() - lengths, lengths)


def collate_plans(
    items: Sequence[Example | Planned],
    layout: Callable[[list[np.ndarray], list[SpanPlan]], FlatBlocks] | None = None,
    *,
    row_len: int | None = None,
    pad_to: int | None = None,
) -> Batch:
    """``collate_pad`` (``row_len`` None) or ``collate_pack`` of samples of which some are still
    ``Planned``: those are laid out (``layout``, i.e. ``flat_blocks``) in the order they take in
    the rows, so each field of all of them is written into the [R, T] arrays by one masked
    assignment (instead of becoming Examples that are copied again); Examples are copied by
    slices.

    Args:
        items: B samples in stream order.
        layout: ``(texts, plans) -> FlatBlocks`` (needed when there are ``Planned`` items).
        row_len: pack first-fit into rows of this many tokens; None: one sample per row.
        pad_to: one sample per row: pad rows to at least this length.

    Returns:
        The ``Batch`` that ``collate_pad`` / ``collate_pack`` makes of the laid-out samples.
    """
    B = len(items)
    planned = [isinstance(x, Planned) for x in items]
    n = [x.length if p else len(x) for x, p in zip(items, planned, strict=True)]  # type: ignore[union-attr]
    if row_len is None:
        rows, T = [[i] for i in range(B)], max(max(n), pad_to or 0)
    else:
        rows, T = pack_rows(n, row_len), row_len
    R = len(rows)
    span = [i for members in rows for i in members if planned[i]]  # in row-major order
    sep = None
    if span:
        assert layout is not None, "Planned samples need a layout"
        fb = layout([items[i].text for i in span], [items[i].plan for i in span])  # type: ignore
        sep = fb.sep
    ctx = [0] * B
    for i, c in zip(span, [] if sep is None else sep.tolist(), strict=True):
        ctx[i] = c
    for i in (i for i in range(B) if not planned[i]):
        ctx[i] = items[i].context_len  # type: ignore[union-attr]
    # the rows as runs, in row-major order: Part A, Part B (of a Planned sample), an Example,
    # the padding; each with its length and what the run's tokens carry
    A, PART_B, EXAMPLE, PAD = 0, 1, 2, 3
    kind, size, seg_of, end_of, obj_of = [], [], [], [], []
    where = [(0, 0)] * B  # (row, column) of each sample
    for r, members in enumerate(rows):
        o = 0
        for j, i in enumerate(members):
            where[i] = (r, o)
            c, m = ctx[i], n[i]
            if planned[i]:
                kind += [A, PART_B]
                size += [c, m - c]
                seg_of += [j, j]
                end_of += [o + c, o + c]
                obj_of += [-1, items[i].objective]
            else:
                kind.append(EXAMPLE)
                size.append(m)
                seg_of.append(j)
                end_of.append(o + c)
                obj_of.append(-1)
            o += m
        kind.append(PAD)
        size.append(T - o)
        seg_of.append(-1)
        end_of.append(0)
        obj_of.append(-1)
    run = np.repeat(np.array(kind, np.int8), size).reshape(R, T)
    ids = np.zeros((R, T), np.int64)
    labels = np.zeros((R, T), np.int64)
    pos = np.zeros((R, 2, T), np.int64)
    obj = np.repeat(np.array(obj_of, np.int64), size).reshape(R, T)  # -1 but on Part-B targets
    in_b = run == PART_B
    loss = in_b.astype(np.float32)
    if span:
        in_a = run == A
        ids[in_a] = labels[in_a] = fb.part_a
        ids[in_b], labels[in_b] = fb.b_in, fb.b_lab
        p0, p1 = pos[:, 0], pos[:, 1]
        p0[in_a] = _local(sep)  # type: ignore[arg-type]
        p0[in_b], p1[in_b] = fb.b_pos, fb.b_blk
    for i in (i for i in range(B) if not planned[i]):
        ex, (r, o) = items[i], where[i]
        sl = slice(o, o + n[i])
        ids[r, sl], labels[r, sl], loss[r, sl] = ex.input_ids, ex.labels, ex.loss_mask
        pos[r, :, sl] = ex.position_ids
        obj[r, sl] = np.where(ex.loss_mask > 0, ex.objective, -1)  # only on targets
    if row_len is None:
        form = {"context_len": torch.from_numpy(np.array(ctx, np.int64))}
    else:
        # padding token t: segment T + t, one of its own (samples are segments 0 .. len(row) - 1)
        seg = np.repeat(np.array(seg_of, np.int32), size).reshape(R, T)
        seg = np.where(run == PAD, np.arange(T, 2 * T, dtype=np.int32), seg)
        end = np.repeat(np.array(end_of, np.int32), size).reshape(R, T)  # padding: 0
        form = {"segment_ids": torch.from_numpy(seg), "context_end": torch.from_numpy(end)}
    index = [items[m[0]].sample_index for m in rows]  # type: ignore[union-attr]
    return Batch(
        input_ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        loss_mask=torch.from_numpy(loss),
        position_ids=torch.from_numpy(pos),
        objective=torch.from_numpy(obj),
        sample_index=torch.from_numpy(np.array(index, np.int64)),
        **form,
    )


def packing_efficiency(examples: Sequence[Example], batch: Batch) -> float:
    """Fraction of the batch's token slots [B, T] that hold sample tokens rather than padding."""
    return sum(len(e) for e in examples) / batch.input_ids.numel()
