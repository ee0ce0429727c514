"""The batched data path equals the per-sample one, bit for bit (and both equal round 3's stream).

The loader builds a batch with pooled generators (``SampleGenerators``), one planning pass per
sample and one batched layout (``build_blocks_batch``, a vectorised ``collate``). The per-sample
path (``default_rng``, ``Corruptor.__call__`` -> ``build_blocks``) is the reference; a stream
digest pins both to the batches that earlier versions produced, so old runs resume exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.corrupt import build_blocks, build_suffix
from blankfill.data.layout import Planned, SpanPlan, build_blocks_batch
from blankfill.data.loader import PretrainLoader
from blankfill.data.objectives import Corruptor, RawSample
from blankfill.data.pack import collate_pack, collate_pad, collate_plans
from blankfill.data.samples import SplitView, raw_sample, raw_samples
from blankfill.data.seeding import SampleGenerators
from blankfill.data.store import TokenStore
from blankfill.model import build_segment_mask
from blankfill.tokenizer import SpecialTokens

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)
SENTINEL_START = 272

CORRUPT = {
    "token": {},
    "mix": dict(token_prob=0.5, sentence_prob=0.25, document_prob=0.25),
    "mix_batch": dict(token_prob=0.5, sentence_prob=0.25, document_prob=0.25, mix_per="batch"),
    "sentence": dict(token_prob=0.0, sentence_prob=1.0),
    "document_infill": dict(token_prob=0.0, document_prob=1.0, document_suffix_prob=0.0),
    "ablations": dict(
        shuffle_spans=False, block_positions=False, token_prob=0.4, sentence_prob=0.3,
        document_prob=0.3,
    ),
    "sentinels": dict(sentinels=64, sentinel_start=SENTINEL_START),
    "masked_lm": dict(objective="masked_lm"),
    "causal_lm": dict(objective="causal_lm"),
    "short_spans": dict(mask_ratio=0.3, poisson_lambda=1.5, max_span_length=5),
    "dense_spans": dict(mask_ratio=0.7, poisson_lambda=6.0),  # often no fit: the redraws
}  # fmt: skip


def _same(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 2**32 - 1),
    index=st.lists(st.integers(0, 2**32 - 2049) | st.integers(0, 5000), min_size=1, max_size=20),
)
def test_sample_generators_equal_default_rng(seed, epoch, index):
    gens = SampleGenerators(seed)([(epoch, i) for i in index])
    for i, g in zip(index, gens, strict=True):
        ref = np.random.default_rng([seed, epoch, i])
        assert g.random(3).tolist() == ref.random(3).tolist()
        assert g.integers(0, 1000, size=5).tolist() == ref.integers(0, 1000, size=5).tolist()
        assert g.permutation(9).tolist() == ref.permutation(9).tolist()


def test_sample_generators_outside_32_bits_fall_back():
    gens = SampleGenerators(2**40)([(0, 3), (2**33, 1)])
    assert gens[0].random() == np.random.default_rng([2**40, 0, 3]).random()
    assert gens[1].random() == np.random.default_rng([2**40, 2**33, 1]).random()


@st.composite
def _texts_and_plans(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    texts, plans, refs = [], [], []
    for _ in range(draw(st.integers(1, 6))):
        n = int(rng.integers(2, 80))
        text = rng.integers(16, 272, size=n)
        cuts = np.sort(rng.choice(n + 1, size=2 * int(rng.integers(1, n // 2 + 1)), replace=False))
        starts, ends = cuts[0::2], cuts[1::2]
        k = len(starts)
        order = rng.permutation(k) if rng.random() < 0.7 else None
        sentinel = bool(rng.random() < 0.3)
        mask_id = int(rng.choice([SP.mask, SP.smask, SP.gmask]))
        texts.append(text)
        plans.append(SpanPlan(starts, ends, order, mask_id, sentinel))
        refs.append((text, list(zip(starts.tolist(), ends.tolist(), strict=True)), order))
    return texts, plans, refs


@settings(max_examples=150, deadline=None)
@given(case=_texts_and_plans(), block_positions=st.booleans())
def test_build_blocks_batch_equals_build_blocks(case, block_positions):
    texts, plans, refs = case
    sentinel_ids = list(range(SENTINEL_START, SENTINEL_START + 40))
    built = build_blocks_batch(
        texts, plans, sop_id=SP.sop, eop_id=SP.eop, block_positions=block_positions,
        sentinel_ids=sentinel_ids, objectives=list(range(len(texts))),
        sample_indices=[7 * i for i in range(len(texts))],
    )  # fmt: skip
    for b, ((text, spans, order), plan, ex) in enumerate(zip(refs, plans, built, strict=True)):
        ref = build_blocks(
            text, spans, mask_id=plan.mask_id, sop_id=SP.sop, eop_id=SP.eop, order=order,
            block_positions=block_positions, sentinel_ids=sentinel_ids if plan.sentinel else None,
        )  # fmt: skip
        assert ex.objective == b and ex.sample_index == 7 * b
        _same(ex, type(ex)(**{**ref.__dict__, "objective": b, "sample_index": 7 * b}))


def test_build_blocks_batch_needs_enough_sentinels():
    plan = SpanPlan(np.array([1, 4, 7]), np.array([2, 5, 8]), None, SP.mask, True)
    with pytest.raises(ValueError, match="3 spans need 2 sentinel ids, got 1"):
        build_blocks_batch([np.arange(16, 26)], [plan], sop_id=6, eop_id=7, sentinel_ids=[300])


def _raw(rng: np.random.Generator, L: int, docs: int) -> RawSample:
    """``docs`` [CLS] doc [eos] blocks of random length, L tokens in all (L >= 3 * docs)."""
    cuts = (
        np.sort(rng.choice(np.arange(3, L - 2), size=docs - 1, replace=False)) if docs > 1 else []
    )
    toks = rng.integers(16, 272, size=L)
    ends = rng.random(L) < 0.1
    for c in [0, *cuts]:
        toks[c] = SP.cls
        if c:
            toks[c - 1] = SP.eos
    toks[-1] = SP.eos if rng.random() < 0.5 else toks[-1]
    lm = (toks != SP.cls).astype(np.float32)
    return RawSample(tokens=toks, loss_mask=lm, sentence_end=ends & (toks >= 16), index=L)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(CORRUPT)),
    seed=st.integers(0, 2**20),
    lengths=st.lists(st.tuples(st.integers(3, 200), st.integers(1, 4)), min_size=1, max_size=8),
    forced=st.sampled_from([None, 0, 1, 2]),
)
def test_corrupt_batch_equals_per_sample(name, seed, lengths, forced):
    corrupt = Corruptor(CorruptConfig(**CORRUPT[name]), SP)
    make = np.random.default_rng(seed)
    samples = [_raw(make, L, min(d, L // 3)) for L, d in lengths]
    kw = dict(objective=forced, generation_len=None if forced is None else 40)
    rngs = [np.random.default_rng([seed, i]) for i in range(len(samples))]
    batch = corrupt.corrupt_batch(samples, rngs, **kw)
    for i, (s, ex) in enumerate(zip(samples, batch, strict=True)):
        ref = np.random.default_rng([seed, i])
        _same(ex, corrupt(s, ref, **kw))
        # both made the same draws (the state includes numpy's buffered half of a 64-bit draw)
        assert rngs[i].bit_generator.state == ref.bit_generator.state


#: The Batch fields of round 3, in order: packed rows then carried a dense ``attention_mask``,
#: which ``segment_ids``/``context_end`` now stand for (expanded here, so the digests still pin
#: the very same attention).
ROUND3_FIELDS = (
    "input_ids", "labels", "loss_mask", "position_ids", "objective", "sample_index",
    "context_len", "attention_mask",
)  # fmt: skip


def _digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        assert {f.name for f in fields(b)} == {*ROUND3_FIELDS, "segment_ids", "context_end"}
        dense = None
        if b.segment_ids is not None:
            assert b.attention_mask is None
            dense = build_segment_mask(b.segment_ids, b.context_end)
        for name in ROUND3_FIELDS:
            t = dense if name == "attention_mask" and dense is not None else getattr(b, name)
            h.update(name.encode() + (b"-" if t is None else t.numpy().tobytes()))
    return h.hexdigest()[:16]


def _loader(store_dir, name, layout, seq_len=96, batch=5):
    dcfg = DataConfig(
        seq_len=seq_len, batch_size=batch, layout=layout, sample_across_doc=layout == "pad", seed=3
    )
    return PretrainLoader(store_dir, dcfg, CorruptConfig(**CORRUPT[name]), SP)


@pytest.mark.parametrize("layout", ["pad", "pack"])
@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_loader_batch_equals_per_sample_path(store_dir, name, layout):
    ld = _loader(store_dir, name, layout)
    for step in (0, 1, ld.samples_per_epoch // 5 + 1):  # the last runs into the next epoch
        fast = ld.batch(step)
        if ld.corrupt_cfg.mix_per == "batch":
            slow = ld.examples(step * 5, 5)  # (the per-batch draw is the loader's)
        else:
            slow = [ld.corruptor(*ld.raw(g)) for g in range(step * 5, step * 5 + 5)]
        ref = collate_pad(slow) if layout == "pad" else collate_pack(
            slow, row_len=max(120, max(map(len, slow))))  # fmt: skip
        assert _digest([fast]) == _digest([ref])


#: Digests of the first batches of round 3's per-sample loader (commit 6bc6703) on the test store.
STREAM = {
    ("mix", "pad"): "e7c57282e69551b5",
    ("mix_batch", "pack"): "ed51a8d32f6101ab",
    ("sentinels", "pad"): "d4daad3d7f9b41f0",
    ("ablations", "pack"): "4e0f18f85e289606",
}


@pytest.mark.parametrize(("name", "layout"), sorted(STREAM))
def test_stream_unchanged_since_round_3(store_dir, name, layout):
    ld = _loader(store_dir, name, layout)
    assert _digest(ld.batch(s) for s in range(4)) == STREAM[name, layout]


@settings(max_examples=40, deadline=None)
@given(
    seq_len=st.sampled_from([8, 33, 64, 96, 200, 700]),
    across=st.booleans(),
    seed=st.integers(0, 2**20),
    count=st.integers(1, 24),
)
def test_raw_samples_equal_raw_sample(store_dir, seq_len, across, seed, count):
    view = SplitView(TokenStore(store_dir), np.arange(24))
    anchors = np.random.default_rng(seed).integers(view.num_tokens, size=count).tolist()
    anchors[0] = view.num_tokens - 1  # the store's last token
    kw = dict(seq_len=seq_len, special=SP, sample_across_doc=across)
    rngs = [np.random.default_rng([seed, i]) for i in range(count)]
    got = raw_samples(view, anchors, rngs, indices=list(range(count)), **kw)
    for i, (a, s) in enumerate(zip(anchors, got, strict=True)):
        rng = np.random.default_rng([seed, i])
        _same(s, raw_sample(view, a, rng, index=i, **kw))
        assert rng.random() == rngs[i].random()  # both made the same draws


@settings(max_examples=80, deadline=None)
@given(
    case=_texts_and_plans(),
    examples=st.lists(st.tuples(st.integers(3, 60), st.integers(0, 9)), max_size=4),
    row_len=st.sampled_from([None, 0, 40, 200]),
    block_positions=st.booleans(),
    seed=st.integers(0, 2**20),
)
def test_collate_plans_equals_collating_examples(case, examples, row_len, block_positions, seed):
    """Planned samples laid straight into the rows (between ready Examples, several to a row)
    give the batch that collating their Examples gives, padded and packed."""
    texts, plans, _ = case
    rng = np.random.default_rng(seed)
    sentinel_ids = list(range(SENTINEL_START, SENTINEL_START + 40))
    corrupt = Corruptor(
        CorruptConfig(block_positions=block_positions, sentinels=40, sentinel_start=SENTINEL_START),
        SP,
    )
    items = [
        Planned(t, p, int(rng.integers(3)), 10 + i)
        for i, (t, p) in enumerate(zip(texts, plans, strict=True))
    ]
    for n, at in examples:  # suffix-form Examples at random places in the stream
        ex = build_suffix(
            rng.integers(16, 272, size=n),
            int(rng.integers(1, n)),
            gmask_id=SP.gmask,
            sop_id=SP.sop,
            loss_mask=(rng.random(n) < 0.8).astype(np.float32),
        )
        items.insert(
            min(at, len(items)), replace(ex, objective=2, sample_index=int(rng.integers(99)))
        )
    built = iter(build_blocks_batch(
        [x.text for x in items if isinstance(x, Planned)],
        [x.plan for x in items if isinstance(x, Planned)],
        sop_id=SP.sop, eop_id=SP.eop, block_positions=block_positions, sentinel_ids=sentinel_ids,
        objectives=[x.objective for x in items if isinstance(x, Planned)],
        sample_indices=[x.sample_index for x in items if isinstance(x, Planned)],
    ))  # fmt: skip
    exs = [next(built) if isinstance(x, Planned) else x for x in items]
    longest = max(map(len, exs))
    if row_len is None:
        got, ref = collate_plans(items, corrupt.layout, pad_to=7), collate_pad(exs, pad_to=7)
    else:
        row = max(row_len, longest)
        got, ref = collate_plans(items, corrupt.layout, row_len=row), collate_pack(exs, row_len=row)
    for f in fields(ref):
        a, b = getattr(got, f.name), getattr(ref, f.name)
        assert (a is None) == (b is None), f.name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), f.name


def test_plan_batch_edge_cases():
    """Texts without a sentence, of several documents, of [CLS] x [eos] only, without eos:
    the batched planning makes the per-sample plans and draws."""
    toks = [
        [SP.cls, SP.eos, SP.cls, SP.eos],  # no sentence, two empty documents
        [SP.cls, 20, SP.eos],  # the shortest text
        [SP.cls, 20, 21, 22, 23, 24, 25, 26],  # cut: no eos
        [SP.cls, 20, 21, SP.eos, SP.cls, 22, 23, 24, SP.eos],  # two documents
        [20, 21, 22, 23, SP.eos],  # no [CLS]
    ]
    samples = [
        RawSample(tokens=np.array(t), loss_mask=(np.array(t) != SP.cls).astype(np.float32),
                  sentence_end=np.array(t) == 22, index=i)
        for i, t in enumerate(toks)
    ]  # fmt: skip
    for name in ("sentence", "document_infill", "mix", "dense_spans", "ablations"):
        corrupt = Corruptor(CorruptConfig(**CORRUPT[name]), SP)
        for seed in range(30):
            for forced in (None, 0, 1, 2):
                kw = dict(objective=forced, generation_len=None if forced is None else 3)
                rngs = [np.random.default_rng([seed, i]) for i in range(len(samples))]
                batch = corrupt.corrupt_batch(samples, rngs, **kw)
                for i, (s, ex) in enumerate(zip(samples, batch, strict=True)):
                    ref = np.random.default_rng([seed, i])
                    _same(ex, corrupt(s, ref, **kw))
                    assert rngs[i].bit_generator.state == ref.bit_generator.state
