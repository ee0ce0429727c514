"""Objective statistics, batching, and the loader's stream: ranks, workers, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.corrupt import Example, build_blocks, span_length_pmf
from blankfill.data.loader import AHEAD, PretrainLoader, split_documents
from blankfill.data.objectives import DOCUMENT, SENTENCE, TOKEN, Corruptor, RawSample
from blankfill.data.pack import collate_pack, collate_pad, pack_rows, packing_efficiency
from blankfill.model import GLM, build_attention_mask, build_segment_mask
from blankfill.testing import tiny_config
from blankfill.tokenizer import SpecialTokens

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)
MIX = CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25)


def _raw(rng: np.random.Generator, L: int) -> RawSample:
    toks = np.concatenate(([SP.cls], rng.integers(16, 272, size=L - 2), [SP.eos]))
    ends = np.zeros(L, bool)
    ends[1:-1] = rng.random(L - 2) < 0.08
    lm = np.ones(L, np.float32)
    lm[0] = 0
    return RawSample(tokens=toks, loss_mask=lm, sentence_end=ends)


def _segments(ex: Example) -> list[int]:
    blk = ex.position_ids[1]
    starts = [i for i in range(ex.context_len, len(ex)) if blk[i] == 1]
    return [e - s - 1 for s, e in zip(starts, [*starts[1:], len(ex)], strict=False)]


def test_token_level_statistics():
    """>= 10k samples: masked ratio ~ 15%, span lengths ~ Poisson(3) truncated to [1, 40)."""
    corrupt = Corruptor(CorruptConfig(), SP)
    L, lengths, ratios = 200, [], []
    for i in range(10_000):
        rng = np.random.default_rng([7, 0, i])
        ex = corrupt(_raw(rng, L), rng)
        assert ex.objective == TOKEN
        seg = _segments(ex)
        lengths += seg
        ratios.append(sum(seg) / L)
    assert 0.148 < np.mean(ratios) < 0.165, np.mean(ratios)
    assert min(ratios) >= int(0.15 * L) / L
    obs = np.bincount(lengths, minlength=41)[1:40]
    assert obs.sum() == len(lengths) and max(lengths) < 40
    exp = span_length_pmf(3.0, 40) * len(lengths)
    k = 10  # lengths >= 10 pooled (expected counts there are small)
    obs_b = np.append(obs[: k - 1], obs[k - 1 :].sum())
    exp_b = np.append(exp[: k - 1], exp[k - 1 :].sum())
    assert chisquare(obs_b, exp_b).pvalue > 1e-3


def test_other_objectives_and_mix():
    corrupt = Corruptor(MIX, SP)
    counts = np.zeros(3)
    for i in range(600):
        rng = np.random.default_rng([1, 0, i])
        raw = _raw(rng, 120)
        ex = corrupt(raw, rng)
        counts[ex.objective] += 1
        if ex.objective == SENTENCE:
            assert (ex.input_ids[: ex.context_len] == SP.smask).sum() == len(_segments(ex))
            assert sum(_segments(ex)) >= int(0.15 * 120)
        if ex.objective == DOCUMENT:
            assert (ex.input_ids == SP.gmask).sum() == 1
            g = int(ex.loss_mask.sum()) - (ex.labels == SP.eop).sum()
            assert 60 - 1 <= g <= 120 - 2 + 1
    assert np.allclose(counts / counts.sum(), [0.5, 0.25, 0.25], atol=0.06)


def test_suffix_for_multi_document_text():
    rng = np.random.default_rng(0)
    a, b = _raw(rng, 30), _raw(rng, 30)
    two = RawSample(
        tokens=np.concatenate((a.tokens, b.tokens)),
        loss_mask=np.concatenate((a.loss_mask, b.loss_mask)),
        sentence_end=np.concatenate((a.sentence_end, b.sentence_end)),
    )
    cfg = CorruptConfig(token_prob=0.0, document_prob=1.0, document_suffix_prob=0.0)
    ex = Corruptor(cfg, SP)(two, rng)
    assert len(ex) == 61 and ex.input_ids[ex.context_len] == SP.sop  # suffix form despite prob 0


def test_pack_matches_separate_forwards():
    rng = np.random.default_rng(3)
    exs = []
    for i, n in enumerate((18, 7, 12, 23)):
        toks = rng.integers(16, 272, size=n)
        spans = [(1, 3), (n - 2, n)] if i % 2 else [(2, 5)]
        ex = build_blocks(toks, spans, mask_id=SP.mask, sop_id=SP.sop, eop_id=SP.eop, order=None)
        exs.append(Example(**{**vars(ex), "sample_index": 10 + i}))
    rows = pack_rows([len(e) for e in exs], 42)
    assert rows == [[0, 1], [2, 3]]
    packed = collate_pack(exs, row_len=42)
    assert packed.input_ids.shape == (2, 42) and packed.context_len is None
    assert packed.sample_index.tolist() == [10, 12]
    assert packing_efficiency(exs, packed) == sum(map(len, exs)) / 84
    model = GLM(tiny_config()).eval()
    padded = collate_pad(exs)
    with torch.no_grad():
        ref = model(padded.input_ids, padded.position_ids.clone(), context_len=padded.context_len)
        out = model(packed.input_ids, packed.position_ids, segment_ids=packed.segment_ids,
                    context_end=packed.context_end)  # fmt: skip
    dense = build_segment_mask(packed.segment_ids, packed.context_end)  # [R, 1, T, T]
    for row, members in enumerate(rows):
        o = 0
        for i in members:
            n = len(exs[i])
            torch.testing.assert_close(out[row, o : o + n], ref[i, :n], atol=1e-5, rtol=1e-5)
            mask = build_attention_mask(exs[i].context_len, n, n)[0, 0]
            assert torch.equal(dense[row, 0, o : o + n, o : o + n], mask)
            o += n
        assert not dense[row, 0, :o, o:].any()  # no view into padding


def test_padded_batch_objective_and_loss():
    ex = build_blocks([20, 21, 22, 23], [(1, 3)], mask_id=SP.mask, sop_id=SP.sop, eop_id=SP.eop)
    batch = collate_pad([ex, ex], pad_to=12)
    assert batch.input_ids.shape == (2, 12) and batch.context_len.tolist() == [3, 3]
    assert batch.objective[0].tolist() == [-1] * 3 + [0] * 3 + [-1] * 6
    assert batch.loss_mask.dtype == torch.float32 and batch.num_targets == 6


def _loader(store_dir, *, rank=0, world=1, batch=2, workers=0, mix_per="sample", seq_len=96, **kw):
    dcfg = DataConfig(seq_len=seq_len, batch_size=batch, num_workers=workers, seed=5, **kw)
    ccfg = CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25, mix_per=mix_per)
    return PretrainLoader(store_dir, dcfg, ccfg, SP, rank=rank, world_size=world)


def _rows(batch) -> dict[int, list[int]]:
    """sample index -> its unpadded row (ids, labels, positions, loss)."""
    out = {}
    for b, g in enumerate(batch.sample_index.tolist()):
        real = (batch.input_ids[b] != 0) | (batch.position_ids[b, 0] != 0)
        n = int(torch.nonzero(real).max()) + 1
        out[g] = [
            batch.input_ids[b, :n].tolist(), batch.labels[b, :n].tolist(),
            batch.position_ids[b, :, :n].tolist(), batch.loss_mask[b, :n].tolist(),
            batch.objective[b, :n].tolist(), int(batch.context_len[b]),
        ]  # fmt: skip
    return out


@pytest.mark.parametrize("mix_per", ["sample", "batch"])
def test_same_global_stream_for_1_2_4_ranks(store_dir, mix_per):
    streams = []
    for world in (1, 2, 4):
        rows = {}
        loaders = [_loader(store_dir, rank=r, world=world, mix_per=mix_per) for r in range(world)]
        iters = [iter(ld) for ld in loaders]
        for _ in range(8 // world):
            for it in iters:
                rows.update(_rows(next(it)))
        assert sorted(rows) == list(range(16))
        streams.append(rows)
    assert streams[0] == streams[1] == streams[2]


@pytest.mark.parametrize("layout", ["pad", "pack"])
@pytest.mark.parametrize("stride", [1, 3])
def test_batches_planned_ahead_equal_batches_made_alone(store_dir, layout, stride):
    seq = _loader(store_dir, rank=1, world=2, batch=4, layout=layout)
    first = seq.samples_per_epoch // 8 - 4  # the run crosses into the next epoch
    steps = [first + k * stride for k in range(2 * AHEAD + 3)]
    for i, step in enumerate(steps):
        got = seq.batch(step)
        if i == 1:  # the second call of a regular stride planned the next steps
            assert sorted(seq._planned) == [step + k * stride for k in range(1, AHEAD)]
        alone = _loader(store_dir, rank=1, world=2, batch=4, layout=layout).batch(step)
        for name, value in vars(alone).items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(getattr(got, name), value), (step, name)


def test_resume_is_bit_identical_across_epochs(store_dir):
    a = _loader(store_dir, batch=8)
    it = iter(a)
    n_steps = a.samples_per_epoch // 8 + 3  # runs into the second epoch
    for _ in range(n_steps - 2):
        next(it)
    state = a.state_dict()
    tail = [next(it) for _ in range(2)]
    assert a.epoch == 1
    b = _loader(store_dir, batch=8)
    b.load_state_dict(state)
    for x, y in zip(tail, iter(b), strict=False):
        for name in (
            "input_ids",
            "labels",
            "loss_mask",
            "position_ids",
            "objective",
            "context_len",
        ):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
    # a different world size resumes at the same global sample when the count divides
    c = _loader(store_dir, batch=4, world=2, rank=1)
    c.load_state_dict(state)
    assert c.state_dict()["samples_consumed"] == state["samples_consumed"]
    with pytest.raises(ValueError, match="seed"):
        _loader(store_dir).load_state_dict({**state, "seed": 6})


def test_epochs_cover_the_split(store_dir):
    ld = _loader(store_dir)
    first = [ld.raw(g)[0].tokens for g in range(ld.samples_per_epoch)]
    n_tok = sum(len(t) for t in first)
    assert 0.8 * ld.view.num_tokens < n_tok < 2.0 * ld.view.num_tokens
    assert all(len(t) <= 96 for t in first) and all(t[0] == SP.cls for t in first)
    second = [ld.raw(ld.samples_per_epoch + g)[0].tokens for g in range(5)]
    assert any(not np.array_equal(x, y) for x, y in zip(first, second, strict=False))


def test_valid_split_is_disjoint(store_dir):
    train = split_documents(24, 0.25, "train")
    valid = split_documents(24, 0.25, "valid")
    assert len(valid) == 6 and not set(train) & set(valid) and len(train) + len(valid) == 24
    ld = _loader(store_dir, valid_fraction=0.25)
    assert ld.view.docs.tolist() == train.tolist()
    with pytest.raises(ValueError, match="valid_fraction"):
        PretrainLoader(store_dir, DataConfig(seq_len=96), CorruptConfig(), SP, split="valid")


def test_packed_layout_from_loader(store_dir):
    ld = _loader(store_dir, batch=6, layout="pack", sample_across_doc=False, seq_len=1024)
    batch = next(iter(ld))
    assert batch.attention_mask is None and batch.segment_ids.dtype == torch.int32
    mask = build_segment_mask(batch.segment_ids, batch.context_end)
    assert mask.shape == (len(batch.input_ids), 1, 1280, 1280) and mask.any(dim=-1).all()
    assert batch.input_ids.shape[0] < 6  # short documents share rows
    assert batch.input_ids.shape[1] == 1280


def test_special_ids_must_match_store(store_dir):
    from dataclasses import replace

    with pytest.raises(ValueError, match="differ"):
        PretrainLoader(store_dir, DataConfig(seq_len=96), CorruptConfig(), replace(SP, sop=99))


@pytest.mark.slow
def test_workers_give_the_same_batches(store_dir):
    ref = iter(_loader(store_dir))
    par = _loader(store_dir, workers=2)
    par.load_state_dict(_loader(store_dir).state_dict())
    for x, y in zip([next(ref) for _ in range(5)], iter(par), strict=False):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    assert par.state_dict()["step"] == 5
