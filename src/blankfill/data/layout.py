"""``build_blocks`` for a whole batch at once: the same Examples, in a fixed number of numpy calls.

Per sample, ``build_blocks`` is some 40 small numpy calls, which cost more than the arithmetic
they do. Here every text of the batch is laid end to end and every span of every text goes into
one set of flat arrays, so Part A (drop the span tokens, put each blank) and Part B (one gather
for inputs, one for labels) are built for the batch in one pass each; the Examples are views
into the flat result. A test checks the output equals ``build_blocks`` sample by sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .corrupt import Example


class SpanPlan(NamedTuple):
    """What ``build_blocks`` needs to know of one sample beyond its text.

    Attributes:
        starts: int64 [k >= 1] span starts in text order (sorted, non-overlapping spans).
        ends: int64 [k] span ends.
        order: int [k] Part-B order (a permutation of ``range(k)``); None: text order.
        mask_id: the blank of every span (span i >= 1 of Part B: its sentinel with ``sentinel``).
        sentinel: the sentinel ablation (``build_blocks(sentinel_ids=...)``) for this sample.
    """

    starts: np.ndarray
    ends: np.ndarray
    order: np.ndarray | None
    mask_id: int
    sentinel: bool = False


def _excl(x: np.ndarray) -> np.ndarray:
    """Exclusive running sum: [0, x0, x0 + x1, ...] without the total."""
    return x.cumsum() - x


def build_blocks_batch(
    texts: Sequence[np.ndarray],
    plans: Sequence[SpanPlan],
    *,
    sop_id: int,
    eop_id: int,
    block_positions: bool = True,
    sentinel_ids: Sequence[int] | None = None,
    objectives: Sequence[int] | None = None,
    sample_indices: Sequence[int] | None = None,
) -> list[Example]:
    """``[build_blocks(t, spans, order=..., ...) for t, plan in zip(texts, plans)]``, batched.

    Args:
        texts: B int texts.
        plans: B ``SpanPlan``s (spans valid for their text).
        sop_id, eop_id, block_positions: as ``build_blocks``.
        sentinel_ids: the sentinel ids, used by the plans with ``sentinel``.
        objectives, sample_indices: stored in the Examples (default 0 and -1).

    Returns:
        B Examples equal to ``build_blocks``'s; their arrays are views of shared buffers.
    """
    B = len(texts)
    if B == 0:
        return []
    n = np.array([len(t) for t in texts], np.int64)  # [B]
    k = np.array([len(p.starts) for p in plans], np.int64)  # [B]
    X = np.concatenate(texts).astype(np.int64, copy=False)  # [N] all texts end to end
    S_t = np.concatenate([p.starts for p in plans]) + np.repeat(_excl(n), k)  # [K] text order
    E_t = np.concatenate([p.ends for p in plans]) + np.repeat(_excl(n), k)  # [K]
    m_t = E_t - S_t  # [K] span lengths
    first = _excl(k)  # [B] index of each sample's first span
    same = np.ones(len(S_t), bool)  # [K] span i-1 is in the same sample as span i
    same[first] = False
    assert (k >= 1).all() and (m_t >= 1).all(), "every plan needs spans of >= 1 token"
    assert (E_t[:-1] <= S_t[1:])[same[1:]].all(), "plan spans must be sorted and disjoint"
    # Part-B order as indices into the text-order arrays
    border = np.concatenate(
        [np.arange(len(p.starts)) if p.order is None else np.asarray(p.order) for p in plans]
    ) + np.repeat(first, k)  # fmt: skip
    blank_t = np.repeat(np.array([p.mask_id for p in plans], np.int64), k)  # [K]
    opener = np.full(len(border), sop_id, np.int64)  # [K] in Part-B order
    flag = np.array([p.sentinel for p in plans], bool)  # [B]
    if flag.any():
        need = int((k[flag] - 1).max())
        have = 0 if sentinel_ids is None else len(sentinel_ids)
        if need > have:
            raise ValueError(
                f"{need + 1} spans need {need} sentinel ids, got {have}; raise corrupt.sentinels"
            )
        rank = np.arange(len(border)) - np.repeat(first, k)  # [K] place in its sample's Part B
        sent = np.repeat(flag, k) & (rank >= 1)
        ids = np.asarray(sentinel_ids, np.int64)[rank[sent] - 1]
        opener[sent] = ids
        blank_t[border[sent]] = ids
    # Part A of all texts: drop every span token but the first, which becomes the blank
    step = np.zeros(len(X) + 1, np.int64)
    step[S_t + 1] += 1
    step[E_t] -= 1
    keep = step[:-1].cumsum() == 0  # [N]
    marked = X.copy()
    marked[S_t] = blank_t
    part_a = marked[keep]  # [NA]
    a_index = keep.cumsum() - 1  # [N] index in the batch's Part A of each kept text position
    span_sum = np.zeros(B, np.int64)
    np.add.at(span_sum, np.repeat(np.arange(B), k), m_t)
    sep = n - span_sum + k  # [B] |Part A| of each sample
    a_off = _excl(sep)  # [B]
    # Part B of all texts in Part-B order: span j occupies [off_j, off_j + m_j] ([sop] first)
    S, m = S_t[border], m_t[border]  # [K]
    off = _excl(m + 1)  # [K]
    NB = int(off[-1] + m[-1] + 1)
    src = (S - off - 1).repeat(m + 1) + np.arange(NB)  # [NB] text index of each input
    b_in = X.take(src, mode="clip")  # src >= -1; -1 only at an opener, overwritten
    b_in[off] = opener
    b_lab = X.take(src + 1, mode="clip")  # past a text's end only at an [eop]
    b_lab[off + m] = eop_id
    sample_of = np.repeat(np.arange(B), k)  # [K] (the same in text and Part-B order)
    span_pos = a_index[S] - a_off[sample_of]  # [K] the blank's position in its Part A
    span_pos = np.where(flag[sample_of], sep[sample_of], span_pos)  # sentinel: after Part A
    # both parts into one buffer: sample b is Part A then Part B at out_off[b]
    T = sep + span_sum + k  # [B]
    out_off = _excl(T)
    edge = np.zeros(int(T.sum()) + 1, np.int64)
    edge[out_off] += 1
    edge[out_off + sep] -= 1
    in_a = edge[:-1].cumsum() > 0  # [sum T]
    in_b = ~in_a
    input_ids = np.empty(len(in_a), np.int64)
    labels = np.empty(len(in_a), np.int64)
    input_ids[in_a] = labels[in_a] = part_a
    input_ids[in_b], labels[in_b] = b_in, b_lab
    position_ids = np.zeros((2, len(in_a)), np.int64)
    position_ids[0, in_a] = np.arange(len(part_a)) - np.repeat(a_off, sep)
    position_ids[0, in_b] = span_pos.repeat(m + 1)
    position_ids[1, in_b] = np.arange(NB) - off.repeat(m + 1) + 1 if block_positions else 1
    loss_mask = in_b.astype(np.float32)
    objectives = [0] * B if objectives is None else objectives
    sample_indices = [-1] * B if sample_indices is None else sample_indices
    out = []
    for b, (o, t, s) in enumerate(zip(out_off.tolist(), T.tolist(), sep.tolist(), strict=True)):
        out.append(
            Example(
                input_ids=input_ids[o : o + t],
                labels=labels[o : o + t],
                loss_mask=loss_mask[o : o + t],
                position_ids=position_ids[:, o : o + t],
                context_len=s,
                objective=objectives[b],
                sample_index=sample_indices[b],
            )
        )
    return out
