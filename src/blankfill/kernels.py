"""CPU matmul kernels for decoding and for fp32 training, applied to a model from outside (style §1).

A decoding step multiplies a few rows by every weight matrix once, so its speed is how fast the
matmul streams the weights from memory. PyTorch's default CPU matmul (MKL) streamed 21-24 GB/s
for one row and ~9 GB/s for eight on the AMD EPYC development box (one thread; a plain read
streams 36 GB/s there), whereas oneDNN, on a weight reordered once into its own blocked layout
(what inductor's CPU "freezing" does), streamed 27-33 GB/s and ~22 GB/s, and ran the prompt's
many-row matmuls ~2x faster as well (``benchmarks/generate.py``, README "Speed").

``decoding_kernels_(model)`` swaps each block's ``nn.Linear`` for a :class:`PackedLinear` and the
tied word embedding for a :class:`PackedEmbedding` (the output layer). Both are subclasses that
keep the very same parameters, so ``state_dict``, ``parameters()`` and training are unchanged;
only their forward differs, and only where it is safe: on CPU, with gradients off, in fp32 or
bf16 (bf16 only where oneDNN has a bf16 path on the CPU, :func:`onednn_bf16`). The packed copy
is made on first use and remade whenever the weight changes (another dtype or device, an
in-place update), so ``model.to(torch.bfloat16)`` afterwards packs bf16 weights.
The arithmetic is fp32 (or bf16) as before; only the order of the additions differs, so logits
move by rounding (~1e-6 relative), as between any two BLAS libraries.

One row (batch-1 decoding) is the exception that is measured, not assumed: on another AMD EPYC
(Zen 4 class, 2026-12-01) MKL's plain GEMM on a column-major fp32 weight streamed 13-16 GB/s for
one row against oneDNN's 9-11 GB/s, while oneDNN stayed ahead from two rows up. So
``decoding_kernels_`` times both once per process (:func:`single_row_mkl_speedup`, ~0.1 s) and,
where MKL wins, stores the fp32 matrices column-major (in place: no second copy) and sends one-row
fp32 calls to MKL; the packed copy is then made only if more rows come (a prompt, a batch).
Matrices with more inputs than outputs (the MLP's second Linear) are the exception within the
exception: there MKL streamed one row faster on the usual row-major layout (AMD EPYC, Zen 4 class,
2026-12-02, one thread: ~15 GB/s for 512 x 2048 against 10-11 column-major and ~12 by oneDNN),
so where :func:`wide_row_major_speedup` measures that, those stay row-major, still by MKL.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import GLM, WordEmbedding

# The row count the blocked layout is tuned for; measured no slower than 1 for single rows, and
# faster for 2-16 rows (batched decoding) and the prompt's hundreds (spec: README "Speed").
PACK_ROWS_HINT = 8
# MKL must run a one-row fp32 matmul this much faster than oneDNN to be used for single rows.
SINGLE_ROW_MKL_MIN_SPEEDUP = 1.1
# ... and a matrix with more inputs than outputs is kept row-major for it where that measures
# this much faster for one row than column-major.
WIDE_ROW_MAJOR_MIN_SPEEDUP = 1.1


def onednn_available() -> bool:
    """Whether this PyTorch build can run oneDNN (mkldnn) matmuls on the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _Packed:
    """The weight reordered for oneDNN, remade when the weight's storage, dtype or version moves."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.weight: torch.Tensor | None = None

    def get(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), w.dtype, w._version, tuple(w.shape))
        if key != self.key:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(
                w.detach().contiguous(), batch_size=PACK_ROWS_HINT
            )
            self.key = key
        return self.weight


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN has a bf16 path on this CPU (AVX512BW/VL/DQ or AVX-NE-CONVERT): without
    one (e.g. a Zen 3) it refuses to pack bf16 weights, and bf16 goes to ``F.linear``."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == w.dtype
        and (w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and onednn_bf16()))
    )


def _packed_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: _Packed, mkl_rows: bool
) -> torch.Tensor:
    """``F.linear(x, w, b)`` by oneDNN on the packed ``w``: x [..., in] -> [..., out]; one
    fp32 row by MKL instead where ``mkl_rows`` (chosen by ``decoding_kernels_``)."""
    if not _usable(x, w) or (b is not None and b.dtype != w.dtype):
        return F.linear(x, w, b)
    x2 = x.reshape(-1, x.shape[-1])  # [N, in]
    if x2.shape[0] == 1 and w.dtype == torch.float32 and mkl_rows:
        return F.linear(x, w, b)  # MKL on the layout column_major_ left
    y = torch.ops.mkldnn._linear_pointwise(x2, packed.get(w), b, "none", [], "")  # [N, out]
    return y.view(*x.shape[:-1], w.shape[0])


class PackedLinear(nn.Linear):
    """``nn.Linear`` with the same parameters, multiplied by oneDNN on a packed copy (CPU)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self._packed = _Packed()
        self.mkl_rows = False  # one fp32 row by MKL (decoding_kernels_ sets it where measured)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_linear(x, self.weight, self.bias, self._packed, self.mkl_rows)

    def __getstate__(self) -> dict[str, Any]:  # copy / pickle: the opaque copy is remade
        return {**self.__dict__, "_packed": _Packed()}


