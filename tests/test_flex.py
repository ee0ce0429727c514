"""FlexAttention (the CUDA path) gives SDPA's output for the GLM mask and for packed rows.

FlexAttention has a forward on CPU (no backward there), so the equality is checked on CPU; the
model picks flex only on CUDA (``use_flex``), and on GPUs a ``gpu`` test checks the whole model.
"""

from __future__ import annotations

import pytest
import torch

from blankfill import GLM
from blankfill.data.corrupt import Example
from blankfill.data.pack import collate_pack
from blankfill.model import build_attention_mask, build_segment_mask, flex_block_mask, use_flex
from blankfill.testing import tiny_config


def _example(n: int, sep: int) -> Example:
    ids = torch.arange(16, 16 + n).numpy()
    pos = torch.zeros(2, n, dtype=torch.long).numpy()
    loss = (torch.arange(n) >= sep).float().numpy()
    return Example(input_ids=ids, labels=ids, loss_mask=loss, position_ids=pos, context_len=sep)


def _attention_and_input(T: int = 48, B: int = 3):
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    return model.transformer.layers[0].attention, torch.randn(B, T, 64)


def test_flex_equals_sdpa_for_the_glm_mask():
    attn, x = _attention_and_input()
    B, T = x.shape[:2]
    sep = torch.tensor([5, 30, T])
    with torch.no_grad():
        ref = attn(x, build_attention_mask(sep, T, T))
        out = attn(x, flex_block_mask(sep, None, B, T))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_equals_sdpa_for_packed_rows():
    attn, x = _attention_and_input()
    B, T = x.shape[:2]
    mask = torch.zeros(B, 1, T, T, dtype=torch.bool)
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    rows = [([20, 28], [7, 3]), ([48], [10]), ([10, 10, 20], [2, 9, 1])]
    for b, (lengths, seps) in enumerate(rows):
        o = 0
        for n, sep in zip(lengths, seps, strict=True):
            blk = (q[o : o + n] >= k[:, o : o + n]) | (k[:, o : o + n] < o + sep)
            mask[b, 0, o : o + n, o : o + n] = blk
            o += n
        mask[b, 0, range(o, T), range(o, T)] = True  # padding sees itself (as collate_pack)
    with torch.no_grad():
        ref = attn(x, mask)
        out = attn(x, flex_block_mask(None, mask, B, T))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_from_segment_ids_equals_sdpa_on_their_dense_mask():
    attn, x = _attention_and_input()
    B, T = x.shape[:2]
    exs = [_example(n, sep) for n, sep in [(20, 7), (28, 3), (48, 10), (10, 2), (10, 9), (20, 1)]]
    batch = collate_pack(exs, row_len=T)
    assert len(batch.input_ids) == B
    seg, end = batch.segment_ids, batch.context_end
    with torch.no_grad():
        ref = attn(x, build_segment_mask(seg, end))
        out = attn(x, flex_block_mask(None, None, B, T, segment_ids=seg, context_end=end))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_is_chosen_on_cuda_only_without_dropout_or_cache():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_flex("sdpa", cuda, 0.0, False)
    assert not use_flex("sdpa", cpu, 0.0, False)  # SDPA stays the CPU path
    assert not use_flex("sdpa", cuda, 0.1, False)  # flex has no attention dropout
    assert not use_flex("sdpa", cuda, 0.0, True)  # incremental decoding keeps SDPA
    assert not use_flex("eager", cuda, 0.0, False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_on_cuda_with_flex_equals_cpu_sdpa():
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    ids = torch.randint(0, 384, (2, 64))
    sep = torch.tensor([10, 40])
    with torch.no_grad():
        ref = model(ids, context_len=sep)
        out = model.cuda()(ids.cuda(), context_len=sep.cuda()).cpu()
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_on_cuda_with_segment_ids_equals_cpu_dense_mask():
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    exs = [_example(n, sep) for n, sep in [(20, 7), (28, 3), (64, 10), (10, 2), (10, 9), (20, 1)]]
    batch = collate_pack(exs, row_len=64)
    ids, seg, end = batch.input_ids, batch.segment_ids, batch.context_end
    with torch.no_grad():
        ref = model(ids, attention_mask=build_segment_mask(seg, end))
        out = model.cuda()(ids.cuda(), segment_ids=seg.cuda(), context_end=end.cuda()).cpu()
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
