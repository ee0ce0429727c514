"""``Corruptor.plan_batch``: every draw of ``Corruptor.plan`` for a batch, grouped by objective.

Each sample keeps its own generator and makes exactly the draws of the per-sample path, in the
same order (a test compares the plans and the generators' states); what runs for the batch at
once is the numpy work between the draws. The phases, each over the samples that reach it:

1. the objective draw (always made, so the stream does not depend on the mix);
2. sentence level: the sentences of all texts in one pass; per sample the shuffle of its
   sentences and the Part-B order; texts without a sentence go on to the token level;
3. token level: the first try of one-document texts batched (``one_region_spans_batch``), the
   redraws and other texts one by one; spans that never fit go on to the document level;
4. document level: one-document texts inline (a few scalar draws), others by
   ``Corruptor.document_level``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..config import CorruptConfig
from .layout import SpanPlan
from .spans import one_region_spans_batch

if TYPE_CHECKING:
    from .corrupt import Example
    from .objectives import Corruptor, RawSample

TOKEN, SENTENCE, DOCUMENT = 0, 1, 2  # indices into OBJECTIVES
MAX_REDRAWS = 8


def choose_objective(u: float, cfg: CorruptConfig) -> int:
    """Map a uniform draw to an objective by the configured mix (official ``construct_blocks``)."""
    if u < cfg.token_prob:
        return TOKEN
    if u < cfg.token_prob + cfg.sentence_prob:
        return SENTENCE
    return DOCUMENT


def draw_generation_len(rng: np.random.Generator, lengths: list[int], min_ratio: float) -> int:
    """g ~ U[floor(min_ratio * min(lengths)), max(lengths) - 2] (one draw per batch officially)."""
    hi = max(max(lengths) - 2, 1)
    lo = min(max(int(min_ratio * min(lengths)), 1), hi)
    return int(rng.integers(lo, hi + 1))


class TextFacts(NamedTuple):
    """What the phases read of the B texts, computed once.

    Attributes:
        n: int64 [B] text lengths.
        first: int64 [B] where each text starts in ``X``.
        X: int64 [N] the texts end to end.
        offset: int64 [B] 1 where the text opens with ``[CLS]`` (its first maskable token).
        room: int64 [B] the maskable length of a one-document text (``document_segments``).
        one_doc: bool [B] no eos before the last token (one maskable region).
    """

    n: np.ndarray
    first: np.ndarray
    X: np.ndarray
    offset: np.ndarray
    room: np.ndarray
    one_doc: np.ndarray


def text_facts(samples: list[RawSample], cls: int, eos: int) -> TextFacts:
    n = np.array([len(s.tokens) for s in samples], np.int64)  # [B]
    first = n.cumsum() - n
    X = np.concatenate([s.tokens for s in samples])  # [N]
    is_eos = X == eos
    last_eos = is_eos[first + n - 1]  # [B]
    inner_eos = np.add.reduceat(is_eos, first, dtype=np.int64) - last_eos  # [B]
    offset = (X[first] == cls).astype(np.int64)
    return TextFacts(n, first, X, offset, n - last_eos - offset, inner_eos == 0)


def plan_batch(
    c: Corruptor,
    samples: list[RawSample],
    rngs: list[np.random.Generator],
    *,
    objective: int | None = None,
    generation_len: int | None = None,
) -> list[tuple[int, SpanPlan | Example]]:
    """``[c.plan(s, rng, ...) for ...]`` for the GLM mix (``corrupt.objective = "glm"``)."""
    for s in samples:
        if len(s) < 3:
            raise ValueError(f"a sample needs at least 3 tokens ([CLS] x [eos]), got {len(s)}")
    if not samples:
        return []
    facts = text_facts(samples, c.cls, c.eos)
    objs = []
    for rng in rngs:
        u = rng.random()  # always drawn, so the stream does not depend on the mix
        objs.append(choose_objective(u, c.cfg) if objective is None else objective)
    out: list = [None] * len(samples)
    sent = [i for i, o in enumerate(objs) if o == SENTENCE]
    for i, plan in zip(sent, sentence_plans(c, samples, rngs, sent, facts), strict=True):
        if plan is None:
            objs[i] = TOKEN
        else:
            out[i] = (SENTENCE, plan)
    token = [i for i, o in enumerate(objs) if o == TOKEN]
    sentinel = c.sentinel_ids is not None
    for i, spans in zip(token, token_spans(c, samples, rngs, token, facts), strict=True):
        if spans is None:
            objs[i] = DOCUMENT
        else:
            out[i] = (TOKEN, c._plan(*spans, c.mask_ids[TOKEN], rngs[i], sentinel))
    for i in (i for i, o in enumerate(objs) if o == DOCUMENT):
        out[i] = (DOCUMENT, document_plan(c, samples[i], rngs[i], generation_len, facts, i))
    return out


def sentence_plans(
    c: Corruptor,
    samples: list[RawSample],
    rngs: list[np.random.Generator],
    idx: list[int],
    facts: TextFacts,
) -> list[SpanPlan | None]:
    """``[c.sentence_level(samples[i], rngs[i]) for i in idx]``: the sentences of all texts
    (``sentence_span_arrays``) and the choice after each shuffle computed together."""
    if not idx:
        return []
    sel = np.array(idx)
    n, first = facts.n[sel], np.concatenate([[0], facts.n[sel].cumsum()[:-1]])
    X = np.concatenate([samples[i].tokens for i in idx])
    ends_mask = np.concatenate([samples[i].sentence_end for i in idx])
    # ``sentence_span_arrays`` over the texts end to end, each text's ends kept apart
    sep = (X == c.eos) | (X == c.cls)  # [N] never inside a sentence
    cut = ends_mask & ~sep
    before = np.ones(len(X), bool)  # [N] the previous token closes a run
    before[1:] = sep[:-1] | cut[:-1]
    before[first] = True
    after = cut.copy()  # [N] this token closes its run
    after[:-1] |= sep[1:]
    after[first + n - 1] = True
    starts = np.flatnonzero(~sep & before)  # [S] every sentence of every text
    ends = np.flatnonzero(~sep & after) + 1
    a = starts.searchsorted(first)  # [F] each text's first sentence
    count = np.diff(np.append(a, len(starts)))  # [F]
    perms = [
        rngs[i].permutation(k) + o if k else None
        for i, k, o in zip(idx, count.tolist(), a.tolist(), strict=True)
    ]
    has = count > 0
    if not has.any():
        return [None] * len(idx)
    P = np.concatenate([p for p in perms if p is not None])  # [S'] sentences in shuffled order
    kc = count[has]
    seg0 = kc.cumsum() - kc
    covered = (ends - starts)[P].cumsum()
    covered -= np.repeat(covered[seg0] - (ends - starts)[P[seg0]], kc)  # within each text
    targets = (c.cfg.sentence_ratio * n[has]).astype(np.int64)
    below = np.add.reduceat(covered < np.repeat(targets, kc), seg0, dtype=np.int64)
    take = np.minimum(below + 1, kc)  # the shuffled sentences until one reaches the target
    keep = np.arange(len(P)) - np.repeat(seg0, kc) < np.repeat(take, kc)
    chosen = np.sort(P[keep])  # texts hold increasing blocks of sentence ids: sorted per text
    shift = np.repeat(first[has], take)
    s_all, e_all = starts[chosen] - shift, ends[chosen] - shift
    out: list[SpanPlan | None] = [None] * len(idx)
    o = 0
    for j, k in zip(np.flatnonzero(has).tolist(), take.tolist(), strict=True):
        out[j] = c._plan(s_all[o : o + k], e_all[o : o + k], c.mask_ids[SENTENCE], rngs[idx[j]])
        o += k
    return out


def token_spans(
    c: Corruptor,
    samples: list[RawSample],
    rngs: list[np.random.Generator],
    idx: list[int],
    facts: TextFacts,
) -> list:
    """``[c._token_spans(samples[i], rngs[i]) for i in idx]``; texts of one document take their
    first try batched (``one_region_spans_batch``), the rest (and the redraws) go one by one."""
    if not idx:
        return []
    sel = np.array(idx)
    targets = (c.cfg.mask_ratio * facts.n[sel]).astype(np.int64)  # as int(ratio * len)
    offset, room = facts.offset[sel], facts.room[sel]
    one = np.flatnonzero(facts.one_doc[sel] & (room > 0) & (targets > 0))
    out = [None] * len(idx)
    got = one_region_spans_batch(
        targets[one], offset[one], room[one], [rngs[idx[j]] for j in one.tolist()], c.cdf, c.mean
    )
    for j, spans in zip(one.tolist(), got, strict=True):
        if spans is None:  # the first try did not fit: the redraws, one by one
            spans = c._token_spans(samples[idx[j]], rngs[idx[j]], MAX_REDRAWS - 1)
        out[j] = spans
    rest = np.ones(len(idx), bool)
    rest[one] = False
    for j in np.flatnonzero(rest).tolist():  # several documents, or nothing to mask
        out[j] = c._token_spans(samples[idx[j]], rngs[idx[j]])
    return out


def document_plan(
    c: Corruptor,
    sample: RawSample,
    rng: np.random.Generator,
    generation_len: int | None,
    facts: TextFacts,
    i: int,
) -> SpanPlan | Example:
    """``c._document(sample, rng, generation_len)``; a one-document text without numpy calls
    for the draws (its one region is ``facts``'; ``permutation(1)`` draws nothing)."""
    if not facts.one_doc[i]:
        return c._document(sample, rng, generation_len)
    L = int(facts.n[i])
    if generation_len is None:
        generation_len = draw_generation_len(rng, [L], c.cfg.document_min_ratio)
    g = max(1, min(int(generation_len), L - 2))
    room, offset = int(facts.room[i]), int(facts.offset[i])
    if not rng.random() < c.cfg.document_suffix_prob and g <= room:
        s = offset + int(rng.integers(0, room - g + 1))  # as ``_spans_in_segment`` of one span
        return SpanPlan(np.array([s]), np.array([s + g]), None, c.mask_ids[DOCUMENT])
    return c._suffix(sample, g)
