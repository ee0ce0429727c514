"""What machine this is, and which precision trains fastest on it.

Machines change from one day to the next (a CPU with native bf16 one day, one without the next),
so nothing here is assumed: the CPU's flags are read, and where the flags allow bf16 a short
micro-benchmark decides: for training, one MLP forward and backward at the model's width, fp32
against bf16 autocast (at small widths the casts and elementwise work autocast adds outweigh the
faster matmuls, e.g. a d-64 model trained ~3.7x slower in bf16 on an AVX512-BF16 EPYC); for
decoding, a weight-streaming matmul in bf16 against fp32. ``blankfill info --hardware`` prints
:func:`describe` and both choices; the training engine calls :func:`choose_precision` once at
start-up for ``train.precision = "auto"``, and decoding :func:`choose_decoding_precision` for
``precision="auto"`` (the default of ``BlankFiller``, ``fill`` and ``serve``).
"""

from __future__ import annotations

import copy
import functools
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# CPU flags (as /proc/cpuinfo spells them) that mean oneDNN can run bf16 matmuls natively.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Decoding converts the weights once (no casts per step): bf16 must stream its matmul this much
# faster than fp32 to be chosen on a CPU.
CPU_BF16_DECODE_MIN_SPEEDUP = 1.2
# The training check (``mlp_speedup``) already includes autocast's casts and the GeLU, so a
# smaller margin is enough there (the rest of a step, attention and the optimizer, gains too).
CPU_BF16_MIN_MLP_SPEEDUP = 1.2
# Below this hidden size bf16 autocast does not pay on a CPU whatever the matmul speed (a tiny
# model's step is casts and per-op overhead: d 64 trained 0.67x, d 128 0.9-1.4x, d 256 1.4-2x
# the fp32 speed, batch 2-8 x 32-64, AVX512-BF16 EPYC), so it is not measured.
CPU_BF16_MIN_WIDTH = 128
# The width measured when the model's is unknown (``blankfill info --hardware`` without a model),
# and the widest one measured (wider models are more matmul-bound: bf16 pays at least as much).
DEFAULT_WIDTH, MAX_MEASURED_WIDTH = 512, 1024


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision ``auto`` resolves to, and why (shown by ``blankfill info --hardware``)."""

    precision: str  # "fp32" | "bf16"
    reason: str


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    for line in _cpuinfo_lines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` is not readable)."""
    for line in _cpuinfo_lines():
        if line.lower().startswith(("flags", "features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def describe() -> dict[str, object]:
    """The machine in one dict: CPU model, bf16-relevant flags, threads, GPU, torch version."""
    flags = cpu_flags()
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))),
        "cpu_native_bf16": any(f in flags for f in NATIVE_BF16_FLAGS),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": None,
    }
    if torch.cuda.is_available():
        info["cuda"] = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "bf16": torch.cuda.is_bf16_supported(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        }
    return info


