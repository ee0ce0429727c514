"""The CPU cross-entropy of the pretraining loss against ``F.cross_entropy``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blankfill.train.objective import CE_ROWS, target_cross_entropy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_cross_entropy_equals_torchs(dtype):
    g = torch.Generator().manual_seed(0)
    n = 3 * CE_ROWS + 5  # a last piece of a few rows
    logits = (torch.randn(n, 300, generator=g) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, 300, (n,), generator=g)
    weight = torch.rand(n, generator=g)
    ref = F.cross_entropy(logits.float(), labels, reduction="none")
    (ref_grad,) = torch.autograd.grad((ref * weight).sum(), logits)
    got = target_cross_entropy(logits, labels)
    (grad,) = torch.autograd.grad((got * weight).sum(), logits)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {}
    torch.testing.assert_close(grad, ref_grad, **tol)


def test_row_cross_entropy_gradient_is_exact_in_fp64():
    logits = torch.randn(CE_ROWS + 3, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (CE_ROWS + 3,))
    assert torch.autograd.gradcheck(lambda x: target_cross_entropy(x, labels), (logits,))
