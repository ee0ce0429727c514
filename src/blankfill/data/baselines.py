"""The baselines of GLM's comparisons as ``Example`` layouts (GLM §3, Table 6; spec §3.3).

- ``build_masked``: the masked-LM baseline (BERT; official ``--masked-lm``). There is no Part B:
  the blanked tokens are replaced in place and predicted at their own positions, and attention is
  fully bidirectional (``context_len`` = n).
- ``build_causal``: the causal-LM baseline (GPT): ``context_len`` 0 (causal attention everywhere)
  and next-token labels.

Both are pure functions; the trainer, loss and loader treat them like any GLM ``Example``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .corrupt import Example, Span, _check_spans


def build_masked(
    tokens: Sequence[int] | np.ndarray, spans: Sequence[Span], *, mask_id: int
) -> Example:
    """The masked-LM baseline (BERT; official ``make_masked_data``): no Part B.

    Every token of every span is replaced in place by ``mask_id`` and predicted at its own
    position; attention is fully bidirectional (``context_len`` = n), positions are 0..n-1 and
    block positions 0.

    Returns:
        An ``Example`` of length n; ``labels`` = the text, ``loss_mask`` 1 on the span tokens.
    """
    text = np.asarray(tokens, dtype=np.int64)
    n = len(text)
    spans, _ = _check_spans(spans, n)
    masked = np.zeros(n, dtype=bool)
    for start, end in spans:
        masked[start:end] = True
    return Example(
        input_ids=np.where(masked, mask_id, text),
        labels=text.copy(),
        loss_mask=masked.astype(np.float32),
        position_ids=np.stack([np.arange(n), np.zeros(n, np.int64)]).astype(np.int64),
        context_len=n,
    )


def build_causal(
    tokens: Sequence[int] | np.ndarray, loss_mask: Sequence[float] | np.ndarray | None = None
) -> Example:
    """The causal-LM baseline (GPT): ``context_len`` 0, so attention is causal everywhere.

    Inputs ``text[:-1]``, labels ``text[1:]`` (the label at t is the next token), loss on every
    label whose text loss mask is 1 (never on a ``[CLS]``); positions 0..n-2, block positions 0.

    Returns:
        An ``Example`` of length n - 1 with ``context_len`` = 0.
    """
    text = np.asarray(tokens, dtype=np.int64)
    n = len(text)
    if n < 2:
        raise ValueError(f"a causal-LM sample needs at least 2 tokens, got {n}")
    lm = np.ones(n, np.float32) if loss_mask is None else np.asarray(loss_mask, np.float32)
    return Example(
        input_ids=text[:-1].copy(),
        labels=text[1:].copy(),
        loss_mask=lm[1:].copy(),
        position_ids=np.stack([np.arange(n - 1), np.zeros(n - 1, np.int64)]).astype(np.int64),
        context_len=0,
    )
