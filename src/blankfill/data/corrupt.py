"""Blank infilling: span sampling, span placement and the Part A / Part B layout (GLM §2.1, spec §3).

Glossary (one meaning per word, used across ``blankfill.data``):

- *text*: the token ids of one raw sample, ``[CLS] doc... [eos] ([CLS] doc... [eos])...``.
- *span*: a half-open ``(start, end)`` range of text indices that is blanked out.
- *blank*: the single mask token (``[MASK]``, ``[sMASK]`` or ``[gMASK]``) that replaces a span.
- *Part A* / *context*: the text with every span collapsed to its blank; attended bidirectionally.
- *Part B*: for each span, ``[sop] + span`` (inputs) and ``span + [eop]`` (labels), attended causally.
- ``context_len``: |Part A| (the official ``sep``); the model builds the mask from it.
- ``position_ids``: ``[2, T]``; row 0 is the position in Part A (a Part-B token takes the position of
  its span's blank), row 1 the block position (0 in Part A, 1..len+1 inside a span, ``[sop]`` = 1).
- ``labels``: pre-shifted: the label at t is the token that follows t in Part B; Part-A labels equal
  the inputs (their loss is 0).
- *sentinel*: the ablation of GLM Table 6 (T5-style, official ``--sentinel-token``): span i >= 1
  of Part B gets its own blank ``[MASK_i]``, which also opens it in Part B (span 0 keeps ``[MASK]``
  and ``[sop]``, as officially), and Part B's positions say nothing of where a span was.
- The masked-LM and causal-LM baselines use the same ``Example`` form (``blankfill.data.baselines``).

Everything here is a pure function of its arguments; randomness arrives as ``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .spans import (  # re-exported: the span steps of the glossary above
    Span,
    document_segments,
    place_spans,
    sample_span_lengths,
    sentence_spans,
    span_length_pmf,
)

__all__ = [
    "Example",
    "Span",
    "build_blocks",
    "build_suffix",
    "document_segments",
    "place_spans",
    "reconstruct",
    "sample_span_lengths",
    "sentence_spans",
    "span_length_pmf",
]


@dataclass(frozen=True, kw_only=True)
class Example:
    """One corrupted sample, ready to batch.

    Attributes:
        input_ids: int64 [T]: Part A then Part B.
        labels: int64 [T]: pre-shifted targets (Part-A labels equal the inputs).
        loss_mask: float32 [T]: 1 on Part-B targets, 0 on Part A.
        position_ids: int64 [2, T]: position, block position.
        context_len: |Part A|.
        objective: index into ``OBJECTIVES`` (0 MASK, 1 sMASK, 2 gMASK).
        sample_index: global index of the sample in the stream (-1 when not from a stream).
    """

    input_ids: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    position_ids: np.ndarray
    context_len: int
    objective: int = 0
    sample_index: int = -1

    def __len__(self) -> int:
        return len(self.input_ids)


def _check_spans(spans: Sequence[Span], n: int) -> tuple[list[Span], list[int]]:
    """Validate spans against a text of length n; return them and their text order."""
    out = []
    for s in spans:
        if len(s) != 2:
            raise ValueError(f"a span must be (start, end), got {s!r}")
        start, end = int(s[0]), int(s[1])
        if not 0 <= start < end <= n:
            raise ValueError(f"span {(start, end)} is empty or outside the text of length {n}")
        out.append((start, end))
    text_order = sorted(range(len(out)), key=lambda i: out[i][0])
    for a, b in zip(text_order, text_order[1:], strict=False):
        if out[a][1] > out[b][0]:
            raise ValueError(f"spans {out[a]} and {out[b]} overlap")
    return out, text_order


def _span_arrays(spans: Sequence[Span], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid spans as int64 starts [k], ends [k] and their text order [k], in one vectorised
    check; anything invalid goes to ``_check_spans``, which raises the precise error."""
    try:
        arr = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape[0] == len(spans):
        starts, ends = arr[:, 0], arr[:, 1]
        text_order = starts.argsort(kind="stable")
        s, e = starts[text_order], ends[text_order]
        if ((starts >= 0) & (starts < ends) & (ends <= n)).all() and (e[:-1] <= s[1:]).all():
            return starts, ends, text_order
    _check_spans(spans, n)
    raise AssertionError(f"spans {spans!r} failed the fast check only")  # pragma: no cover


