"""The three GLM objectives and their mix (GLM §2.2, spec §3.2-3.3).

- token level (``[MASK]``, objective 0): span lengths ~ Poisson(λ) on [1, max) until
  ``floor(mask_ratio * L)`` tokens, placed at random inside the documents of the text;
- sentence level (``[sMASK]``, objective 1): whole sentences, in random order, until
  ``floor(sentence_ratio * L)`` tokens are covered;
- document level (``[gMASK]``, objective 2): one span of g ~ U[floor(min_ratio * L), L - 2]
  tokens; in suffix mode (always for texts holding more than one document, otherwise with
  ``document_suffix_prob``) the span is the text's suffix (``build_suffix``), else it sits at a
  random place (``build_blocks``).

Part-B order is a seeded permutation when ``shuffle_spans`` (GLM §2.1), else text order. With
``sentinels`` the token level blanks span i >= 1 of Part B with its own ``[MASK_i]`` (GLM Table 6).
``objective = "masked_lm"`` / ``"causal_lm"`` replace the mix by the BERT / GPT baselines
(``blankfill.data.baselines``); their examples count as objective 0 (MASK) / 2 (gMASK, generation)
in the per-objective losses. The corruptor holds no state; every draw comes from the ``rng`` passed
in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config import CorruptConfig
from .baselines import build_causal, build_masked
from .corrupt import (
    Example,
    build_blocks,
    build_suffix,
    document_segments,
    place_spans,
    sample_span_lengths,
    sentence_spans,
    span_length_pmf,
)

TOKEN, SENTENCE, DOCUMENT = 0, 1, 2  # indices into OBJECTIVES
_MAX_REDRAWS = 8


@dataclass(frozen=True, kw_only=True)
class RawSample:
    """A window of text before corruption (official ``BlockDataset`` output).

    Attributes:
        tokens: int64 [L]: ``[CLS] doc [eos]`` blocks (the last may be cut at a sentence end).
        loss_mask: float32 [L]: 0 at each ``[CLS]``, 1 elsewhere.
        sentence_end: bool [L]: True where the token ends a sentence.
        index: global sample index (-1 outside a stream).
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    sentence_end: np.ndarray
    index: int = -1

    def __len__(self) -> int:
        return len(self.tokens)


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


