"""keep_freed_memory: freed large blocks are reused instead of faulted in again (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from blankfill import allocator

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# In a fresh process (the heap state of this one depends on the tests before): set the mode, then
# allocate, touch and free a 64 MiB tensor once, and count the minor page faults of doing it 8 times
# more.
_PROBE = """
import resource, sys
import torch
from blankfill import allocator
assert allocator.keep_freed_memory(sys.argv[1] == "keep")
n = 64 << 18  # float32 values: 64 MiB
t = torch.ones(n); del t
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    t = torch.ones(n); del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, resource.getpagesize())
"""


def _faults(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return int(out[0]), (64 << 20) // int(out[1])


@glibc
def test_kept_memory_is_reused_not_faulted_in_again():
    usual, pages = _faults("usual")  # above 32 MiB: mmap'd afresh every time
    kept, _ = _faults("keep")
    assert usual >= 8 * pages, (usual, pages)  # each allocation faulted its pages in
    assert kept <= 2 * pages, (kept, pages)  # the freed block was reused (nearly always)


def test_off_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory(True) is False
    assert "not glibc" in allocator.describe()