def build_blocks(
    tokens: Sequence[int] | np.ndarray,
    spans: Sequence[Span],
    *,
    mask_id: int,
    sop_id: int,
    eop_id: int,
    order: Sequence[int] | None = None,
    block_positions: bool = True,
    sentinel_ids: Sequence[int] | None = None,
) -> Example:
    """Lay out a text with blanked spans as Part A + Part B (official ``make_block_data``).

    Part A is the text with each span replaced by one ``mask_id``; Part B holds, for each span in
    ``order``, ``[sop] + span`` as inputs and ``span + [eop]`` as labels. The result has length
    ``n + 2k`` for k spans. No tokenizer is consulted: the special ids are explicit.

    Args:
        tokens: int [n], the text.
        spans: k non-overlapping ``(start, end)`` ranges (any order) of at least one token.
        mask_id: the blank that replaces each span in Part A.
        sop_id: ``[sop]``, the first Part-B input of each span.
        eop_id: ``[eop]``, the last Part-B label of each span.
        order: indices into ``spans`` giving their Part-B order (a permutation of ``range(k)``);
            None: text order.
        block_positions: True: 2D positions (GLM §2.3). False: the 1D ablation (official
            ``--no-block-position``): Part B keeps its blank's position, every Part-B block
            position is 1, so nothing tells a span token its offset inside the span.
        sentinel_ids: the sentinel ablation (official ``--sentinel-token``): span i >= 1 of Part
            B is blanked by ``sentinel_ids[i - 1]`` in Part A and opened by it in Part B instead
            of ``[sop]`` (span 0 keeps ``mask_id`` and ``[sop]``); all of Part B takes position
            ``context_len`` (officially max_seq_len), so only the blank's identity links a span to
            its place. Needs >= k - 1 ids.

    Returns:
        An ``Example`` with ``input_ids``/``labels``/``loss_mask`` [n + 2k], ``position_ids``
        [2, n + 2k] and ``context_len`` = n - sum(span lengths) + k.
    """
    text = np.asarray(tokens, dtype=np.int64)
    if text.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {text.shape}")
    n = len(text)
    starts, ends, text_order = _span_arrays(spans, n)
    k = len(starts)
    if order is None:
        order = text_order
    else:
        order = [int(i) for i in order]
        if sorted(order) != list(range(k)):
            raise ValueError(f"order must be a permutation of range({k}), got {order}")
        order = np.asarray(order, dtype=np.int64)
    if sentinel_ids is not None and len(sentinel_ids) < k - 1:
        raise ValueError(
            f"{k} spans need {k - 1} sentinel ids, got {len(sentinel_ids)}; raise corrupt.sentinels"
        )
    blank = np.full(k, mask_id, dtype=np.int64)  # [k] blank of each span (spans order)
    opener = np.full(k, sop_id, dtype=np.int64)  # [k] first Part-B input of each span
    if sentinel_ids is not None and k > 1:
        blank[order[1:]] = opener[order[1:]] = np.asarray(sentinel_ids[: k - 1], dtype=np.int64)
    # Part A: drop every span token but the first, which becomes the blank. The running sum of
    # `step` (+1 at start + 1, -1 at end) is 1 exactly on the dropped text positions.
    step = np.zeros(n + 1, np.int64)
    step[starts + 1] += 1
    step[ends] -= 1
    keep = step[:n].cumsum() == 0  # [n]
    part_a = text.copy()
    part_a[starts] = blank
    part_a = part_a[keep]  # [sep]
    sep = len(part_a)
    a_index = keep.cumsum() - 1  # [n] index in Part A of each surviving text position
    # Part B, vectorised: span i in `order` occupies [off_i, off_i + m_i] (its [sop] at off_i).
    S = starts[order]  # [k]
    m = ends[order] - S  # [k]
    off = (m + 1).cumsum() - (m + 1)  # [k]
    nb = int(off[-1] + m[-1] + 1) if k else 0  # sum of (m + 1)
    src = (S - off - 1).repeat(m + 1) + np.arange(nb)  # [nb] text index of the input token
    T = sep + nb
    input_ids = np.empty(T, np.int64)
    labels = np.empty(T, np.int64)
    input_ids[:sep] = part_a
    labels[:sep] = part_a
    b_in, b_lab = input_ids[sep:], labels[sep:]  # views
    text.take(src, out=b_in, mode="clip")  # src >= -1; -1 only at an opener, overwritten
    b_in[off] = opener[order]
    text.take(src + 1, out=b_lab, mode="clip")  # src + 1 <= n; n only at an [eop]
    b_lab[off + m] = eop_id
    position_ids = np.zeros((2, T), np.int64)
    position_ids[0, :sep] = np.arange(sep)
    position_ids[0, sep:] = a_index[S].repeat(m + 1) if sentinel_ids is None else sep
    position_ids[1, sep:] = np.arange(nb) - off.repeat(m + 1) + 1 if block_positions else 1
    loss_mask = np.zeros(T, dtype=np.float32)
    loss_mask[sep:] = 1.0
    return Example(
        input_ids=input_ids,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=position_ids,
        context_len=sep,
    )


