"""The windowed sentence-start walk equals the one-step-at-a-time walk it replaced."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from blankfill.data.samples import _snap_start


def _reference(ends: np.ndarray, start: int, limit: int, step: int) -> int:
    """The official walk, one token at a time, on the whole document's sentence ends."""

    def is_start(i: int) -> bool:
        return i == 0 or bool(ends[i - 1])

    i = start
    for _ in range(limit):
        if is_start(i):
            return i
        if not 0 < i + step < len(ends):
            break
        i += step
    return i if is_start(i) else start


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 300),
    density=st.floats(0.0, 0.3),
    limit=st.integers(0, 64),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_windowed_walk_equals_the_reference(n, density, limit, seed, data):
    ends = np.random.default_rng(seed).random(n) < density  # [n]
    start = data.draw(st.integers(0, n - 1))
    lo, hi = max(0, start - limit - 1), min(n, start + limit + 1)  # what the window must cover
    draw = float(np.random.default_rng(seed + 1).random())
    got = _snap_start(ends[lo:hi], start, limit, np.random.default_rng(seed + 1), lo=lo, n=n)
    assert got == _reference(ends, start, limit, -1 if draw < 0.5 else 1)