def matmul_flops(dtype: torch.dtype, *, n: int = 512, seconds: float = 0.3, device: str = "cpu"):
    """Measured FLOP/s of an ``n x n`` matmul in ``dtype`` (best of repeated timings).

    Args:
        dtype: ``torch.float32`` or ``torch.bfloat16``.
        n: matrix size; 512 is enough to reach most of a CPU core's peak.
        seconds: time spent measuring (after one warm-up call).
        device: where to run it.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN builds its kernels on the first call
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def mlp_speedup(width: int, *, seconds: float = 0.6) -> tuple[float, int]:
    """How many times faster one GLM MLP at ``width`` (``width -> 4 width -> width`` with the tanh
    GeLU, forward and backward) runs under bf16 autocast than in fp32 on this CPU, and the width
    measured (``width`` capped at ``MAX_MEASURED_WIDTH``). Rows: enough for ~4 GFLOP per pass
    (16 to 2048), as in a training micro-batch; best of alternated timings (a shared machine can
    preempt any one of them).
    """
    import torch.nn.functional as F

    width = max(8, min(width, MAX_MEASURED_WIDTH))
    rows = max(16, min(2048, int(4e9 / (48 * width * width)) // 16 * 16))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen)
    w1 = (torch.randn(4 * width, width, generator=gen) * 0.02).requires_grad_()
    w2 = (torch.randn(width, 4 * width, generator=gen) * 0.02).requires_grad_()
    b1, b2 = torch.zeros(4 * width, requires_grad=True), torch.zeros(width, requires_grad=True)

    def once(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            h = F.gelu(F.linear(x, w1, b1), approximate="tanh")
            out = F.linear(h, w2, b2)
        out.float().sum().backward()
        for p in (w1, w2, b1, b2):
            p.grad = None
        return time.perf_counter() - t0

    once(False), once(True)  # warm-up: oneDNN builds its kernels on the first call
    fp32 = bf16 = float("inf")
    deadline, n = time.perf_counter() + seconds, 0
    while n < 3 or time.perf_counter() < deadline:
        fp32, bf16, n = min(fp32, once(False)), min(bf16, once(True)), n + 1
    return fp32 / bf16, width


def native_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The CPU's flags (or ``flags``) that mean native bf16 matmuls."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def _no_native_bf16() -> PrecisionChoice:
    return PrecisionChoice("fp32", f"CPU {cpu_model()!r} has no native bf16 (amx/avx512_bf16)")


def _unmeasured_choice(
    device: torch.device, flags: frozenset[str] | None, gpu_without_bf16: str
) -> PrecisionChoice | list[str]:
    """The choice both precision checks make without measuring (a GPU, another device type, a
    CPU without native bf16), or else the CPU's native bf16 flags, for the caller to measure."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("fp32", gpu_without_bf16)
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"no bf16 check for device type {device.type}")
    return native_bf16_flags(flags) or _no_native_bf16()


def choose_precision(
    device: torch.device,
    *,
    measure: bool = True,
    flags: frozenset[str] | None = None,
    width: int | None = None,
) -> PrecisionChoice:
    """The faster of fp32 and bf16 autocast for training a model of hidden size ``width``.

    CUDA: bf16 where the GPU supports it. CPU: fp32 unless the CPU has native bf16 (AMX or
    AVX512-BF16), ``width`` is at least ``CPU_BF16_MIN_WIDTH`` and, when ``measure``, the model's
    MLP trains at least ``CPU_BF16_MIN_MLP_SPEEDUP`` times faster under bf16 autocast
    (``mlp_speedup``, under a second). ``width`` None measures at ``DEFAULT_WIDTH``. ``flags`` replaces the CPU's own flags
    (for tests).
    """
    native = _unmeasured_choice(device, flags, "this GPU has no bf16 (use fp16 explicitly)")
    if isinstance(native, PrecisionChoice):
        return native
    if width is not None and width < CPU_BF16_MIN_WIDTH:
        return PrecisionChoice(
            "fp32",
            f"CPU has {', '.join(native)}, but the model's width {width} is below "
            f"{CPU_BF16_MIN_WIDTH}, where bf16 autocast's casts cost more than its matmuls save",
        )
    if not measure:
        return PrecisionChoice("bf16", f"CPU has {', '.join(native)} (not measured)")
    asked = DEFAULT_WIDTH if width is None else width
    ratio, measured_width = mlp_speedup(asked)
    at = f"width {measured_width}" + (" (the default)" if width is None else "")
    if measured_width != asked:
        at += f" (the model's {asked} is wider)"
    measured = (
        f"CPU has {', '.join(native)}; an MLP at {at} trains {ratio:.2f}x faster in bf16 "
        f"autocast than fp32"
    )
    if ratio >= CPU_BF16_MIN_MLP_SPEEDUP:
        return PrecisionChoice("bf16", measured)
    return PrecisionChoice("fp32", f"{measured}, below the {CPU_BF16_MIN_MLP_SPEEDUP}x needed")