def build_suffix(
    tokens: Sequence[int] | np.ndarray,
    generation_len: int,
    *,
    gmask_id: int,
    sop_id: int,
    loss_mask: Sequence[float] | np.ndarray | None = None,
    block_positions: bool = True,
) -> Example:
    """The document-level suffix form (official ``construct_blocks`` gpt branch, suffix mode).

    ``src = text[:n-g]``, ``tgt = text[n-g:]``; inputs ``src + [gMASK, sop] + tgt[:-1]``, labels
    ``src + [gMASK] + tgt`` (no eop: the last label is the text's own last token, normally eos).

    Args:
        tokens: int [n], the text.
        generation_len: g, the suffix length, 1 <= g <= n - 1.
        gmask_id: ``[gMASK]``.
        sop_id: ``[sop]``.
        loss_mask: float [n], the text's own loss mask (0 at ``[CLS]``), applied on the suffix.
        block_positions: False: the 1D ablation, block position 1 on all of Part B.

    Returns:
        An ``Example`` of length n + 1 with ``context_len`` = n - g + 1.
    """
    text = np.asarray(tokens, dtype=np.int64)
    n, g = len(text), int(generation_len)
    if not 1 <= g <= n - 1:
        raise ValueError(
            f"generation_len must be in [1, {n - 1}] for a text of length {n}, got {g}"
        )
    lm = np.ones(n, np.float32) if loss_mask is None else np.asarray(loss_mask, np.float32)
    s = n - g  # |src|; written into preallocated rows (a dozen small concatenations cost more)
    input_ids = np.empty(n + 1, np.int64)  # src [gMASK] [sop] tgt[:-1]
    input_ids[:s] = text[:s]
    input_ids[s : s + 2] = gmask_id, sop_id
    input_ids[s + 2 :] = text[s : n - 1]
    labels = np.empty(n + 1, np.int64)  # src [gMASK] tgt
    labels[:s] = text[:s]
    labels[s] = gmask_id
    labels[s + 1 :] = text[s:]
    loss = np.zeros(n + 1, np.float32)
    loss[s + 1 :] = lm[s:]
    position_ids = np.zeros((2, n + 1), np.int64)
    position_ids[0, : s + 1] = np.arange(s + 1)
    position_ids[0, s + 1 :] = s
    # block positions 0 on src and [gMASK], then 1..g (official 1D ablation: 1 from [sop] on)
    position_ids[1, s + 1 :] = np.arange(1, g + 1) if block_positions else 1
    return Example(
        input_ids=input_ids,
        labels=labels,
        loss_mask=loss,
        position_ids=position_ids,
        context_len=s + 1,
    )


def reconstruct(
    example: Example,
    *,
    sop_id: int,
    eop_id: int,
    sentinel_ids: Sequence[int] | None = None,
    mask_id: int | None = None,
) -> np.ndarray:
    """Invert ``build_blocks``: put each Part-B span back at its blank.

    Spans are found by their opener (``[sop]``, or a sentinel) and placed by their position id, or,
    with ``sentinel_ids`` (and the ``mask_id`` of span 0), at the Part-A blank of that opener.

    Returns:
        int64 [n], the original text.
    """
    sep = example.context_len
    ids, labels = example.input_ids, example.labels
    pos = example.position_ids[0]
    openers = {sop_id, *(int(i) for i in sentinel_ids or ())}
    span_at: dict[int, np.ndarray] = {}
    starts = [t for t in range(sep, len(ids)) if int(ids[t]) in openers]
    ends = [*starts[1:], len(ids)]
    for s, e in zip(starts, ends, strict=False):
        assert labels[e - 1] == eop_id, "a Part-B span must end in [eop]"
        if sentinel_ids is None:
            at = int(pos[s])
        else:
            blank = mask_id if ids[s] == sop_id else ids[s]
            at = int(np.flatnonzero(ids[:sep] == blank)[0])
        span_at[at] = labels[s : e - 1]
    parts = [span_at[i] if i in span_at else ids[i : i + 1] for i in range(sep)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
