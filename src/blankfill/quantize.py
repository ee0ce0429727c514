"""Decoding precision, applied to a model from outside (style §1): fp32, bf16 weights, or int8.

A decoding step at small batch is bound by reading the weights from memory, so fewer bytes per
weight is the lever. ``decoding_precision_(model, precision)`` converts a model in place:

    fp32   nothing changes: fills equal the reference implementations' (parity tests use it).
    bf16   every parameter in bfloat16 (half the bytes; fast only where the CPU has native bf16).
    auto   the default of ``BlankFiller``, ``blankfill fill`` and ``serve``: bf16 where
           ``hardware.choose_decoding_precision`` finds a GPU with bf16 or a CPU with native bf16
           on which the bf16 decoding matmul measures faster, fp32 elsewhere.
    int8   bf16 as above, and the Linear weights of every block stored as int8 with one bf16
           scale per output row (symmetric, absmax / 127): a quarter of the bytes. The matmul is
           PyTorch's own weight-only int8 kernel (``torch._weight_int8pack_mm``, the one torchao
           and gpt-fast use on CPU); many-row calls (the prompt) run in bf16 on the dequantized
           weight, kept alongside.

Both bf16 and int8 change the logits, so they can change fills (greedy picks another token where
two are within rounding of each other): on a model trained on the corpus (README "Speed") 61/64
greedy fills were equal to fp32's in bf16 and 61/64 in int8, which is why int8 stays opt-in and
``precision="fp32"`` gives exact fills. The result is for decoding only: a converted model is
not meant to be trained or saved.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .hardware import choose_decoding_precision
from .model import GLM

DecodingPrecision = Literal["fp32", "bf16", "int8", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8", "auto")
# Calls with more rows than this (prefill of a prompt) use the bf16 weight: the int8 kernel is a
# matrix-vector kernel and loses to a bf16 GEMM once the weights are reused across many rows.
INT8_MAX_ROWS = 16


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight [out, in] and a bf16 scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127  # [out]
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())  # [out, in] int8
        self.register_buffer("scale", scale.to(torch.bfloat16))  # [out]
        self.register_buffer("weight", (q.float() * scale[:, None]).to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # [..., in]
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [N, in]
        if x2.shape[0] > INT8_MAX_ROWS or x2.device.type != "cpu":
            y = F.linear(x2, self.weight, self.bias)  # [N, out]
        else:
            y = torch._weight_int8pack_mm(x2, self.qweight, self.scale)  # [N, out]
            if self.bias is not None:
                y = y + self.bias
        return y.view(*shape[:-1], y.shape[-1])  # [..., out]


def decoding_precision_(model: GLM, precision: DecodingPrecision = "fp32") -> GLM:
    """Convert ``model`` in place for decoding in ``precision`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"decoding precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if precision == "auto":
        precision = choose_decoding_precision(model.word_embeddings.weight.device).precision
    if precision == "fp32":
        return model
    model.to(torch.bfloat16)
    if precision == "int8":
        for block in model.transformer.layers:
            for parent in (block.attention, block.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(parent, name, Int8Linear(child))
    return model
