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
from .corrupt import Example, build_blocks, build_suffix
from .layout import FlatBlocks, Planned, SpanPlan, flat_blocks
from .planning import (  # re-exported: the objective ids and draws
    DOCUMENT,
    MAX_REDRAWS,
    SENTENCE,
    TOKEN,
    choose_objective,
    draw_generation_len,
    plan_batch,
)
from .spans import (
    document_segments,
    place_span_arrays,
    sentence_span_arrays,
    span_length_array,
    span_length_pmf,
    span_length_table,
)


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
        self.cdf, self.mean = span_length_table(self.pmf)
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
        obj, plan = self.plan(sample, rng, objective=objective, generation_len=generation_len)
        if isinstance(plan, SpanPlan):
            plan = build_blocks(
                sample.tokens,
                np.stack([plan.starts, plan.ends], axis=1),
                mask_id=plan.mask_id,
                sop_id=self.sop,
                eop_id=self.eop,
                order=plan.order,
                block_positions=self.cfg.block_positions,
                sentinel_ids=self.sentinel_ids if plan.sentinel else None,
            )
        return replace(plan, objective=obj, sample_index=sample.index)

    def corrupt_batch(
        self,
        samples: list[RawSample],
        rngs: list[np.random.Generator],
        *,
        objective: int | None = None,
        generation_len: int | None = None,
    ) -> list[Example]:
        """``[self(s, rng, ...) for s, rng in zip(samples, rngs)]``, planned by ``plan_batch``
        and with the Part A / Part B layout of all span objectives built in one batched pass
        (``build_blocks_batch``)."""
        items = self.corrupt_plans(
            samples, rngs, objective=objective, generation_len=generation_len
        )
        spans = [x for x in items if isinstance(x, Planned)]
        built = iter(
            self.layout([x.text for x in spans], [x.plan for x in spans]).examples(
                [x.objective for x in spans], [x.sample_index for x in spans]
            )
            if spans
            else ()
        )
        return [next(built) if isinstance(x, Planned) else x for x in items]

    def corrupt_plans(
        self,
        samples: list[RawSample],
        rngs: list[np.random.Generator],
        *,
        objective: int | None = None,
        generation_len: int | None = None,
    ) -> list[Example | Planned]:
        """``corrupt_batch`` with the span samples still ``Planned`` (``collate_plans`` lays
        them out straight into a batch's rows); arguments as ``corrupt_batch``."""
        plans = self.plan_batch(samples, rngs, objective=objective, generation_len=generation_len)
        return [
            Planned(s.tokens, p, obj, s.index)
            if isinstance(p, SpanPlan)
            else replace(p, objective=obj, sample_index=s.index)
            for s, (obj, p) in zip(samples, plans, strict=True)
        ]

    def layout(self, texts: list[np.ndarray], plans: list[SpanPlan]) -> FlatBlocks:
        """``flat_blocks`` of span samples with this corruptor's special ids and ablations."""
        return flat_blocks(
            texts, plans, sop_id=self.sop, eop_id=self.eop,
            block_positions=self.cfg.block_positions, sentinel_ids=self.sentinel_ids,
        )  # fmt: skip

    def plan(
        self,
        sample: RawSample,
        rng: np.random.Generator,
        *,
        objective: int | None = None,
        generation_len: int | None = None,
    ) -> tuple[int, SpanPlan | Example]:
        """Every draw of one sample: its objective and its spans (or the finished Example of
        the suffix form and the baselines). Arguments as ``__call__``."""
        if len(sample) < 3:
            raise ValueError(f"a sample needs at least 3 tokens ([CLS] x [eos]), got {len(sample)}")
        u = rng.random()  # always drawn, so the stream does not depend on the mix
        if self.cfg.objective == "masked_lm":
            found = self._token_spans(sample, rng)
            spans = [] if found is None else np.stack(found, axis=1).tolist()
            return TOKEN, build_masked(sample.tokens, spans, mask_id=self.mask_ids[TOKEN])
        if self.cfg.objective == "causal_lm":
            return DOCUMENT, build_causal(sample.tokens, sample.loss_mask)
        obj = choose_objective(u, self.cfg) if objective is None else objective
        plan: SpanPlan | Example | None = None
        if obj == SENTENCE:
            plan = self.sentence_level(sample, rng)
            obj = SENTENCE if plan is not None else TOKEN
        if obj == TOKEN:
            plan = self.token_level(sample, rng)
            obj = TOKEN if plan is not None else DOCUMENT
        if obj == DOCUMENT:
            plan = self._document(sample, rng, generation_len)
        assert plan is not None
        return obj, plan

    def plan_batch(
        self,
        samples: list[RawSample],
        rngs: list[np.random.Generator],
        *,
        objective: int | None = None,
        generation_len: int | None = None,
    ) -> list[tuple[int, SpanPlan | Example]]:
        """``[self.plan(s, rng, ...) for ...]``: the same draws from each generator, with the
        numpy work between them done for the batch at once (``planning.plan_batch``)."""
        if self.cfg.objective != "glm":
            return [
                self.plan(s, r, objective=objective, generation_len=generation_len)
                for s, r in zip(samples, rngs, strict=True)
            ]
        return plan_batch(self, samples, rngs, objective=objective, generation_len=generation_len)

    def _document(
        self, sample: RawSample, rng: np.random.Generator, generation_len: int | None
    ) -> SpanPlan | Example:
        if generation_len is None:
            generation_len = draw_generation_len(rng, [len(sample)], self.cfg.document_min_ratio)
        return self.document_level(sample, rng, generation_len)

    def _plan(self, starts, ends, mask_id: int, rng, sentinel: bool = False) -> SpanPlan:
        order = rng.permutation(len(starts)) if self.cfg.shuffle_spans else None
        return SpanPlan(starts, ends, order, mask_id, sentinel)

    def _token_spans(self, sample: RawSample, rng: np.random.Generator, tries: int = MAX_REDRAWS):
        """Poisson spans covering ``mask_ratio`` of the text as sorted int64 (starts, ends);
        None if they do not fit in ``tries`` draws."""
        segs = document_segments(sample.tokens, cls_id=self.cls, eos_id=self.eos)
        target = int(self.cfg.mask_ratio * len(sample))
        for _ in range(tries):
            lengths = span_length_array(target, rng, self.cdf, self.mean)
            spans = place_span_arrays(lengths, segs, rng, ratio=self.cfg.mask_ratio)
            if spans is not None and len(spans[0]):
                if len(segs) == 1:  # placed in one segment: already in text order
                    return spans
                by_start = spans[0].argsort()
                return spans[0][by_start], spans[1][by_start]
        return None

    def token_level(self, sample: RawSample, rng: np.random.Generator) -> SpanPlan | None:
        """``[MASK]`` (or sentinel) spans; None if they cannot be placed (many short documents)."""
        spans = self._token_spans(sample, rng)
        if spans is None:
            return None
        return self._plan(*spans, self.mask_ids[TOKEN], rng, self.sentinel_ids is not None)

    def sentence_level(self, sample: RawSample, rng: np.random.Generator) -> SpanPlan | None:
        """Whole sentences as ``[sMASK]`` spans; None when the text has no sentence."""
        starts, ends = sentence_span_arrays(
            sample.tokens, sample.sentence_end, cls_id=self.cls, eos_id=self.eos
        )
        if not len(starts):
            return None
        target = int(self.cfg.sentence_ratio * len(sample))
        perm = rng.permutation(len(starts))
        # shuffled sentences until they cover the target (the first that reaches it included)
        stop = int((ends - starts)[perm].cumsum().searchsorted(target))
        chosen = np.sort(perm[: stop + 1])
        return self._plan(starts[chosen], ends[chosen], self.mask_ids[SENTENCE], rng)

    def document_level(
        self, sample: RawSample, rng: np.random.Generator, generation_len: int
    ) -> SpanPlan | Example:
        """One ``[gMASK]`` span of ``min(generation_len, L - 2)`` tokens: the suffix form (an
        Example) or the infill form (a plan)."""
        L = len(sample)
        g = max(1, min(int(generation_len), L - 2))
        eos_at = np.flatnonzero(sample.tokens == self.eos)
        suffix = len(eos_at) > 0 and eos_at[0] != L - 1  # more than one document in the text
        if not suffix and not rng.random() < self.cfg.document_suffix_prob:
            segs = document_segments(sample.tokens, cls_id=self.cls, eos_id=self.eos)
            spans = place_span_arrays(np.array([g]), segs, rng, ratio=1.0)
            if spans is not None and len(spans[0]):
                return self._plan(*spans, self.mask_ids[DOCUMENT], rng)
        # else, or when the document is shorter than g (cut text): the suffix form
        return self._suffix(sample, g)

    def _suffix(self, sample: RawSample, g: int) -> Example:
        return build_suffix(
            sample.tokens, g, gmask_id=self.mask_ids[DOCUMENT], sop_id=self.sop,
            loss_mask=sample.loss_mask, block_positions=self.cfg.block_positions,
        )  # fmt: skip
