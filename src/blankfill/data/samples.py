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
