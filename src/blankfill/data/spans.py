"""Where the blanks go: span lengths, documents, span placement, sentences (spec §3.3).

Pure functions; randomness arrives as ``np.random.Generator``. Each public function keeps the
list-of-tuples form of the official code; the ``*_arrays`` cores return int64 arrays (what the
corruptor uses) and make exactly the same draws, so both give the same spans from the same
generator; ``one_region_spans_batch`` makes the same draws for a batch of one-document texts.
Re-exported by ``blankfill.data.corrupt``.
"""

from __future__ import annotations

import numpy as np

#: A span: half-open ``(start, end)`` indices into the text.
Span = tuple[int, int]


def span_length_pmf(poisson_lambda: float, max_span_length: int) -> np.ndarray:
    """Poisson(λ) restricted to lengths 1..max_span_length-1 and renormalised: float64 [max-1]."""
    k = np.arange(1, max_span_length, dtype=np.float64)
    logp = k * np.log(poisson_lambda) - poisson_lambda - np.cumsum(np.log(k))
    p = np.exp(logp - logp.max())
    return p / p.sum()


def span_length_table(pmf: np.ndarray) -> tuple[np.ndarray, float]:
    """The cdf (normalised to end at exactly 1) and the mean length of ``pmf``."""
    cdf = pmf.cumsum()
    cdf /= cdf[-1]
    return cdf, float(np.dot(np.arange(1, len(pmf) + 1), pmf))


def span_length_array(
    target: int, rng: np.random.Generator, cdf: np.ndarray, mean: float
) -> np.ndarray:
    """``sample_span_lengths`` as int64 [k], from ``span_length_table(pmf)``."""
    if target <= 0:
        return np.zeros(0, np.int64)
    parts, total = [], 0
    while True:  # exactly what ``rng.choice(len(pmf), size=need, p=pmf)`` draws, without checks
        need = int((target - total) / mean) + 4
        draws = cdf.searchsorted(rng.random(need), side="right") + 1
        csum = draws.cumsum()
        stop = int(csum.searchsorted(target - total))  # first index with total + csum >= target
        if stop < need:
            parts.append(draws[: stop + 1])
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        parts.append(draws)
        total += int(csum[-1])


def sample_span_lengths(target: int, rng: np.random.Generator, *, pmf: np.ndarray) -> list[int]:
    """Draw span lengths from ``pmf`` (index i = length i+1) until they total at least ``target``.

    Same distribution as the official one-at-a-time loop; drawn in chunks for speed.
    """
    return span_length_array(target, rng, *span_length_table(pmf)).tolist()


def document_segments(tokens: np.ndarray, *, cls_id: int, eos_id: int) -> list[tuple[int, int]]:
    """The maskable ``(offset, length)`` region of each document in a text.

    Documents end at ``eos``; the ``[CLS]`` that opens a document and the final ``eos`` are never
    maskable (official ``sample_span_in_document``).
    """
    eos = np.flatnonzero(tokens == eos_id).tolist()
    bounds = [-1, *eos]
    n = len(tokens)
    segs = []
    for k, b in enumerate(bounds):
        start = b + 1
        if start < n and tokens[start] == cls_id:
            start += 1
        stop = bounds[k + 1] if k + 1 < len(bounds) else n
        segs.append((start, max(0, stop - start)))
    return segs


