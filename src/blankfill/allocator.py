"""CPU training memory: let the C library's malloc keep freed memory for the next step.

A training step frees and allocates the same large tensors every step (activations, attention
scores, gradients: tens of MB each for glm-small). PyTorch's CPU allocator is the C library's
``malloc``. glibc serves a block above its mmap threshold (dynamic, at most 32 MiB) with fresh
pages from the kernel and gives the heap's free top back past its trim threshold, so each step
faults its working set in again, page by page: on the machine of 2026-12-02 (AMD EPYC, Zen 4
class, one thread) a glm-small fp32 step spent 1-3.7 s of its 12.8 s in the kernel (0.4 M minor
page faults); with the heap kept, 0.2-0.7 s (50 k faults), a step of 9.6 s
(``benchmarks/train_speed.py`` measures it against the peers).

``keep_freed_memory()`` raises both thresholds (``mallopt``: nothing above 1 GiB is mmap'd, the
heap is never trimmed), so freed blocks are reused. The cost: the process keeps the largest
footprint it reached (one step's peak, which training reaches every step anyway) instead of
returning memory between steps. The trainers call it on the CPU (``train.keep_freed_memory`` /
``finetune.keep_freed_memory``, on by default); ``keep_freed_memory(False)`` sets glibc's limits
back to the steady state its dynamic thresholds reach (mmap above 32 MiB, trim past 64 MiB; the
dynamic adjustment itself cannot be switched back on). Off glibc (musl, macOS, Windows) nothing
changes and both return False.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: Blocks up to this size come from the heap while freed memory is kept.
KEPT_MMAP_THRESHOLD = 1 << 30
#: The largest mmap threshold glibc's dynamic rule reaches on 64-bit systems (and accepts on old
#: glibc versions, which refuse a larger one).
GLIBC_MAX_DYNAMIC_MMAP = 32 << 20
#: Extra heap requested per growth while freed memory is kept (fewer, larger ``brk`` calls).
KEPT_TOP_PAD = 64 << 20


def _mallopt():
    """glibc's ``mallopt``, or None where the C library is another one."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - a Linux without a usable libc
        return None


def keep_freed_memory(keep: bool = True) -> bool:
    """Set glibc's malloc to keep freed memory for reuse (``keep``) or to its usual limits.

    Process-wide, like ``torch.set_num_threads``; call it once at the start of training.

    Args:
        keep: True: no trimming, nothing below 1 GiB mmap'd (32 MiB where an old glibc refuses
            more). False: mmap above 32 MiB, trim past 64 MiB, no top pad (glibc's steady state).

    Returns:
        Whether the C library took the settings (False off glibc: nothing changed).
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not keep:
        return bool(
            mallopt(_M_MMAP_THRESHOLD, GLIBC_MAX_DYNAMIC_MMAP)
            & mallopt(_M_TRIM_THRESHOLD, 2 * GLIBC_MAX_DYNAMIC_MMAP)
            & mallopt(_M_TOP_PAD, 0)
        )
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, KEPT_MMAP_THRESHOLD) or mallopt(
        _M_MMAP_THRESHOLD, GLIBC_MAX_DYNAMIC_MMAP
    )
    trim_ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # an int: ~2 GiB, never reached by the top
    return bool(mmap_ok & trim_ok & mallopt(_M_TOP_PAD, KEPT_TOP_PAD))


def describe() -> str:
    """One line for ``blankfill info --hardware``: what ``keep_freed_memory()`` does here."""
    if _mallopt() is None:
        return "not glibc: the C library's malloc as it is"
    return (
        "glibc malloc keeps freed memory for the next step (mmap threshold 1 GiB, no trim; "
        "train.keep_freed_memory=false returns it to the OS)"
    )
