"""The ablations and baselines of GLM Table 6 / §3: layout properties and statistics.

masked LM (BERT), causal LM (GPT), sentinel blanks (T5-style), through the corruptor and loader.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.baselines import build_causal, build_masked
from blankfill.data.corrupt import build_blocks, reconstruct
from blankfill.data.loader import PretrainLoader
from blankfill.data.objectives import DOCUMENT, TOKEN, Corruptor, RawSample
from blankfill.data.pack import collate_pad
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.tokenizer import SpecialTokens
from blankfill.train.loop import TargetLogits, loss_sums

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)
MASK, SOP, EOP = SP.mask, SP.sop, SP.eop
SENT0 = 300  # sentinels past the stand-in vocabulary (16 + 256 ids)


@st.composite
def text_and_spans(draw):
    n = draw(st.integers(2, 60))
    text = draw(st.lists(st.integers(16, 271), min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=12))))
    pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
    perm = draw(st.permutations(list(range(len(pairs)))))
    return text, pairs, perm


@settings(max_examples=120, deadline=None)
@given(text_and_spans())
def test_masked_lm_layout(data):
    text, spans, _ = data
    ex = build_masked(text, spans, mask_id=MASK)
    n = len(text)
    covered = np.zeros(n, bool)
    for s, e in spans:
        covered[s:e] = True
    assert len(ex) == n and ex.context_len == n  # no Part B; fully bidirectional
    assert (ex.input_ids == np.where(covered, MASK, text)).all()  # replaced in place
    assert ex.labels.tolist() == text  # predicted at their own positions (no shift)
    assert (ex.loss_mask == covered).all()
    assert ex.position_ids[0].tolist() == list(range(n)) and not ex.position_ids[1].any()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(16, 271), min_size=2, max_size=60))
def test_causal_lm_layout(text):
    lm = np.ones(len(text), np.float32)
    lm[0] = 0
    ex = build_causal(text, lm)
    assert ex.context_len == 0 and len(ex) == len(text) - 1
    assert ex.input_ids.tolist() == text[:-1] and ex.labels.tolist() == text[1:]  # next token
    assert ex.loss_mask.all()
    assert ex.position_ids[0].tolist() == list(range(len(text) - 1))


@settings(max_examples=120, deadline=None)
@given(text_and_spans(), st.booleans())
def test_sentinel_layout(data, shuffled):
    text, spans, perm = data
    order = perm if shuffled else None
    sentinels = list(range(SENT0, SENT0 + 12))
    ex = build_blocks(text, spans, mask_id=MASK, sop_id=SOP, eop_id=EOP, order=order,
                      sentinel_ids=sentinels)  # fmt: skip
    n, k, sep = len(text), len(spans), ex.context_len
    ids, labels, (pos, blk) = ex.input_ids, ex.labels, ex.position_ids
    assert len(ids) == n + 2 * k and sep == n - sum(e - s for s, e in spans) + k
    # Part A: span 0 (of Part B) keeps [MASK], span i >= 1 has its own [MASK_i]
    blanks = [MASK, *sentinels][:k]
    assert sorted(t for t in ids[:sep].tolist() if t >= SENT0 or t == MASK) == sorted(blanks)
    # Part B: the i-th span opens with [sop] (i = 0) or [MASK_i]
    opens = [t for t in range(sep, len(ids)) if blk[t] == 1]
    assert ids[opens].tolist() == [SOP, *sentinels][:k]
    expected = order if order is not None else sorted(range(k), key=lambda i: spans[i][0])
    for j, (s, e) in enumerate(zip(opens, [*opens[1:], len(ids)], strict=False)):
        a, b = spans[expected[j]]
        assert labels[s:e].tolist() == [*text[a:b], EOP]
        assert blk[s:e].tolist() == list(range(1, b - a + 2))
    # Part B's positions say nothing of where a span was: all equal |Part A|
    assert (pos[sep:] == sep).all()
    got = reconstruct(ex, sop_id=SOP, eop_id=EOP, sentinel_ids=sentinels, mask_id=MASK)
    assert got.tolist() == text


def test_sentinels_must_cover_the_spans():
    with pytest.raises(ValueError, match="sentinel"):
        build_blocks(list(range(16, 30)), [(1, 2), (4, 5), (7, 8)], mask_id=MASK, sop_id=SOP,
                     eop_id=EOP, sentinel_ids=[SENT0])  # fmt: skip
    with pytest.raises(ValueError, match="special ids"):
        Corruptor(CorruptConfig(sentinels=8, sentinel_start=4), SP)
    with pytest.raises(ValueError, match="corrupt.sentinels"):
        CorruptConfig(objective="masked_lm", sentinels=4)
    with pytest.raises(ValueError, match="corrupt.sentinels"):
        CorruptConfig(sentinels=-1)
    with pytest.raises(ValueError, match="corrupt.objective"):
        CorruptConfig(objective="t5")


def _raw(rng: np.random.Generator, L: int) -> RawSample:
    toks = np.concatenate(([SP.cls], rng.integers(16, 272, size=L - 2), [SP.eos]))
    lm = np.ones(L, np.float32)
    lm[0] = 0
    return RawSample(tokens=toks, loss_mask=lm, sentence_end=np.zeros(L, bool))


def test_masked_lm_statistics():
    """>= 3k samples: 15% of the tokens masked; max_span_length=2 gives BERT's single tokens."""
    L = 200
    for max_span, mean_len in ((40, 3.16), (2, 1.0)):
        corrupt = Corruptor(CorruptConfig(objective="masked_lm", max_span_length=max_span), SP)
        ratios, runs = [], []
        for i in range(3000):
            rng = np.random.default_rng([3, 0, i])
            raw = _raw(rng, L)
            ex = corrupt(raw, rng)
            assert ex.objective == TOKEN and ex.context_len == L
            m = ex.loss_mask > 0
            assert (ex.input_ids[m] == MASK).all() and (ex.labels == raw.tokens).all()
            assert not m[0] and not m[-1]  # never [CLS] or the final eos
            ratios.append(m.sum() / L)
            edges = np.diff(np.concatenate(([0], m.astype(int), [0])))
            runs += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
        assert 0.148 < np.mean(ratios) < 0.165, np.mean(ratios)
        # adjacent spans never touch (>= 1 visible token apart), so runs are the spans
        assert abs(np.mean(runs) - mean_len) < 0.1, (max_span, np.mean(runs))