@functools.cache
def _bf16_decode_speedup(rows: int = 1, seconds: float = 0.1) -> float:
    """How many times faster a decoding-step matmul (``rows`` x 512 by 2048 x 512, weights
    rotated through 100 MB so they come from memory, as in a real step) runs with bf16 weights
    than fp32, both with the kernels decoding uses (``blankfill.kernels``). Measured once per
    process (~0.1 s)."""
    from torch import nn

    from .kernels import PackedLinear, alternated_best, onednn_available

    torch.manual_seed(0)
    fp32 = [nn.Linear(512, 2048) for _ in range(24)]
    if onednn_available():
        fp32 = [PackedLinear(lin) for lin in fp32]
    bf16 = [copy.deepcopy(lin).to(torch.bfloat16) for lin in fp32]
    x = torch.randn(rows, 512)
    xb = x.to(torch.bfloat16)

    with torch.no_grad():
        t32, t16 = alternated_best(
            [functools.partial(lin, x) for lin in fp32],
            [functools.partial(lin, xb) for lin in bf16],
            seconds,
        )
    return t32 / t16


def choose_decoding_precision(
    device: torch.device, *, measure: bool = True, flags: frozenset[str] | None = None
) -> PrecisionChoice:
    """The precision ``precision="auto"`` decodes in (``blankfill.quantize``; the default of
    ``BlankFiller``, ``blankfill fill`` and ``blankfill serve``).

    bf16 weights on a GPU with bf16, and on a CPU with native bf16 (AMX or AVX512-BF16) where,
    when ``measure``, a decoding-step matmul runs at least ``CPU_BF16_DECODE_MIN_SPEEDUP`` times
    faster in bf16 than in fp32 (~0.1 s, once per process); fp32 everywhere else. int8 is never
    chosen: it changes more fills, so it stays opt-in. ``flags`` replaces the CPU's own flags
    (for tests).
    """
    native = _unmeasured_choice(device, flags, "this GPU has no bf16")
    if isinstance(native, PrecisionChoice):
        return native
    if not measure:
        return PrecisionChoice("bf16", f"CPU has {', '.join(native)} (not measured)")
    ratio = _bf16_decode_speedup()
    measured = f"CPU has {', '.join(native)}; bf16 decoding matmul {ratio:.2f}x fp32"
    if ratio >= CPU_BF16_DECODE_MIN_SPEEDUP:
        return PrecisionChoice("bf16", measured)
    return PrecisionChoice("fp32", f"{measured}, below the {CPU_BF16_DECODE_MIN_SPEEDUP}x needed")


def decoding_kernels(device: torch.device) -> str:
    """Which matmuls blank filling runs on ``device`` (``decoding_layout_``), and why."""
    from .kernels import (
        onednn_available,
        single_row_by_mkl,
        single_row_mkl_speedup,
        wide_row_major_speedup,
        wide_rows_row_major,
    )

    if device.type != "cpu":
        return f"PyTorch's own on {device.type}"
    layout = "column-major weights" + (  # the ratio: the cached measurement the choice read
        f" (row-major where more inputs than outputs: {wide_row_major_speedup():.2f}x column-major)"
        if wide_rows_row_major()
        else ""
    )
    if not onednn_available():
        return f"MKL on {layout}: this PyTorch has no oneDNN"
    ratio = single_row_mkl_speedup()  # measured once per process, as single_row_by_mkl reads it
    single = f"MKL on {layout}" if single_row_by_mkl() else "oneDNN too"
    return (
        f"oneDNN on weights packed once (blankfill.kernels); single fp32 rows: {single} "
        f"(MKL measured {ratio:.2f}x oneDNN for one row)"
    )


def training_kernels(device: torch.device, precision: str) -> str:
    """Which matmuls the training engine runs the blocks' Linears on, and why."""
    from .kernels import onednn_available, onednn_training_speedup, training_by_onednn

    if device.type != "cpu" or precision != "fp32":
        return f"PyTorch's own ({precision} on {device.type})"
    if not onednn_available():
        return "MKL: this PyTorch has no oneDNN"
    ratio = onednn_training_speedup()  # measured once per process, as training_by_onednn reads it
    chosen = "oneDNN" if training_by_onednn() else "MKL"
    return f"{chosen} (fp32 training Linear: oneDNN measured {ratio:.2f}x MKL)"
