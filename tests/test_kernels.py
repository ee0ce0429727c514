"""blankfill.kernels: oneDNN-packed decoding matmuls and oneDNN fp32 training Linears (same values, same parameters, safe fallback)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blankfill.kernels import (
    PackedEmbedding,
    PackedLinear,
    TrainingLinear,
    decoding_kernels_,
    is_column_major,
    onednn_available,
    onednn_bf16,
    onednn_training_speedup,
    single_row_mkl_speedup,
    training_kernels_,
    wide_row_major_speedup,
)
from blankfill.model import GLM
from blankfill.testing import tiny_config

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")


@pytest.mark.parametrize("rows", [1, 3, 8, 40])
def test_packed_linear_equals_linear(rows):
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    packed = PackedLinear(lin)
    assert packed.weight is lin.weight and packed.bias is lin.bias
    x = torch.randn(2, rows, 48)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-6)
        assert packed._packed.weight is not None  # the oneDNN path ran
        xb = x.bfloat16()
        lin.to(torch.bfloat16)  # the packed copy follows the weight's dtype
        torch.testing.assert_close(packed(xb), lin(xb), rtol=2e-2, atol=2e-2)
        # without oneDNN bf16 (a Zen 3): F.linear, and the fp32 copy stays as it was
        want = torch.bfloat16 if onednn_bf16() else torch.float32
        assert packed._packed.weight.dtype == want


def test_bf16_without_onednn_bf16_runs_as_linear(monkeypatch):
    from blankfill import kernels

    monkeypatch.setattr(kernels, "onednn_bf16", lambda: False)  # as on a CPU without AVX-512
    torch.manual_seed(0)
    lin = nn.Linear(48, 80).to(torch.bfloat16)
    packed = PackedLinear(lin)
    x = torch.randn(3, 48).bfloat16()
    with torch.no_grad():
        assert torch.equal(packed(x), lin(x))  # the very same kernel: F.linear
    assert packed._packed.weight is None  # nothing packed


def test_packed_linear_follows_in_place_updates_and_trains_as_linear():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    packed = PackedLinear(copy.deepcopy(lin))
    x = torch.randn(4, 16)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(2)  # an in-place update (e.g. load_state_dict) repacks
        torch.testing.assert_close(packed(x), F.linear(x, 2 * lin.weight, lin.bias))
        packed.weight.div_(2)
    packed(x).square().sum().backward()  # gradients on: plain F.linear, same gradients
    lin(x).square().sum().backward()
    torch.testing.assert_close(packed.weight.grad, lin.weight.grad)


def test_packed_model_keeps_state_dict_and_logits_and_copies():
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    packed = decoding_kernels_(copy.deepcopy(model))
    assert isinstance(packed.word_embeddings, PackedEmbedding)
    assert all(type(m) is not nn.Linear for m in packed.transformer.layers.modules()), (
        "every Linear of the blocks is packed"
    )
    assert list(packed.state_dict()) == list(model.state_dict())
    ids = torch.randint(10, 300, (2, 12))
    with torch.no_grad():
        want = model(ids, context_len=6)
        torch.testing.assert_close(packed(ids, context_len=6), want, rtol=1e-5, atol=1e-5)
        for twin in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
            torch.testing.assert_close(twin(ids, context_len=6), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("single_row_mkl", [True, False])
@pytest.mark.parametrize("wide_row_major", [True, False])
def test_single_rows_by_mkl_on_column_major_weights(single_row_mkl, wide_row_major):
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    fast = decoding_kernels_(copy.deepcopy(model), single_row_mkl=single_row_mkl,
                             wide_row_major=wide_row_major)  # fmt: skip
    lin = fast.transformer.layers[0].mlp.dense_h_to_4h
    assert is_column_major(lin.weight) is single_row_mkl
    assert is_column_major(fast.word_embeddings.weight) is single_row_mkl
    wide = fast.transformer.layers[0].mlp.dense_4h_to_h  # more inputs than outputs
    assert is_column_major(wide.weight) is (single_row_mkl and not wide_row_major)
    with torch.no_grad():  # one fp32 row of the wide matrix: by MKL on either layout
        x = torch.randn(1, wide.in_features)
        torch.testing.assert_close(wide(x), model.transformer.layers[0].mlp.dense_4h_to_h(x),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert (wide._packed.weight is None) is single_row_mkl
    assert list(fast.state_dict()) == list(model.state_dict())
    ids = torch.randint(10, 300, (1, 1))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids), model(ids), rtol=1e-5, atol=1e-5)
        # one row: MKL on the column-major weight, so no packed copy exists yet (and none is
        # ever made for a model that only decodes single rows)
        assert (lin._packed.weight is None) is single_row_mkl
        ids = torch.randint(10, 300, (2, 5))
        torch.testing.assert_close(fast(ids, context_len=3), model(ids, context_len=3),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert lin._packed.weight is not None  # more rows: oneDNN
        bf16 = copy.deepcopy(fast).to(torch.bfloat16)  # bf16 rows go to oneDNN where it can
        bf16(ids[:1, :1])
        packed = bf16.transformer.layers[0].mlp.dense_h_to_4h._packed.weight
        assert (packed is not None and packed.dtype == torch.bfloat16) is onednn_bf16()


def test_single_row_choice_is_measured():
    ratio = single_row_mkl_speedup()
    assert ratio > 0 and single_row_mkl_speedup() == ratio  # measured once per process
    wide = wide_row_major_speedup()
    assert wide > 0 and wide_row_major_speedup() == wide


def test_training_linear_equals_linear_in_values_and_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    fast = TrainingLinear(copy.deepcopy(lin))
    x = torch.randn(3, 7, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(fast(x), lin(x2), rtol=1e-5, atol=1e-6)
    fast(x).square().sum().backward()
    lin(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, lin.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.bias.grad, lin.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: plain F.linear (bf16 out)
        assert fast(x).dtype == torch.bfloat16
    assert fast(x).grad_fn.name() != "LinearBackward0"  # the oneDNN function ran
    with torch.no_grad():
        torch.testing.assert_close(fast(x), lin(x), rtol=1e-5, atol=1e-6)


def test_training_kernels_keep_state_dict_and_train_the_same():
    torch.manual_seed(0)
    model = GLM(tiny_config()).train()
    fast = training_kernels_(copy.deepcopy(model))
    assert training_kernels_(fast) is fast
    assert all(type(m) is not nn.Linear for m in fast.transformer.layers.modules())
    assert list(fast.state_dict()) == list(model.state_dict())
    ids = torch.randint(10, 300, (2, 12))
    losses = []
    for m in (model, fast):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        torch.manual_seed(1)  # the same dropout draws
        for _ in range(3):
            loss = m(ids, context_len=6).logsumexp(-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    decoded = decoding_kernels_(copy.deepcopy(fast).eval())  # decoding still swaps them
    assert isinstance(decoded.transformer.layers[0].mlp.dense_h_to_4h, PackedLinear)


def test_training_choice_is_measured():
    ratio = onednn_training_speedup()
    assert ratio > 0 and onednn_training_speedup() == ratio
