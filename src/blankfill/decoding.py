"""Decoding state for blank filling: the special ids, one fill, and the KV-cache decoder.

``generate.py`` runs the rounds (greedy/sample, beam search) on top of ``_Decoder``; the words
used (prompt, blank, fill) and the semantics are described there. Everything here is re-exported
by ``blankfill.generate``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .config import DecodingConfig, from_dict
from .kernels import column_major_, decoding_kernels_, onednn_available
from .kv_cache import KVCache
from .layout import PartBLayout
from .model import GLM, build_attention_mask

DEFAULT_MAX_NEW_TOKENS = 64  # per blank, when decoding.max_new_tokens is None

# --------------------------------------------------------------------------------------------
# Special ids and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InfillIds:
    """The special ids blank filling needs (``InfillIds.from_tokenizer`` reads a tokenizer)."""

    blanks: tuple[int, ...]  # ids of the blank tokens ([MASK], [sMASK], [gMASK])
    sop: int  # opens each span (<|startofpiece|>)
    eop: int  # closes each span (<|endofpiece|>)
    pad: int  # fed by rows that have nothing to feed
    stop: tuple[int, ...] = ()  # further ids that end a fill (the official code also stops at eos)
    banned: tuple[int, ...] = ()  # never generated (blank ids, [CLS], vocabulary padding rows)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> InfillIds:
        """Blanks, [sop], [eop], [pad]; stop also at eos (official); never generate the other
        command tokens or the vocabulary's padding rows."""
        s = tokenizer.special
        specials = {s.pad, s.cls, s.sop, *tokenizer.mask_ids} - {s.eos, s.eop}
        padding = range(tokenizer.vocab_size, tokenizer.padded_vocab_size)
        return cls(
            blanks=tuple(tokenizer.mask_ids),
            sop=s.sop,
            eop=s.eop,
            pad=s.pad,
            stop=(s.eos,) if s.eos != s.eop else (),
            banned=tuple(sorted(specials | set(padding))),
        )

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.eop, *self.stop)


@dataclass(frozen=True, kw_only=True)
class Fill:
    """What one blank was filled with."""

    blank: int  # which blank of the prompt, 0-based, left to right
    position: int  # the blank's index in Part A
    token_ids: tuple[int, ...]  # the fill, without [sop] / [eop]
    logprobs: tuple[float, ...]  # the model's log-probability of each token of ``token_ids``
    ended: bool  # True: closed by [eop] (or a stop id); False: cut at max_new_tokens
    end_logprob: float | None = None  # log-probability of the closing [eop], if ``ended``
    text: str = ""  # the decoded fill (text API only)

    @property
    def logprob(self) -> float:
        """Total log-probability of the fill, its [eop] included."""
        return sum(self.logprobs) + (self.end_logprob or 0.0)


def decoding_config(decoding: DecodingConfig | None = None, **overrides: Any) -> DecodingConfig:
    """``decoding`` with ``overrides`` applied; an unknown or invalid setting is a ValueError."""
    base = dataclasses.asdict(decoding) if decoding is not None else {}
    return from_dict(DecodingConfig, {**base, **overrides}, prefix="decoding.")


def decoding_layout_(model: GLM) -> GLM:
    """Ready the model's matmuls for fast CPU decoding; values, shapes and state_dict unchanged.

    With oneDNN (every x86 PyTorch wheel): the blocks' Linears and the output layer are swapped
    for oneDNN-packed ones (``blankfill.kernels``), 1.3-2.5x faster per decoding matmul than
    MKL's on the development box from two rows up; one-row fp32 calls go to MKL on column-major
    weights where that measures faster. Without oneDNN: the matrices are stored column-major
    (``kernels.column_major_``), so ``F.linear`` is MKL's plain GEMM, about twice as fast as the
    transposed one for the few rows of a step. Idempotent; nothing changes off the CPU or with
    gradients on (training). ``BlankFiller`` applies it.
    """
    if onednn_available():
        return decoding_kernels_(model)
    return column_major_(model)


# --------------------------------------------------------------------------------------------
# The decoder: one cache, rows of prompts, blanks decoded round by round
# --------------------------------------------------------------------------------------------