def test_sentinel_statistics():
    cfg = CorruptConfig(sentinels=64, sentinel_start=SENT0)
    corrupt = Corruptor(cfg, SP)
    for i in range(500):
        rng = np.random.default_rng([5, 0, i])
        ex = corrupt(_raw(rng, 160), rng)
        sep = ex.context_len
        k = int((ex.labels[sep:] == EOP).sum())
        assert k >= 2 and (ex.input_ids[:sep] == MASK).sum() == 1
        got = sorted(t for t in ex.input_ids[:sep] if t >= SENT0)
        assert got == list(range(SENT0, SENT0 + k - 1))
        assert (ex.position_ids[0, sep:] == sep).all()


def test_causal_lm_through_loader_and_loss(store_dir):
    """causal_lm: every row is causal (context 0) and the loss is next-token cross-entropy."""
    data = DataConfig(seq_len=48, batch_size=4)
    loader = PretrainLoader(store_dir, data, CorruptConfig(objective="causal_lm"), SP)
    batch = next(iter(loader))
    assert (batch.context_len == 0).all()
    assert (batch.objective[batch.loss_mask > 0] == DOCUMENT).all()
    for e in loader.examples(0, 4):
        assert (e.labels[:-1] == e.input_ids[1:]).all() and e.loss_mask.sum() >= len(e) - 2
    torch.manual_seed(0)
    glm = GLM(tiny_config(vocab_size=384)).eval()
    ce_sum, stats = loss_sums(TargetLogits(glm)(batch), batch)
    with torch.no_grad():
        logits = glm(batch.input_ids, batch.position_ids, torch.zeros(len(batch.input_ids)).long())
    ref = torch.nn.functional.cross_entropy(logits[batch.loss_mask > 0],
                                            batch.labels[batch.loss_mask > 0], reduction="sum")  # fmt: skip
    assert torch.allclose(ce_sum.detach(), ref, rtol=1e-4)
    assert stats[1] == batch.loss_mask.sum()


def test_masked_lm_through_loader(store_dir):
    """masked_lm: rows are fully bidirectional; a masked token sees tokens to its right."""
    data = DataConfig(seq_len=48, batch_size=4)
    loader = PretrainLoader(store_dir, data, CorruptConfig(objective="masked_lm"), SP)
    ex = loader.examples(0, 4)
    batch = collate_pad(ex)
    assert batch.context_len.tolist() == [len(e) for e in ex]
    torch.manual_seed(0)
    glm = GLM(tiny_config(vocab_size=384)).eval()
    b = batch.input_ids[:1, : len(ex[0])]
    pos = batch.position_ids[:1, :, : len(ex[0])]
    with torch.no_grad():
        out = glm(b, pos, batch.context_len[:1])
        b2 = b.clone()
        b2[0, -2] = 20 if b2[0, -2] != 20 else 21  # change a late token: early logits move
        out2 = glm(b2, pos, batch.context_len[:1])
    assert not torch.allclose(out[0, 0], out2[0, 0])
    assert (batch.labels[batch.loss_mask > 0] != MASK).all()