class Corruptor:
    """Turns ``RawSample``s into ``Example``s by the configured objective mix.

    Args:
        cfg: the ``corrupt`` config section.
        special: special token ids (``cls eos mask smask gmask sop eop``); ``smask``/``gmask`` may
            be None, in which case ``[MASK]`` stands in (the official code without task masks).
    """

    def __init__(self, cfg: CorruptConfig, special: Any) -> None:
        self.cfg = cfg
        self.cls, self.eos = int(special.cls), int(special.eos)
        self.sop, self.eop = int(special.sop), int(special.eop)
        self.mask_ids = (
            int(special.mask),
            int(special.smask if special.smask is not None else special.mask),
            int(special.gmask if special.gmask is not None else special.mask),
        )
        self.pmf = span_length_pmf(cfg.poisson_lambda, cfg.max_span_length)
        self.sentinel_ids: list[int] | None = None
        if cfg.sentinels:
            self.sentinel_ids = list(range(cfg.sentinel_start, cfg.sentinel_start + cfg.sentinels))
            taken = {int(v) for v in vars(special).values() if isinstance(v, int)}
            clash = sorted(taken.intersection(self.sentinel_ids))
            if clash:
                raise ValueError(
                    f"corrupt.sentinel_start={cfg.sentinel_start} puts sentinels on special ids "
                    f"{clash}; set it to the tokenizer's vocab_size"
                )

    def __call__(
        self,
        sample: RawSample,
        rng: np.random.Generator,
        *,
        objective: int | None = None,
        generation_len: int | None = None,
    ) -> Example:
        """Corrupt one sample.

        Args:
            sample: the raw text window (length L >= 3).
            rng: this sample's generator (``default_rng([seed, epoch, index])``).
            objective: force an objective (per-batch mix); None draws it from ``rng``.
            generation_len: document level: the batch's g (per-batch mix); None draws it.
        """
        if len(sample) < 3:
            raise ValueError(f"a sample needs at least 3 tokens ([CLS] x [eos]), got {len(sample)}")
        u = rng.random()  # always drawn, so the stream does not depend on the mix
        if self.cfg.objective == "masked_lm":
            spans = self._token_spans(sample, rng) or []
            ex = build_masked(sample.tokens, spans, mask_id=self.mask_ids[TOKEN])
            return replace(ex, objective=TOKEN, sample_index=sample.index)
        if self.cfg.objective == "causal_lm":
            ex = build_causal(sample.tokens, sample.loss_mask)
            return replace(ex, objective=DOCUMENT, sample_index=sample.index)
        obj = choose_objective(u, self.cfg) if objective is None else objective
        if obj == SENTENCE:
            ex = self.sentence_level(sample, rng)
            obj = SENTENCE if ex is not None else TOKEN
        else:
            ex = None
        if obj == TOKEN:
            ex = self.token_level(sample, rng)
            obj = TOKEN if ex is not None else DOCUMENT
        if obj == DOCUMENT:
            if generation_len is None:
                generation_len = draw_generation_len(
                    rng, [len(sample)], self.cfg.document_min_ratio
                )
            ex = self.document_level(sample, rng, generation_len)
        assert ex is not None
        return replace(ex, objective=obj, sample_index=sample.index)

    def _order(self, k: int, rng: np.random.Generator) -> list[int] | None:
        return rng.permutation(k).tolist() if self.cfg.shuffle_spans else None

    def _blocks(self, sample: RawSample, spans, mask_id: int, rng, sentinel_ids=None) -> Example:
        return build_blocks(
            sample.tokens,
            spans,
            mask_id=mask_id,
            sop_id=self.sop,
            eop_id=self.eop,
            order=self._order(len(spans), rng),
            block_positions=self.cfg.block_positions,
            sentinel_ids=sentinel_ids,
        )

    def _token_spans(self, sample: RawSample, rng: np.random.Generator) -> list | None:
        """Poisson spans covering ``mask_ratio`` of the text, sorted; None if they do not fit."""
        segs = document_segments(sample.tokens, cls_id=self.cls, eos_id=self.eos)
        target = int(self.cfg.mask_ratio * len(sample))
        for _ in range(_MAX_REDRAWS):
            lengths = sample_span_lengths(target, rng, pmf=self.pmf)
            spans = place_spans(lengths, segs, rng, ratio=self.cfg.mask_ratio)
            if spans is not None and spans:
                return sorted(spans)
        return None

    def token_level(self, sample: RawSample, rng: np.random.Generator) -> Example | None:
        """``[MASK]`` (or sentinel) spans; None if they cannot be placed (many short documents)."""
        spans = self._token_spans(sample, rng)
        if spans is None:
            return None
        return self._blocks(sample, spans, self.mask_ids[TOKEN], rng, self.sentinel_ids)

    def sentence_level(self, sample: RawSample, rng: np.random.Generator) -> Example | None:
        """Whole sentences as ``[sMASK]`` spans; None when the text has no sentence."""
        sents = sentence_spans(sample.tokens, sample.sentence_end, cls_id=self.cls, eos_id=self.eos)
        if not sents:
            return None
        target = int(self.cfg.sentence_ratio * len(sample))
        chosen, covered = [], 0
        for i in rng.permutation(len(sents)).tolist():
            chosen.append(sents[i])
            covered += sents[i][1] - sents[i][0]
            if covered >= target:
                break
        chosen.sort()
        return self._blocks(sample, chosen, self.mask_ids[SENTENCE], rng)

    def document_level(
        self, sample: RawSample, rng: np.random.Generator, generation_len: int
    ) -> Example:
        """One ``[gMASK]`` span of ``min(generation_len, L - 2)`` tokens (suffix or infill form)."""
        L = len(sample)
        g = max(1, min(int(generation_len), L - 2))
        eos_at = np.flatnonzero(sample.tokens == self.eos)
        suffix = len(eos_at) > 0 and eos_at[0] != L - 1  # more than one document in the text
        if suffix or rng.random() < self.cfg.document_suffix_prob:
            return build_suffix(
                sample.tokens,
                g,
                gmask_id=self.mask_ids[DOCUMENT],
                sop_id=self.sop,
                loss_mask=sample.loss_mask,
                block_positions=self.cfg.block_positions,
            )
        segs = document_segments(sample.tokens, cls_id=self.cls, eos_id=self.eos)
        spans = place_spans([g], segs, rng, ratio=1.0)
        if not spans:  # the document is shorter than g (cut text): fall back to the suffix form
            return build_suffix(
                sample.tokens, g, gmask_id=self.mask_ids[DOCUMENT], sop_id=self.sop,
                loss_mask=sample.loss_mask, block_positions=self.cfg.block_positions,
            )  # fmt: skip
        return self._blocks(sample, spans, self.mask_ids[DOCUMENT], rng)