def _spans_in_segment(
    lengths: np.ndarray, offset: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """Starts [k] of spans placed uniformly at random in a segment, non-overlapping, >= 1
    visible token apart (the k + 1 gaps are a sorted uniform draw)."""
    free = length - int(lengths.sum()) - len(lengths) + 1
    places = np.sort(rng.integers(0, free + 1, size=len(lengths)))
    return offset + places + (lengths + 1).cumsum() - (lengths + 1)


def place_span_arrays(
    lengths: np.ndarray,
    segments: list[tuple[int, int]],
    rng: np.random.Generator,
    *,
    ratio: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """``place_spans`` as int64 ``(starts [k], ends [k])`` in placement order, or None."""
    lengths = np.asarray(lengths, dtype=np.int64)[rng.permutation(len(lengths))]
    if (
        len(segments) == 1
        and 0 < len(lengths)
        and int(lengths.sum()) + len(lengths) - 1 <= segments[0][1]
    ):
        s = _spans_in_segment(lengths, *segments[0], rng)  # one document, every span fits
        return s, s + lengths
    order = sorted(range(len(segments)), key=lambda i: segments[i][1])
    starts, ends, used = [], [], 0
    for rank, i in enumerate(order):
        offset, length = segments[i]
        rest = lengths[used:]
        if rank == len(order) - 1:  # the longest: spans and the gaps between them must fit
            take = int((rest.cumsum() + np.arange(len(rest))).searchsorted(length, "right"))
        else:  # the others: at most floor(ratio * length) masked tokens
            take = int(rest.cumsum().searchsorted(int(length * ratio), "right"))
        if take:
            s = _spans_in_segment(rest[:take], offset, length, rng)
            starts.append(s)
            ends.append(s + rest[:take])
            used += take
    if used != len(lengths):
        return None
    if len(starts) == 1:
        return starts[0], ends[0]
    empty = np.zeros(0, np.int64)
    return np.concatenate([empty, *starts]), np.concatenate([empty, *ends])


def place_spans(
    lengths: list[int],
    segments: list[tuple[int, int]],
    rng: np.random.Generator,
    *,
    ratio: float,
) -> list[Span] | None:
    """Place span lengths into document segments (official ``sample_span_in_document``).

    The lengths are shuffled; each document but the longest gets spans totalling at most
    ``floor(ratio * its length)``; the longest takes the rest. Returns None when not every span
    fits (the official code drops such a sample; the caller redraws).
    """
    placed = place_span_arrays(np.asarray(lengths, np.int64), segments, rng, ratio=ratio)
    if placed is None:
        return None
    return list(zip(placed[0].tolist(), placed[1].tolist(), strict=True))


def sentence_span_arrays(
    tokens: np.ndarray, sentence_end: np.ndarray, *, cls_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``sentence_spans`` as int64 ``(starts [k], ends [k])``."""
    n = len(tokens)
    sep = (tokens == eos_id) | (tokens == cls_id)  # [n] never inside a sentence
    cut = sentence_end & ~sep  # [n] a sentence ends here
    inside = ~sep
    before = np.ones(n, bool)  # [n] the previous token closes a run
    before[1:] = sep[:-1] | cut[:-1]
    after = cut.copy()  # [n] this token closes its run
    after[:-1] |= sep[1:]
    after[-1:] = True
    return np.flatnonzero(inside & before), np.flatnonzero(inside & after) + 1


def sentence_spans(
    tokens: np.ndarray, sentence_end: np.ndarray, *, cls_id: int, eos_id: int
) -> list[Span]:
    """Maximal runs of text that end at a sentence end or before ``eos`` (``[CLS]``/eos excluded)."""
    starts, ends = sentence_span_arrays(
        np.asarray(tokens), np.asarray(sentence_end, bool), cls_id=cls_id, eos_id=eos_id
    )
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def one_region_spans_batch(
    targets: np.ndarray,
    offsets: np.ndarray,
    room: np.ndarray,
    rngs: list[np.random.Generator],
    cdf: np.ndarray,
    mean: float,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The first try of ``span_length_array`` then ``place_span_arrays`` for texts whose maskable
    tokens are one region (one document: ``[CLS] doc`` or ``[CLS] doc [eos]``), batched.

    Each generator makes exactly the draws of the per-text path (lengths, their shuffle, the
    gaps); the arithmetic between the draws runs over the batch at once.

    Args:
        targets: int [F] masked tokens to reach per text (> 0).
        offsets, room: int [F] the region's first index and length (> 0).
        rngs: F generators.
        cdf, mean: ``span_length_table(pmf)``.

    Returns:
        Per text, sorted int64 ``(starts [k], ends [k])``, or None where the spans did not fit
        (the caller redraws, as ``Corruptor._token_spans``).
    """
    if not rngs:
        return []
    need = (targets / mean).astype(np.int64) + 4  # [F] span_length_array's first chunk
    u = np.concatenate([r.random(n) for r, n in zip(rngs, need.tolist(), strict=True)])
    draws = cdf.searchsorted(u, side="right") + 1  # [sum(need)]
    first = need.cumsum() - need  # [F] each text's first draw
    csum = draws.cumsum()
    csum -= np.repeat(csum[first] - draws[first], need)  # running sum within each text
    stop = np.add.reduceat(csum < np.repeat(targets, need), first, dtype=np.int64)  # [F]
    total = csum[first + np.minimum(stop, need - 1)]  # [F] the lengths' sum (if the chunk did)
    pieces, places = [], []  # per text: its shuffled span lengths (placement order), the gaps
    fit = np.zeros(len(rngs), bool)
    widest = 0  # the most gap tokens of a text that fits
    rows = zip(
        rngs, first.tolist(), need.tolist(), stop.tolist(), targets.tolist(), total.tolist(),
        room.tolist(), strict=True,
    )  # fmt: skip
    for i, (r, a, n, below, t, tot, space) in enumerate(rows):
        if below < n:  # below: draws whose running sum is under the target
            d = draws[a : a + below + 1]
        else:  # the first chunk fell short: the loop goes on from its total
            more = span_length_array(t - tot, r, cdf, mean)
            d = np.concatenate([draws[a : a + n], more])
            tot += int(more.sum())
        r.shuffle(d)  # in place (a view of this text's draws): d[r.permutation(len(d))]
        pieces.append(d)
        f = space - tot - len(d) + 1  # gap tokens beyond the one between neighbours
        if f >= 0:
            places.append(r.integers(0, f + 1, size=len(d)))
            fit[i] = True
            widest = max(widest, f)
            continue
        # as place_span_arrays: the spans that fit are placed (a draw), then the try fails
        take = int((d.cumsum() + np.arange(len(d))).searchsorted(space, "right"))
        if take:
            _spans_in_segment(d[:take], int(offsets[i]), space, r)
    if not places:
        return [None] * len(rngs)
    sel = np.flatnonzero(fit)
    m = np.concatenate([pieces[i] for i in sel])  # [M] lengths of the texts that fit
    km = np.array([len(p) for p in places], np.int64)
    group = np.repeat(np.arange(len(sel)), km)  # [M]
    width = widest + 2
    p = np.sort(np.concatenate(places) + group * width) - group * width  # sorted within a text
    step = (m + 1).cumsum()
    before = step - (m + 1)  # [M] exclusive running sum within the batch ...
    mfirst = km.cumsum() - km
    before -= np.repeat(before[mfirst], km)  # ... within its text
    starts = np.repeat(offsets[sel], km) + p + before
    ends = starts + m
    spans: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(rngs)
    for i, a, n in zip(sel.tolist(), mfirst.tolist(), km.tolist(), strict=True):
        spans[i] = (starts[a : a + n], ends[a : a + n])
    return spans
