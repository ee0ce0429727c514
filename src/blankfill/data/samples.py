"""Raw samples from a token store (the official ``BlockDataset``, spec §3.1), as pure functions.

An epoch visits ``n`` windows of the split's tokens in a seeded order: window i of epoch e is
anchored at token ``floor((perm_e[i] + shift_e) * total / n)`` of the split (documents back to
back), so every document is drawn in proportion to its length and each epoch covers the split once.
From the anchor's document:

- a document that does not fit ``seq_len`` with its ``[CLS]`` and eos gives ``[CLS]`` + a window of
  ``seq_len - 1`` tokens starting near the anchor, snapped to a sentence start (moving at most
  ``seq_len // 2`` tokens left or right, each with probability 1/2) and right-stripped to a sentence
  end (unless that would keep less than half the window);
- a shorter document gives ``[CLS] doc [eos]``, and with ``sample_across_doc`` further random
  documents ``[CLS] doc [eos]`` are appended until ``seq_len``; the last one is cut at a sentence
  end.

``loss_mask`` is 0 at every ``[CLS]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .objectives import RawSample
from .store import TokenStore


class SplitView:
    """The documents of one split of a store, laid back to back.

    Args:
        store: the token store.
        docs: int [D'] sorted document ids in this split.
    """

    def __init__(self, store: TokenStore, docs: np.ndarray) -> None:
        self.store = store
        self.docs = np.asarray(docs, dtype=np.int64)
        off = store.doc_offsets
        self.starts = off[self.docs]  # [D'] token offset of each document in the store
        self.lengths = off[self.docs + 1] - self.starts  # [D']
        self.cum = np.concatenate(([0], np.cumsum(self.lengths)))  # [D' + 1]
        if len(self.docs) == 0 or self.cum[-1] == 0:
            raise ValueError("the split holds no tokens; lower data.valid_fraction or add text")

    @property
    def num_tokens(self) -> int:
        return int(self.cum[-1])

    def locate(self, anchor: int) -> tuple[int, int]:
        """(document position in the split, offset inside it) of split token ``anchor``."""
        d = int(self.cum.searchsorted(anchor, side="right")) - 1
        return d, int(anchor - self.cum[d])


def epoch_windows(num_tokens: int, seq_len: int, seed: int, epoch: int) -> tuple[np.ndarray, float]:
    """The epoch's window order and shift (a pure function of ``(seed, epoch)``)."""
    n = max(1, num_tokens // max(1, seq_len - 1))
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), float(rng.random())


def _snap_start(
    ends: np.ndarray,
    start: int,
    limit: int,
    rng: np.random.Generator,
    *,
    lo: int = 0,
    n: int | None = None,
) -> int:
    """Move ``start`` to the nearest sentence start in one random direction (<= limit tokens).

    Token i starts a sentence iff i == 0 or token i - 1 ends one. ``ends`` is the sentence-end
    mask of the document's tokens ``lo .. lo + len(ends) - 1`` (it must cover ``start - limit - 1
    .. start + limit - 1``); ``n`` is the document length (default ``lo + len(ends)``). The walk
    visits ``start, start + step, ...`` (at most ``limit`` steps, staying inside ``0 < i < n``)
    and returns the first sentence start, or ``start`` when there is none.
    """
    n = lo + len(ends) if n is None else n
    step = -1 if rng.random() < 0.5 else 1
    # the walk: i_0 = start, then up to `limit` steps while 0 < i < n
    steps = min(limit, n - 1 - start if step > 0 else start - 1)
    idx = start + step * np.arange(max(steps, 0) + 1)  # [steps + 1] absolute positions
    hit = (idx == 0) | ends[np.maximum(idx - 1 - lo, 0)]  # [steps + 1] starts a sentence
    first = int(np.argmax(hit))
    return int(idx[first]) if hit[first] else start


def _cut_at_sentence_end(ends: np.ndarray, n: int) -> int:
    """Length to keep of a prefix of ``n`` tokens so that it ends at a sentence end."""
    hit = ends[:n].nonzero()[0]
    if len(hit) and hit[-1] + 1 >= n // 2:
        return int(hit[-1]) + 1
    return n


def raw_sample(
    view: SplitView,
    anchor: int,
    rng: np.random.Generator,
    *,
    seq_len: int,
    special: Any,
    sample_across_doc: bool = True,
    index: int = -1,
) -> RawSample:
    """Build the raw sample anchored at split token ``anchor``; length <= ``seq_len``."""
    cls, eos = int(special.cls), int(special.eos)
    store = view.store
    toks, lmask, ends = [], [], []

    def add(d: int, a: int, b: int, with_eos: bool) -> None:
        s0 = int(view.starts[d])
        toks.append(
            np.concatenate(
                ([cls], store.tokens[s0 + a : s0 + b].astype(np.int64), [eos] if with_eos else [])
            )
        )
        lm = np.ones(len(toks[-1]), np.float32)
        lm[0] = 0.0
        lmask.append(lm)
        se = np.zeros(len(toks[-1]), bool)
        se[1 : 1 + b - a] = store.sentence_end_mask(s0 + a, s0 + b)
        ends.append(se)

    d, offset = view.locate(anchor)
    n_doc = int(view.lengths[d])
    if n_doc + 2 > seq_len:
        return _window_sample(view, d, offset, rng, seq_len=seq_len, cls=cls, eos=eos, index=index)
    else:
        add(d, 0, n_doc, True)
        room = seq_len - n_doc - 2
        while sample_across_doc and room >= 2:
            d, _ = view.locate(int(rng.integers(view.num_tokens)))
            n_doc = int(view.lengths[d])
            if n_doc + 2 <= room:
                add(d, 0, n_doc, True)
                room -= n_doc + 2
                continue
            s0 = int(view.starts[d])
            keep = _cut_at_sentence_end(store.sentence_end_mask(s0, s0 + room - 1), room - 1)
            add(d, 0, keep, False)
            break
    return RawSample(
        tokens=np.concatenate(toks),
        loss_mask=np.concatenate(lmask),
        sentence_end=np.concatenate(ends),
        index=index,
    )


def _window_sample(
    view: SplitView,
    d: int,
    offset: int,
    rng: np.random.Generator,
    *,
    seq_len: int,
    cls: int,
    eos: int,
    index: int,
) -> RawSample:
    """``[CLS]`` + a window of ``seq_len - 1`` tokens of a document longer than ``seq_len - 2``.

    Reads only the sentence ends near the window, not the whole document's.
    """
    store = view.store
    n_doc, s0 = int(view.lengths[d]), int(view.starts[d])
    n = seq_len - 1  # tokens after [CLS]; the document's eos counts as its last token
    limit = seq_len // 2
    start = min(offset, n_doc + 1 - n)
    lo, hi = max(0, start - limit - 1), min(n_doc, start + limit + n)  # all the walk and cut read
    ends = store.sentence_end_mask(s0 + lo, s0 + hi)  # [hi - lo]
    start = min(_snap_start(ends, start, limit, rng, lo=lo, n=n_doc), n_doc + 1 - n)
    stop = start + n
    with_eos = stop > n_doc
    if with_eos:
        stop = n_doc
    else:  # cut inside the document: end at a sentence end
        stop = start + _cut_at_sentence_end(ends[start - lo :], n)
    m = stop - start
    L = 1 + m + with_eos
    tokens = np.empty(L, np.int64)
    tokens[0] = cls
    tokens[1 : 1 + m] = store.tokens[s0 + start : s0 + stop]
    if with_eos:
        tokens[-1] = eos
    loss_mask = np.ones(L, np.float32)
    loss_mask[0] = 0.0
    sentence_end = np.zeros(L, bool)
    sentence_end[1 : 1 + m] = ends[start - lo : stop - lo]
    return RawSample(tokens=tokens, loss_mask=loss_mask, sentence_end=sentence_end, index=index)


def raw_samples(
    view: SplitView,
    anchors: list[int],
    rngs: list[np.random.Generator],
    *,
    seq_len: int,
    special: Any,
    sample_across_doc: bool = True,
    indices: list[int],
) -> list[RawSample]:
    """``[raw_sample(view, a, rng, ..., index=i) for ...]``, the windows of a one-shard store
    (nearly every sample of a corpus of long documents) computed together.

    Each window makes the one draw ``raw_sample`` makes (the walk's direction) from its own
    generator; the walk, the cut and the gathers run over the batch as [W, ~seq_len] arrays.
    """
    anchors_a = np.asarray(anchors, np.int64)
    d = view.cum.searchsorted(anchors_a, side="right") - 1  # [N] document of each anchor
    n_doc = view.lengths[d]  # [N]
    store = view.store
    window = (n_doc + 2 > seq_len) & (len(store.shards) == 1)  # [N]
    out: list[RawSample | None] = [None] * len(anchors)
    for j in np.flatnonzero(~window).tolist():
        out[j] = raw_sample(
            view, anchors[j], rngs[j], seq_len=seq_len, special=special,
            sample_across_doc=sample_across_doc, index=indices[j],
        )  # fmt: skip
    w = np.flatnonzero(window)
    if len(w):
        rows = _windows(
            view, d[w], anchors_a[w] - view.cum[d[w]], [rngs[j] for j in w.tolist()],
            seq_len=seq_len, cls=int(special.cls), eos=int(special.eos),
            indices=[indices[j] for j in w.tolist()],
        )  # fmt: skip
        for j, row in zip(w.tolist(), rows, strict=True):
            out[j] = row
    return out  # type: ignore[return-value]


def _windows(
    view: SplitView,
    d: np.ndarray,
    offset: np.ndarray,
    rngs: list[np.random.Generator],
    *,
    seq_len: int,
    cls: int,
    eos: int,
    indices: list[int],
) -> list[RawSample]:
    """``_window_sample`` for W documents of a one-shard store at once (same steps, as arrays).

    The walk, the cut and the window's sentence ends are all read off the store's sorted
    sentence-end indices with two ``searchsorted`` calls for the batch (no per-token arrays):
    token i starts a sentence iff i == 0 or the end list holds i - 1.
    """
    store = view.store
    n_doc, s0 = view.lengths[d], view.starts[d]  # [W]
    n, limit = seq_len - 1, seq_len // 2
    start = np.minimum(offset, n_doc + 1 - n)
    ends_g = store._shard_ends()[0]  # sorted store indices of sentence ends
    last = len(ends_g) - 1
    # the walk (``_snap_start``): one direction draw per window, then up to `steps` tokens that
    # way to the nearest sentence start: after the first end >= start - 1 (forwards) or the
    # last end <= start - 1 (backwards)
    forward = np.array([r.random() >= 0.5 for r in rngs])  # [W]
    steps = np.maximum(np.minimum(limit, np.where(forward, n_doc - 1 - start, start - 1)), 0)
    key = s0 + start - 1
    q = ends_g.searchsorted(key)  # [W] first end >= key
    at_q = ends_g.take(np.minimum(q, last))
    q = np.where(forward, q, q - 1 + ((q <= last) & (at_q == key)))  # backwards: last <= key
    e = ends_g.take(np.clip(q, 0, last))  # [W] that end (when 0 <= q <= last)
    moved = e + 1 - s0 - start  # [W] signed distance to the sentence start after it
    found = (q >= 0) & (q <= last) & (np.where(forward, moved, -moved) <= steps)
    start = np.minimum(np.where(found & (start > 0), start + moved, start), n_doc + 1 - n)
    # the end: the document's eos, or the last sentence end of the window (``_cut_at_...``)
    with_eos = start + n > n_doc
    m_max = np.minimum(n, n_doc - start)  # [W] window tokens inside the document
    a, b = ends_g.searchsorted(np.concatenate([s0 + start, s0 + start + m_max])).reshape(2, -1)
    j = ends_g.take(np.maximum(b - 1, 0)) - (s0 + start)  # [W] last end in the window
    cut = np.where((b > a) & (j + 1 >= n // 2), j + 1, n)
    m = np.where(with_eos, n_doc - start, cut)  # [W] document tokens kept
    L = 1 + m + with_eos
    # one flat buffer: [CLS] + tokens (+ eos) per window, filled with slices
    o = L.cumsum() - L
    flat_tok = np.empty(int(L.sum()), np.int64)
    flat_tok[o] = cls
    flat_tok[o + L - 1] = eos  # overwritten below where the window has no eos
    flat_lm = np.ones(len(flat_tok), np.float32)
    flat_lm[o] = 0.0
    # the kept window's sentence ends are ends_g[a:b] (ends after a cut lie beyond b)
    flat_end = np.zeros(len(flat_tok), bool)
    cnt = b - a
    k = np.arange(int(cnt.sum())) + np.repeat(a - (cnt.cumsum() - cnt), cnt)
    flat_end[ends_g[k] - np.repeat(s0 + start - o - 1, cnt)] = True
    tokens, out = store.tokens, []
    at = (s0 + start).tolist()
    for w, (i, k, j, g) in enumerate(zip(o.tolist(), L.tolist(), m.tolist(), indices, strict=True)):
        flat_tok[i + 1 : i + 1 + j] = tokens[at[w] : at[w] + j]
        out.append(
            RawSample(
                tokens=flat_tok[i : i + k],
                loss_mask=flat_lm[i : i + k],
                sentence_end=flat_end[i : i + k],
                index=g,
            )  # fmt: skip
        )
    return out
