"""What machine this is, and which precision trains fastest on it.

Machines change from one day to the next (a CPU with native bf16 one day, one without the next),
so nothing here is assumed: the CPU's flags are read, and where the flags allow bf16 a short
matmul micro-benchmark decides. ``blankfill info --hardware`` prints :func:`describe` and both
choices; the training engine calls :func:`choose_precision` once at start-up for
``train.precision = "auto"``, and decoding :func:`choose_decoding_precision` for ``precision="auto"``
(the default of ``BlankFiller``, ``fill`` and ``serve``).
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
# bf16 must beat fp32 by this factor in the micro-benchmark to be chosen on a CPU: autocast
# adds casts and fp32 elementwise work around the matmuls, so a small matmul win is no win.
CPU_BF16_MIN_SPEEDUP = 1.5
# Decoding converts the weights once (no casts per step), so a smaller measured win suffices.
CPU_BF16_DECODE_MIN_SPEEDUP = 1.2


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


def native_bf16_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The CPU's flags (or ``flags``) that mean native bf16 matmuls."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def _no_native_bf16() -> PrecisionChoice:
    return PrecisionChoice("fp32", f"CPU {cpu_model()!r} has no native bf16 (amx/avx512_bf16)")


def choose_precision(
    device: torch.device, *, measure: bool = True, flags: frozenset[str] | None = None
) -> PrecisionChoice:
    """The faster of fp32 and bf16 autocast for training on ``device``.

    CUDA: bf16 where the GPU supports it. CPU: fp32 unless the CPU has native bf16 (AMX or
    AVX512-BF16) and, when ``measure``, a bf16 matmul runs at least ``CPU_BF16_MIN_SPEEDUP``
    times the fp32 one (a ~1 s check). ``flags`` replaces the CPU's own flags (for tests).
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("fp32", "this GPU has no bf16 (use fp16 explicitly)")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"no bf16 check for device type {device.type}")
    native = native_bf16_flags(flags)
    if not native:
        return _no_native_bf16()
    if not measure:
        return PrecisionChoice("bf16", f"CPU has {', '.join(native)} (not measured)")
    fp32 = matmul_flops(torch.float32)
    bf16 = matmul_flops(torch.bfloat16)
    ratio = bf16 / fp32
    measured = (
        f"CPU has {', '.join(native)}; bf16 matmul {bf16 / 1e9:.0f} vs fp32 "
        f"{fp32 / 1e9:.0f} GFLOP/s ({ratio:.2f}x)"
    )
    if ratio >= CPU_BF16_MIN_SPEEDUP:
        return PrecisionChoice("bf16", measured)
    return PrecisionChoice("fp32", f"{measured}, below the {CPU_BF16_MIN_SPEEDUP}x needed")


@functools.cache
def _bf16_decode_speedup(rows: int = 1, seconds: float = 0.1) -> float:
    """How many times faster a decoding-step matmul (``rows`` x 512 by 2048 x 512, weights
    rotated through 100 MB so they come from memory, as in a real step) runs with bf16 weights
    than fp32, both with the kernels decoding uses (``blankfill.kernels``). Measured once per
    process (~0.1 s)."""
    from torch import nn

    from .kernels import PackedLinear, onednn_available

    torch.manual_seed(0)
    fp32 = [nn.Linear(512, 2048) for _ in range(24)]
    if onednn_available():
        fp32 = [PackedLinear(lin) for lin in fp32]
    bf16 = [copy.deepcopy(lin).to(torch.bfloat16) for lin in fp32]
    x = torch.randn(rows, 512)
    xb = x.to(torch.bfloat16)

    def calls(layers: list[nn.Module], inp: torch.Tensor) -> list[float]:
        out = []
        for lin in layers:
            t0 = time.perf_counter()
            lin(inp)
            out.append(time.perf_counter() - t0)
        return out

    with torch.no_grad():
        calls(fp32, x), calls(bf16, xb)  # warm-up (packing)
        # Alternated; each call's best over the rounds, so a call that waited for a preempted
        # thread of a shared machine does not count.
        t32, t16 = [float("inf")] * len(fp32), [float("inf")] * len(bf16)
        deadline, n = time.perf_counter() + seconds, 0
        while n < 5 or time.perf_counter() < deadline:
            t32 = list(map(min, t32, calls(fp32, x)))
            t16, n = list(map(min, t16, calls(bf16, xb))), n + 1
        t32, t16 = sum(t32), sum(t16)
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
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return PrecisionChoice("fp32", "this GPU has no bf16")
    if device.type != "cpu":
        return PrecisionChoice("fp32", f"no bf16 check for device type {device.type}")
    native = native_bf16_flags(flags)
    if not native:
        return _no_native_bf16()
    if not measure:
        return PrecisionChoice("bf16", f"CPU has {', '.join(native)} (not measured)")
    ratio = _bf16_decode_speedup()
    measured = f"CPU has {', '.join(native)}; bf16 decoding matmul {ratio:.2f}x fp32"
    if ratio >= CPU_BF16_DECODE_MIN_SPEEDUP:
        return PrecisionChoice("bf16", measured)
    return PrecisionChoice("fp32", f"{measured}, below the {CPU_BF16_DECODE_MIN_SPEEDUP}x needed")


def decoding_kernels(device: torch.device) -> str:
    """Which matmuls blank filling runs on ``device`` (``decoding_layout_``), and why."""
    from .kernels import onednn_available

    if device.type != "cpu":
        return f"PyTorch's own on {device.type}"
    if onednn_available():
        return "oneDNN on weights packed once (blankfill.kernels): this PyTorch has oneDNN"
    return "MKL on column-major weights: this PyTorch has no oneDNN"
