"""``build_blocks`` for a whole batch at once: the same Examples, in a fixed number of numpy calls.

Per sample, ``build_blocks`` is some 40 small numpy calls, which cost more than the arithmetic
they do. Here every text of the batch is laid end to end and every span of every text goes into
one set of flat arrays, so Part A (drop the span tokens, put each blank) and Part B (one gather
for inputs, one for labels) are built for the batch in one pass each (``flat_blocks`` ->
``FlatBlocks``). ``build_blocks_batch`` makes Examples of them (views into the flat result);
the loader instead hands ``Planned`` samples to ``pack.collate_plans``, which lays the flat
arrays straight into a batch's rows. Tests check both against ``build_blocks`` sample by sample.
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


class Planned(NamedTuple):
    """A span sample before its layout (``pack.collate_plans`` lays it out into a batch's rows).

    Attributes:
        text: int [n] the text.
        plan: its ``SpanPlan``; the laid-out sample has n + 2k tokens for k spans.
        objective: stored per target token in the batch.
        sample_index: the global sample index.
    """

    text: np.ndarray
    plan: SpanPlan
    objective: int
    sample_index: int

    @property
    def length(self) -> int:
        """Tokens of the laid-out sample: n + 2k (``build_blocks``)."""
        return len(self.text) + 2 * len(self.plan.starts)


def _excl(x: np.ndarray) -> np.ndarray:
    """Exclusive running sum: [0, x0, x0 + x1, ...] without the total."""
    return x.cumsum() - x


class FlatBlocks(NamedTuple):
    """The Part A / Part B layout of B samples as flat arrays (``flat_blocks``): sample i is its
    Part A ``part_a[a_i : a_i + sep_i]`` then its Part B ``b_*[b_i : b_i + nb_i]``, with a and b
    the exclusive running sums of ``sep`` and ``nb``.

    Attributes:
        part_a: int64 [NA] every sample's Part A (inputs = labels), end to end.
        sep: int64 [B] |Part A| (``context_len``).
        b_in, b_lab, b_pos, b_blk: int64 [NB] Part B inputs, labels, positions, block positions.
        nb: int64 [B] |Part B| (span tokens + one opener per span); the loss mask is 1 on all of it.
    """

    part_a: np.ndarray
    sep: np.ndarray
    b_in: np.ndarray
    b_lab: np.ndarray
    b_pos: np.ndarray
    b_blk: np.ndarray
    nb: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """int64 [B] each sample's length, |Part A| + |Part B|."""
        return self.sep + self.nb

    def examples(
        self, objectives: Sequence[int] | None = None, sample_indices: Sequence[int] | None = None
    ) -> list[Example]:
        """The B Examples (views of shared buffers), with their objective and sample index."""
        sep, nb = self.sep.tolist(), self.nb.tolist()
        B = len(sep)
        total = sum(sep) + sum(nb)
        input_ids = np.empty(total, np.int64)
        labels = np.empty(total, np.int64)
        position_ids = np.zeros((2, total), np.int64)
        loss_mask = np.zeros(total, np.float32)
        count = np.arange(max(sep, default=0))  # Part-A positions 0, 1, ...
        objectives = [0] * B if objectives is None else objectives
        sample_indices = [-1] * B if sample_indices is None else sample_indices
        out = []
        o = a0 = b0 = 0
        for i, (s, t) in enumerate(zip(sep, nb, strict=True)):
            a1, b1, mid, end = a0 + s, b0 + t, o + s, o + s + t
            input_ids[o:mid] = labels[o:mid] = self.part_a[a0:a1]
            input_ids[mid:end], labels[mid:end] = self.b_in[b0:b1], self.b_lab[b0:b1]
            position_ids[0, o:mid] = count[:s]
            position_ids[:, mid:end] = self.b_pos[b0:b1], self.b_blk[b0:b1]
            loss_mask[mid:end] = 1.0
            out.append(
                Example(
                    input_ids=input_ids[o:end],
                    labels=labels[o:end],
                    loss_mask=loss_mask[o:end],
                    position_ids=position_ids[:, o:end],
                    context_len=s,
                    objective=objectives[i],
                    sample_index=sample_indices[i],
                )
            )
            o, a0, b0 = end, a1, b1
        return out


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
    if not texts:
        return []
    blocks = flat_blocks(
        texts, plans, sop_id=sop_id, eop_id=eop_id, block_positions=block_positions,
        sentinel_ids=sentinel_ids,
    )  # fmt: skip
    return blocks.examples(objectives, sample_indices)


def flat_blocks(
    texts: Sequence[np.ndarray],
    plans: Sequence[SpanPlan],
    *,
    sop_id: int,
    eop_id: int,
    block_positions: bool = True,
    sentinel_ids: Sequence[int] | None = None,
) -> FlatBlocks:
    """The layout of ``build_blocks_batch`` as ``FlatBlocks`` (no Examples: ``collate_blocks``
    writes them straight into a batch's rows). B >= 1; arguments as ``build_blocks_batch``."""
    B = len(texts)
    n = np.array([len(t) for t in texts], np.int64)  # [B]
    k = np.array([len(p.starts) for p in plans], np.int64)  # [B]
    X = np.concatenate(texts).astype(np.int64, copy=False)  # [N] all texts end to end
    shift = np.repeat(_excl(n), k)  # [K] where each span's text starts in X
    S_t = np.concatenate([p.starts for p in plans]) + shift  # [K] text order
    E_t = np.concatenate([p.ends for p in plans]) + shift  # [K]
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
    part_a = marked[keep]  # [NA] the samples' Part A, end to end
    sample_of = np.repeat(np.arange(B), k)  # [K] (the same in text and Part-B order)
    dropped = m_t - 1  # [K] tokens each span removes from its text
    before = dropped.cumsum() - dropped  # [K] removed before span j in the batch
    before -= before[first][sample_of]  # ... in its own sample
    blank_at = S_t - shift - before  # [K] the blank's position in its Part A
    span_sum = np.bincount(sample_of, weights=m_t, minlength=B).astype(np.int64)  # [B]
    sep = n - span_sum + k  # [B] |Part A| of each sample
    # Part B of all texts in Part-B order: span j occupies [off_j, off_j + m_j] ([sop] first)
    S, m = S_t[border], m_t[border]  # [K]
    off = _excl(m + 1)  # [K]
    NB = int(off[-1] + m[-1] + 1)
    src = (S - off - 1).repeat(m + 1) + np.arange(NB)  # [NB] text index of each input
    b_in = X.take(src, mode="clip")  # src >= -1; -1 only at an opener, overwritten
    b_in[off] = opener
    b_lab = X.take(src + 1, mode="clip")  # past a text's end only at an [eop]
    b_lab[off + m] = eop_id
    span_pos = np.where(flag[sample_of], sep[sample_of], blank_at[border])  # sentinel: |A|
    b_pos = span_pos.repeat(m + 1)  # [NB]
    b_blk = np.arange(1, NB + 1) - off.repeat(m + 1) if block_positions else np.ones(NB, np.int64)
    return FlatBlocks(part_a, sep, b_in, b_lab, b_pos, b_blk, span_sum + k)