class PackedEmbedding(WordEmbedding):
    """The tied word embedding: lookups as ``nn.Embedding``, the output layer by oneDNN (CPU)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        nn.Module.__init__(self)
        for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type"):
            setattr(self, name, getattr(embedding, name))
        self.scale_grad_by_freq, self.sparse = embedding.scale_grad_by_freq, embedding.sparse
        self.weight = embedding.weight
        self._packed = _Packed()
        self.mkl_rows = False  # as PackedLinear's

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer: hidden [..., D] -> logits [..., V] (no bias, spec §1.5)."""
        return _packed_linear(hidden, self.weight, None, self._packed, self.mkl_rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_packed": _Packed()}


def is_column_major(w: torch.Tensor) -> bool:
    """Whether the [out, in] matrix ``w`` is stored column-major (``w.T`` contiguous)."""
    return w.dim() == 2 and w.shape[0] > 1 and w.stride() == (1, w.shape[0])


def column_major_(model: GLM, *, wide_row_major: bool | None = None) -> GLM:
    """Store the blocks' Linear and the output matrices column-major on the CPU; in place.

    Values, shapes and ``state_dict`` keys are unchanged; ``F.linear`` (``x @ weight.T``) then
    is MKL's plain GEMM, which it runs faster than the transposed one for the few rows of a
    decoding step (HF's GPT-2 ``Conv1D`` stores its weights that way).

    Args:
        model: the model.
        wide_row_major: leave the matrices with more inputs than outputs row-major (MKL's
            transposed GEMM streams those faster for one row); None: where
            :func:`wide_row_major_speedup` measures it.
    """
    if wide_row_major is None:
        wide_row_major = wide_rows_row_major()
    matrices = [model.word_embeddings.weight]
    matrices += [m.weight for m in model.transformer.layers.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for p in matrices:
            if p.device.type != "cpu" or is_column_major(p):
                continue
            if not (wide_row_major and p.shape[1] > p.shape[0]):
                p.data = p.data.t().contiguous().t()
    return model


def alternated_best(
    first: list[Callable[[], object]], second: list[Callable[[], object]], seconds: float
) -> tuple[float, float]:
    """The summed best times of two lists of calls, timed in alternated rounds (at least 5, for
    at least ``seconds``) after one warm-up round; each call's best over the rounds, so a call
    that waited for another process of a shared machine does not count."""

    def times(calls: list[Callable[[], object]]) -> list[float]:
        out = []
        for call in calls:
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)
        return out

    times(first), times(second)  # warm-up (packing, first touches)
    best1, best2 = [math.inf] * len(first), [math.inf] * len(second)
    deadline, n = time.perf_counter() + seconds, 0
    while n < 5 or time.perf_counter() < deadline:
        best1 = list(map(min, best1, times(first)))
        best2, n = list(map(min, best2, times(second))), n + 1
    return sum(best1), sum(best2)


@functools.cache
def single_row_mkl_speedup(seconds: float = 0.1) -> float:
    """How many times faster one row times a 2048 x 512 fp32 weight runs by MKL on the
    column-major weight than by oneDNN on its packed copy (weights rotated through 100 MB so
    they come from memory, as in a decoding step; each call's best of alternated rounds, so a
    call that waited for another process does not count). Measured once per process."""
    torch.manual_seed(0)
    weights = [torch.randn(512, 2048).t() for _ in range(24)]  # column-major [2048, 512]
    bias = torch.zeros(2048)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch_size=PACK_ROWS_HINT)
              for w in weights]  # fmt: skip
    x = torch.randn(1, 512)

    with torch.no_grad():
        t_mkl, t_dnn = alternated_best(
            [functools.partial(F.linear, x, w, bias) for w in weights],
            [functools.partial(torch.ops.mkldnn._linear_pointwise, x, w, bias, "none", [], "")
             for w in packed],
            seconds,
        )  # fmt: skip
    return t_dnn / t_mkl


@functools.cache
def wide_row_major_speedup(seconds: float = 0.1) -> float:
    """How many times faster one row times a 512 x 2048 fp32 weight (more inputs than outputs,
    as the MLP's second Linear) runs by MKL on the row-major weight than on its column-major copy
    (rotated through ~100 MB, best of alternated rounds, as :func:`single_row_mkl_speedup`)."""
    torch.manual_seed(0)
    rows = [torch.randn(512, 2048) for _ in range(12)]  # row-major [out 512, in 2048]
    cols = [w.t().contiguous().t() for w in rows]  # the same values column-major
    bias = torch.zeros(512)
    x = torch.randn(1, 2048)
    with torch.no_grad():
        t_row, t_col = alternated_best(
            [functools.partial(F.linear, x, w, bias) for w in rows],
            [functools.partial(F.linear, x, w, bias) for w in cols],
            seconds,
        )
    return t_col / t_row