class _Decoder:
    """Holds the cache and the key-validity mask of one ``generate`` call."""

    def __init__(
        self, model: GLM, ids: InfillIds, cfg: DecodingConfig, capacity: int, layout: PartBLayout
    ) -> None:
        self.model, self.ids, self.cfg, self.layout = model, ids, cfg, layout
        self.device = model.word_embeddings.weight.device
        self.cache: KVCache = model.new_kv_cache(capacity)
        self.valid: torch.Tensor | None = None  # [N, capacity] bool: key slot holds a real token
        self.all_valid = True  # no padded key so far: decode without a mask
        self.stop = torch.tensor(ids.stop_ids, device=self.device)
        self.bias: torch.Tensor | None = None
        if ids.banned:
            self.bias = torch.zeros(model.config.vocab_size, device=self.device)
            self.bias[list(ids.banned)] = float("-inf")

    def prefill(self, prompts: list[list[int]], anchor: torch.Tensor) -> torch.Tensor:
        """Encode Part A of every row plus the first [sop] (its span at ``anchor`` [B], from
        ``PartBLayout.anchor``); logits [B, V] after that [sop]."""
        B, lens = len(prompts), [len(p) for p in prompts]
        T = max(lens) + 1
        tokens = torch.full((B, T), self.ids.pad, dtype=torch.long)
        pos = torch.zeros(B, 2, T, dtype=torch.long)
        sop_pos = self.layout.positions(anchor.cpu(), 1)[:, :, 0]  # [B, 2]
        for b, p in enumerate(prompts):
            tokens[b, : lens[b]] = torch.tensor(p)
            tokens[b, lens[b]] = self.ids.sop
            pos[b, 0, : lens[b]] = torch.arange(lens[b])
            pos[b, :, lens[b]] = sop_pos[b]
        lens_t = torch.tensor(lens, device=self.device)
        self.valid = torch.ones(B, self.cache.capacity, dtype=torch.bool, device=self.device)
        self.valid[:, :T] = torch.arange(T, device=self.device) <= lens_t[:, None]
        self.all_valid = len(set(lens)) == 1
        sep = lens[0] if self.all_valid else lens_t  # a uniform batch needs no per-row mask
        first = min(lens)  # the last block needs the rows from the first [sop] on only
        h = self.model.hidden(
            tokens.to(self.device), pos.to(self.device), context_len=sep, kv_cache=self.cache,
            first_row=first,
        )  # [B, T - first, D]  # fmt: skip
        sop = h[torch.arange(B, device=self.device), lens_t - first]  # [B, D]
        return self.model.logits(sop).float()  # [B, V]

    def feed(
        self, tokens: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """Append tokens [N, T] at positions [N, 2, T]; ``valid`` [N, T] marks the real ones.

        Returns the last position's hidden states [N, D].
        """
        start, T = self.cache.length, tokens.shape[1]
        S = start + T
        if valid is None:
            self.valid[:, start:S] = True
        else:
            self.valid[:, start:S] = valid
            self.all_valid = self.all_valid and bool(valid.all())
        mask = None
        if not self.all_valid:
            mask = self.valid[:, None, None, :S]  # [N, 1, 1, S]
            if T > 1:
                mask = mask & build_attention_mask(None, T, S, self.device)
        h = self.model.hidden(tokens, pos, attention_mask=mask, kv_cache=self.cache)
        return h[:, -1]

    def step(
        self, tokens: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """Feed one token per row (tokens [N], pos [N, 2, 1]); float32 logits [N, V]."""
        h = self.feed(tokens[:, None], pos, None if valid is None else valid[:, None])
        return self.model.logits(h).float()

    def select_rows(self, index: torch.Tensor) -> None:
        """Cache rows become ``index`` (a new batch size: expanding to or collapsing beams)."""
        self.cache = self.cache.index_select(index)
        self.valid = self.valid.index_select(0, index)

    def reorder_(self, index: torch.Tensor) -> None:
        """Beam reordering in place, copying only the used prefix of each layer's buffers."""
        n = self.cache.length
        for bufs in (self.cache.keys, self.cache.values):
            for buf in bufs:
                buf[:, :, :n] = buf[index, :, :n]

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)
        self.all_valid = bool(self.valid[:, :length].all())

    def scores(self, logits: torch.Tensor, fill: torch.Tensor, procs: list) -> torch.Tensor:
        if self.bias is not None:
            logits = logits + self.bias
        for f in procs:
            logits = f(logits, fill, self.cfg, self.stop)
        return logits
