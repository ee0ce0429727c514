"""Packed rows carry segment ids; the model's expansion equals the dense mask they replaced.

``collate_pack`` used to build a bool mask [R, 1, T, T] in numpy. ``_dense_pack_mask`` below is
that construction, kept as the reference: ``build_segment_mask(segment_ids, context_end)`` must
give the same values for any sample lengths and Part-A lengths, and a training step on the
segment form the same logits, loss and gradients as on the dense mask.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.config import CorruptConfig
from blankfill.data.corrupt import Example
from blankfill.data.objectives import Corruptor, RawSample
from blankfill.data.pack import collate_pack, pack_rows
from blankfill.model import GLM, build_segment_mask
from blankfill.testing import SyntheticBatches, tiny_config
from blankfill.tokenizer import SpecialTokens
from blankfill.train.objective import TargetLogits, loss_sums, target_index, to_device

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)


def _dense_pack_mask(examples: list[Example], row_len: int) -> torch.Tensor:
    """The mask [R, 1, T, T] of the earlier ``collate_pack`` (before segment ids), verbatim."""
    rows = pack_rows([len(e) for e in examples], row_len)
    R, T = len(rows), row_len
    mask = np.zeros((R, 1, T, T), bool)
    causal = np.tri(T, dtype=bool)  # [T, T]: key k <= query q
    idx = np.arange(T)
    for r, members in enumerate(rows):
        o = 0
        for i in members:
            n, sep = len(examples[i]), examples[i].context_len
            mask[r, 0, o : o + n, o : o + n] = causal[:n, :n]  # Part B: causal within the sample
            mask[r, 0, o : o + n, o : o + sep] = True  # Part A: seen by the whole sample
            o += n
        mask[r, 0, idx[o:], idx[o:]] = True  # padding attends to itself only (no empty rows)
    return torch.from_numpy(mask)


def _example(n: int, sep: int, i: int) -> Example:
    ids = np.arange(n, dtype=np.int64) + 16
    loss = (np.arange(n) >= sep).astype(np.float32)
    pos = np.stack([np.minimum(np.arange(n), sep - 1), np.maximum(np.arange(n) - sep + 1, 0)])
    return Example(input_ids=ids, labels=ids, loss_mask=loss, position_ids=pos, context_len=sep,
                   sample_index=i)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(
        st.integers(1, 40).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
        min_size=1,
        max_size=12,
    ),
    spare=st.integers(0, 30),
)
def test_segment_mask_equals_the_dense_pack_mask(samples, spare):
    exs = [_example(n, sep, i) for i, (n, sep) in enumerate(samples)]
    row_len = max(n for n, _ in samples) + spare
    batch = collate_pack(exs, row_len=row_len)
    assert batch.attention_mask is None and batch.context_len is None
    assert batch.segment_ids.shape == batch.context_end.shape == (len(batch.input_ids), row_len)
    assert batch.segment_ids.dtype == batch.context_end.dtype == torch.int32
    got = build_segment_mask(batch.segment_ids, batch.context_end)
    ref = _dense_pack_mask(exs, row_len)
    assert got.dtype == torch.bool and torch.equal(got, ref)
    assert got.any(dim=-1).all()  # no empty attention row


def _packed_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    corrupt = Corruptor(CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25), SP)
    exs = []
    for i, L in enumerate((30, 17, 44, 9, 25, 38)):
        toks = np.concatenate(([SP.cls], rng.integers(16, 272, size=L - 2), [SP.eos]))
        ends = np.zeros(L, bool)
        ends[1:-1] = rng.random(L - 2) < 0.1
        lm = np.ones(L, np.float32)
        lm[0] = 0
        raw = RawSample(tokens=toks, loss_mask=lm, sentence_end=ends, index=i)
        exs.append(corrupt(raw, np.random.default_rng([seed, i])))
    return exs, collate_pack(exs, row_len=64)


def test_training_on_segments_equals_the_dense_mask():
    exs, seg = _packed_batch()
    assert len(seg.input_ids) < len(exs)  # samples share rows
    dense = replace(seg, segment_ids=None, context_end=None,
                    attention_mask=_dense_pack_mask(exs, 64))  # fmt: skip
    results = []
    for batch in (dense, seg):
        torch.manual_seed(0)
        model = TargetLogits(GLM(tiny_config())).train()  # dropout on: same draws in both
        torch.manual_seed(1)
        logits = model(batch, target_index(batch))
        loss, stats = loss_sums(logits, batch)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        results.append((logits.detach(), loss.detach(), stats, grads))
    (l0, s0, st0, g0), (l1, s1, st1, g1) = results
    assert torch.equal(l0, l1) and torch.equal(s0, s1) and torch.equal(st0, st1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1, strict=True))


@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_target_logits_equal_the_full_forwards_target_rows(kind):
    # TargetLogits runs the last block from the first target column on: its logits
    # and gradients must be those of the full forward's target rows.
    host = next(SyntheticBatches(4, seq_len=24)) if kind == "padded" else _packed_batch()[1]
    batch, index, first = to_device(host, torch.device("cpu"))  # the trainer's
    T = host.input_ids.shape[1]
    assert torch.equal(index, target_index(host)) and first == int((index % T).min()) > 0
    torch.manual_seed(0)
    head = TargetLogits(GLM(tiny_config())).train()
    out = []
    for fast in (True, False):
        head.zero_grad()
        if fast:
            logits = head(batch, index, first)
            torch.testing.assert_close(head(batch, index), logits)  # found from the index
        else:
            h = head.glm.hidden(
                batch.input_ids, batch.position_ids, batch.context_len, batch.attention_mask,
                segment_ids=batch.segment_ids, context_end=batch.context_end,
            )  # fmt: skip
            logits = head.glm.logits(h.flatten(0, 1)[index])
        logits.logsumexp(-1).sum().backward()
        out.append((logits.detach(), [p.grad.clone() for p in head.parameters()]))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", ["no_context_end", "wrong_shape", "kv_cache"])
def test_segment_ids_need_context_end_and_no_cache(case):
    _, batch = _packed_batch()
    model = GLM(tiny_config()).eval()
    kw = {
        "no_context_end": dict(segment_ids=batch.segment_ids),
        "wrong_shape": dict(segment_ids=batch.segment_ids[:, :10], context_end=batch.context_end),
        "kv_cache": dict(segment_ids=batch.segment_ids, context_end=batch.context_end,
                         kv_cache=model.new_kv_cache()),
    }[case]  # fmt: skip
    with torch.no_grad(), pytest.raises(ValueError, match="segment_ids and context_end"):
        model(batch.input_ids, batch.position_ids, **kw)