def wide_rows_row_major() -> bool:
    """Whether ``column_major_`` leaves matrices with more inputs than outputs row-major
    (measured; see the module docstring)."""
    return wide_row_major_speedup() >= WIDE_ROW_MAJOR_MIN_SPEEDUP


def single_row_by_mkl() -> bool:
    """Whether one-row fp32 decoding matmuls go to MKL (measured; see the module docstring)."""
    return onednn_available() and single_row_mkl_speedup() >= SINGLE_ROW_MKL_MIN_SPEEDUP


def decoding_kernels_(
    model: GLM, *, single_row_mkl: bool | None = None, wide_row_major: bool | None = None
) -> GLM:
    """Swap in the packed oneDNN Linears and output layer (see the module docstring); in place.

    Args:
        model: the model (its CPU matrices are used; others fall back to ``F.linear``).
        single_row_mkl: store the matrices column-major so one-row fp32 calls run by MKL;
            None: where :func:`single_row_by_mkl` measures it faster.
        wide_row_major: with ``single_row_mkl``, as ``column_major_``'s (None: measured).

    Idempotent; does nothing where PyTorch has no oneDNN. Parameters are shared, not copied, but
    the packed copies take as much memory again as the matrices they mirror (made on first use,
    i.e. not at all for a model that only ever decodes single rows by MKL).
    """
    if not onednn_available():
        return model
    mkl_rows = single_row_by_mkl() if single_row_mkl is None else single_row_mkl
    if mkl_rows:
        column_major_(model, wide_row_major=wide_row_major)
    for block in model.transformer.layers:
        for parent in (block.attention, block.mlp):
            for name, child in list(parent.named_children()):
                if type(child) in (nn.Linear, TrainingLinear):
                    child = PackedLinear(child)
                    setattr(parent, name, child)
                if isinstance(child, PackedLinear):
                    child.mkl_rows = mkl_rows
    if type(model.word_embeddings) is not PackedEmbedding:
        model.word_embeddings = PackedEmbedding(model.word_embeddings)
    model.word_embeddings.mkl_rows = mkl_rows
    return model


# --------------------------------------------------------------------------------------------
# fp32 training on the CPU
# --------------------------------------------------------------------------------------------
#
# A training step's Linears multiply thousands of rows; on the AMD EPYC (Zen 4 class) box of
# 2026-12-01 oneDNN ran those forward and input-gradient matmuls 1.1-1.5x faster than MKL (e.g.
# 4528 x 512 by 2048 x 512: 99 vs 76 GFLOP/s, one thread), and a glm-small step ~1.1x faster.
# Machines differ, so it is measured (``onednn_training_speedup``) before it is used.

# oneDNN must run a training Linear (forward + input gradient) this much faster than MKL.
TRAINING_ONEDNN_MIN_SPEEDUP = 1.1


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` whose forward and input gradient run by oneDNN; the weight gradient by MKL."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")  # [N, out]
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [N, out]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # g @ w = linear(g, w.T)
            wt = w.t().contiguous()
            gx = torch.ops.mkldnn._linear_pointwise(g2, wt, None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t() @ x.reshape(-1, x.shape[-1])  # [out, in]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _trains_by_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == w.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


class TrainingLinear(nn.Linear):
    """``nn.Linear`` with the same parameters whose fp32 CPU training matmuls run by oneDNN;
    anything else (no gradients, autocast, another dtype or device) is plain ``F.linear``."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _trains_by_onednn(x, self.weight) and (self.bias is None or self.bias.dtype == x.dtype):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


@functools.cache
def onednn_training_speedup(rows: int = 2048, seconds: float = 0.2) -> float:
    """How many times faster a training Linear (``rows`` x 512 by 2048 x 512, forward and input
    gradient, fp32) runs by oneDNN than by MKL; each side's best of alternated rounds. Measured
    once per process (~0.3 s)."""
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, 512), torch.randn(2048, 512), torch.randn(2048)
    g = torch.randn(rows, 2048)
    wt = w.t().contiguous()
    lp = torch.ops.mkldnn._linear_pointwise

    def mkl() -> None:
        F.linear(x, w, b), g @ w

    def onednn() -> None:
        lp(x, w, b, "none", [], ""), lp(g, wt, None, "none", [], "")

    with torch.no_grad():
        t_mkl, t_dnn = alternated_best([mkl], [onednn], seconds)
    return t_mkl / t_dnn


def training_by_onednn() -> bool:
    """Whether fp32 CPU training Linears go to oneDNN (measured; see above)."""
    return onednn_available() and onednn_training_speedup() >= TRAINING_ONEDNN_MIN_SPEEDUP


def training_kernels_(module: nn.Module) -> nn.Module:
    """Swap every plain ``nn.Linear`` under ``module`` for a :class:`TrainingLinear`; in place.

    Same parameters (``state_dict``, optimizer and wrappers see no difference); the arithmetic
    stays fp32, only the order of the additions differs (~1e-6 relative). Idempotent; does
    nothing where PyTorch has no oneDNN.
    """
    if not onednn_available():
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, TrainingLinear(child))
    return module
