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
        d = int(np.searchsorted(self.cum, anchor, side="right")) - 1
        return d, int(anchor - self.cum[d])


def epoch_windows(num_tokens: int, seq_len: int, seed: int, epoch: int) -> tuple[np.ndarray, float]:
    """The epoch's window order and shift (a pure function of ``(seed, epoch)``)."""
    n = max(1, num_tokens // max(1, seq_len - 1))
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n), float(rng.random())


def _snap_start(ends: np.ndarray, start: int, limit: int, rng: np.random.Generator) -> int:
    """Move ``start`` to the nearest sentence start in one random direction (<= limit tokens)."""

    def is_start(i: int) -> bool:
        return i == 0 or bool(ends[i - 1])

    step = -1 if rng.random() < 0.5 else 1
    i = start
    for _ in range(limit):
        if is_start(i):
            return i
        if not 0 < i + step < len(ends):
            break
        i += step
    return i if is_start(i) else start


def _cut_at_sentence_end(ends: np.ndarray, n: int) -> int:
    """Length to keep of a prefix of ``n`` tokens so that it ends at a sentence end."""
    hit = np.flatnonzero(ends[:n])
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
        n = seq_len - 1  # tokens after [CLS]; the document's eos counts as its last token
        s0 = int(view.starts[d])
        doc_ends = store.sentence_end_mask(s0, s0 + n_doc)
        start = _snap_start(doc_ends, min(offset, n_doc + 1 - n), seq_len // 2, rng)
        start = min(start, n_doc + 1 - n)
        stop = start + n
        if stop <= n_doc:  # cut inside the document: end at a sentence end
            stop = start + _cut_at_sentence_end(doc_ends[start:], n)
            add(d, start, stop, False)
        else:
            add(d, start, n_doc, True)
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
