"""Blank filling: decode every blank of a prompt, left to right, with the KV cache (spec §4.4).

Words used here (one meaning each, style §3.6):
    prompt   Part A: token ids containing one or more blanks ([MASK] short span, [sMASK] sentence,
             [gMASK] long continuation).
    blank    one blank token; blank ``j`` sits at Part-A index ``m_j``.
    fill     the tokens generated for one blank (without its [sop] and [eop]).

Semantics (the official ``generate_samples.py``): Part A is encoded once with ``context_len =
|Part A|``. Each blank, left to right, is decoded as a span of Part B: [sop] at (position ``m_j``,
block position 1), then every generated token at (``m_j``, 2, 3, ...) until [eop] (or another stop
id). Fills stay in the cache, so a later blank sees the earlier fills; [eop] itself is never fed.
A model pretrained with another layout decodes in it (``blankfill.layout``, read from the model's
config or given as ``layout``): 1D, block position 1 throughout; sentinel, a [MASK] span at
position |Part A|.

Batching: prompts are right-padded; padded key slots are tracked in ``valid`` [N, capacity] and
hidden from queries with an explicit mask. A batch without padding decodes with no mask at all.
All prompts decode their j-th blank in the same *round*; a row that ends early feeds [pad].

Beam search (HF ``BeamSearchScorer`` semantics, ``do_early_stopping=False``, spec §4.2): each step
keeps the best ``2·num_beams`` candidates over beams × vocabulary; a candidate ending in [eop] of
rank < num_beams becomes a finished hypothesis scored ``sum log-prob / n**length_penalty``, where
``n`` counts the scored tokens ([eop] included). A prompt is done when it holds ``num_beams``
hypotheses and the best running candidate, at the current length, cannot beat the worst of them.
At ``max_new_tokens`` the running beams join the hypotheses. Before the next blank the best fill
is re-encoded after the shared [sop] (the beams' own cache rows are discarded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .config import DecodingConfig
from .decoding import (
    DEFAULT_MAX_NEW_TOKENS,
    Fill,
    InfillIds,
    _Decoder,
    decoding_config,
    decoding_layout_,
)
from .filters import active_filters
from .layout import PartBLayout, model_layout
from .model import GLM


def _sample_round(
    dec: _Decoder,
    logits: torch.Tensor,
    blank_pos: torch.Tensor,
    anchor: torch.Tensor,
    active: torch.Tensor,
    later: torch.Tensor,
    generator: torch.Generator | None,
    on_token: Callable[[int, list[int]], None] | None,
) -> list[Fill | None]:
    """Greedy or sampled decoding of one blank for every active row (logits [B, V] after [sop];
    ``anchor`` [B]: the span's position, ``PartBLayout.anchor``)."""
    cfg, pad = dec.cfg, dec.ids.pad
    procs, warps = active_filters(cfg)
    B, M = logits.shape[0], cfg.max_new_tokens
    gen = torch.full((B, M), pad, dtype=torch.long, device=dec.device)  # [B, M]
    logps = torch.zeros(B, M, device=dec.device)
    finished, ended = ~active, torch.zeros_like(active)
    count = torch.zeros(B, dtype=torch.long, device=dec.device)  # fill tokens per row
    end_lp = torch.zeros(B, device=dec.device)
    pos = dec.layout.positions(anchor, M + 1)  # [B, 2, M + 1]; fill token t: column t + 1
    for t in range(M):
        scores = dec.scores(logits, gen[:, :t], procs)
        if cfg.strategy == "greedy":
            tok = scores.argmax(-1)  # [B]
        else:
            for f in warps:
                scores = f(scores, gen[:, :t], cfg, dec.stop)
            tok = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
        lp = logits.gather(1, tok[:, None])[:, 0] - logits.logsumexp(-1)  # model log-prob
        is_end = torch.isin(tok, dec.stop) & ~finished
        ended |= is_end
        end_lp = torch.where(is_end, lp, end_lp)
        going = ~finished & ~is_end
        gen[:, t] = torch.where(going, tok, pad)
        logps[:, t] = lp
        count += going
        finished = finished | is_end
        if on_token is not None:
            for b in going.nonzero()[:, 0].tolist():
                on_token(b, [int(gen[b, t])])
        if t == M - 1 or bool(finished.all()):
            break
        # Rows without a later blank may feed anything: keep their slots valid (no mask needed).
        logits = dec.step(torch.where(going, tok, pad), pos[:, :, t + 1 : t + 2], going | ~later)
    # A fill cut at max_new_tokens has an unfed last token; feed it if a later blank will look.
    cut = later & ~ended & (count == M)
    if bool(cut.any()):
        dec.feed(gen[:, M - 1 :], pos[:, :, M:], (cut | ~later)[:, None])
    out: list[Fill | None] = []
    for b in range(B):
        n = int(count[b])
        out.append(
            Fill(
                blank=0,
                position=int(blank_pos[b]),
                token_ids=tuple(gen[b, :n].tolist()),
                logprobs=tuple(logps[b, :n].tolist()),
                ended=bool(ended[b]),
                end_logprob=float(end_lp[b]) if bool(ended[b]) else None,
            )
            if bool(active[b])
            else None
        )
    return out


class _Hypotheses:
    """The ``num_beams`` best finished hypotheses of one prompt (HF ``BeamHypotheses``)."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.k, self.lp = num_beams, length_penalty
        self.items: list[tuple[float, list[int], list[float], float | None]] = []

    def add(
        self, total: float, tokens: list[int], logps: list[float], end_lp: float | None
    ) -> None:
        n = len(tokens) + (end_lp is not None)  # scored tokens, [eop] included
        score = total / max(n, 1) ** self.lp
        if len(self.items) < self.k or score > self.items[-1][0]:
            self.items.append((score, tokens, logps, end_lp))
            self.items.sort(key=lambda h: -h[0])
            del self.items[self.k :]

    def done(self, best_running: float, length: int) -> bool:
        """``do_early_stopping=False``: can the best running beam, at this length, still enter?"""
        return len(self.items) >= self.k and self.items[-1][0] >= best_running / length**self.lp


def _beam_round(
    dec: _Decoder,
    logits: torch.Tensor,
    blank_pos: torch.Tensor,
    anchor: torch.Tensor,
    active: torch.Tensor,
) -> list[Fill | None]:
    """Beam search over one blank for every active row (logits [B, V] after [sop])."""
    cfg, pad = dec.cfg, dec.ids.pad
    procs, _ = active_filters(cfg)
    B, K, V = logits.shape[0], cfg.num_beams, logits.shape[-1]
    stop = set(dec.ids.stop_ids)
    expand = torch.arange(B, device=dec.device).repeat_interleave(K)  # [B*K]
    dec.select_rows(expand)
    logits, beam_anchor = logits[expand], anchor[expand]  # [B*K, V], [B*K]
    scores = torch.zeros(B, K, device=dec.device)
    scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    scores = scores.view(-1)
    tokens = torch.zeros(B * K, 0, dtype=torch.long, device=dec.device)  # [B*K, t]
    logps = torch.zeros(B * K, 0, device=dec.device)
    hyps = [_Hypotheses(K, cfg.length_penalty) for _ in range(B)]
    done = [not a for a in active.tolist()]
    pos = dec.layout.positions(beam_anchor, cfg.max_new_tokens)  # [B*K, 2, M]
    for t in range(cfg.max_new_tokens):
        raw = logits.float().log_softmax(-1)  # [B*K, V]
        cand = dec.scores(raw, tokens, procs) + scores[:, None]
        top, idx = cand.view(B, K * V).topk(2 * K, dim=1)  # [B, 2K]
        rows = (idx // V + torch.arange(B, device=dec.device)[:, None] * K).tolist()
        toks, top_l = (idx % V).tolist(), top.tolist()
        nxt_row, nxt_tok, nxt_score = [], [], []
        for b in range(B):
            chosen: list[tuple[int, int, float]] = []
            if not done[b]:
                for rank in range(2 * K):
                    row, tok, s = rows[b][rank], toks[b][rank], top_l[b][rank]
                    if tok in stop:
                        if rank < K:
                            seq, lps = tokens[row].tolist(), logps[row].tolist()
                            hyps[b].add(s, seq, lps, float(raw[row, tok]))
                    else:
                        chosen.append((row, tok, s))
                    if len(chosen) == K:
                        break
                done[b] = hyps[b].done(max(top_l[b]), t + 1)
            chosen += [(b * K, pad, float("-inf"))] * (K - len(chosen))  # idle beams
            for row, tok, s in chosen:
                nxt_row.append(row), nxt_tok.append(tok), nxt_score.append(s)
        index = torch.tensor(nxt_row, device=dec.device)
        new = torch.tensor(nxt_tok, device=dec.device)
        tokens = torch.cat([tokens[index], new[:, None]], 1)
        logps = torch.cat([logps[index], raw[index].gather(1, new[:, None])], 1)
        scores = torch.tensor(nxt_score, device=dec.device)
        if all(done) or t == cfg.max_new_tokens - 1:
            break
        dec.reorder_(index)
        logits = dec.step(new, pos[:, :, t + 1 : t + 2], None)
    out: list[Fill | None] = []
    for b in range(B):
        if not active[b]:
            out.append(None)
            continue
        if not done[b]:  # cut at max_new_tokens: the running beams are hypotheses too
            for row in range(b * K, b * K + K):
                hyps[b].add(float(scores[row]), tokens[row].tolist(), logps[row].tolist(), None)
        _, seq, lps, end_lp = hyps[b].items[0]
        out.append(
            Fill(
                blank=0,
                position=int(blank_pos[b]),
                token_ids=tuple(seq),
                logprobs=tuple(lps),
                ended=end_lp is not None,
                end_logprob=end_lp,
            )
        )
    return out


def _check(model: GLM, prompts: list[list[int]], ids: InfillIds, cfg: DecodingConfig) -> None:
    mc = model.config
    V, limit = mc.vocab_size, mc.max_sequence_length
    for name in ("sop", "eop", "pad"):
        if not 0 <= getattr(ids, name) < V:
            raise ValueError(
                f"special id {name}={getattr(ids, name)} is outside the model's {V} rows"
            )
    if cfg.max_new_tokens >= limit and mc.block_position_encoding:
        raise ValueError(
            f"decoding.max_new_tokens={cfg.max_new_tokens} needs block positions beyond the "
            f"model's max_sequence_length {limit}; use at most {limit - 1}"
        )
    if not prompts:
        raise ValueError("no prompt given")
    blanks = set(ids.blanks)
    for i, p in enumerate(prompts):
        if len(p) > limit:
            raise ValueError(
                f"prompt {i} is {len(p)} tokens, {len(p) - limit} more than the model's "
                f"max_sequence_length {limit}; shorten it by {len(p) - limit} tokens"
            )
        if not blanks.intersection(p):
            raise ValueError(f"prompt {i} has no blank ({sorted(blanks)}); add [MASK] or [gMASK]")
        if min(p) < 0 or max(p) >= V:
            raise ValueError(f"prompt {i} has token ids outside the model's {V} rows")


@torch.inference_mode()
def generate(
    model: GLM,
    prompt_ids: Sequence[Sequence[int]] | torch.Tensor,
    *,
    ids: InfillIds,
    decoding: DecodingConfig | None = None,
    on_token: Callable[[int, int, list[int]], None] | None = None,
    layout: PartBLayout | None = None,
    **overrides: Any,
) -> list[list[Fill]]:
    """Fill every blank of every prompt, left to right (spec §4.4).

    Args:
        model: a GLM (eval mode is the caller's business; dropout is whatever it is set to).
        prompt_ids: B prompts (Part A, lists of ids, lengths may differ) or a LongTensor [B, T].
        ids: the special ids (blanks, [sop], [eop], [pad], stop and banned ids).
        decoding: the settings; ``overrides`` replace its fields (``max_new_tokens=8``, ...).
        on_token: called as ``on_token(prompt, blank, token_ids)`` as tokens are chosen (greedy and
            sampling: one token at a time; beam search: the whole fill once it is decided).
        layout: where Part B sits (``blankfill.layout``); default: the model's own, from its
            config (2D: each span at its blank, block positions 1, 2, ...; 1D: block position 1).

    Returns:
        For each prompt, one ``Fill`` per blank, left to right.
    """
    cfg = decoding_config(decoding, **overrides)
    if cfg.max_new_tokens is None:
        limit = model.config.max_sequence_length - 1
        cfg = dataclasses.replace(cfg, max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, limit))
    prompts = [
        [int(t) for t in p]
        for p in (prompt_ids.tolist() if torch.is_tensor(prompt_ids) else prompt_ids)
    ]
    _check(model, prompts, ids, cfg)
    blank_set = set(ids.blanks)
    blanks = [[i for i, t in enumerate(p) if t in blank_set] for p in prompts]
    B, R = len(prompts), max(len(bl) for bl in blanks)
    capacity = max(map(len, prompts)) + 1 + R * (cfg.max_new_tokens + 2)
    layout = model_layout(model, layout)
    dec = _Decoder(model, ids, cfg, capacity, layout)
    context_len = torch.tensor([len(p) for p in prompts], device=dec.device)  # [B]

    def round_anchor(r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(blank index [B], its span's position [B]) of round r (0 for rows without one)."""
        at = [bl[r] if len(bl) > r else 0 for bl in blanks]
        blank_pos = torch.tensor(at, device=dec.device)
        blank_id = torch.tensor([p[i] for p, i in zip(prompts, at, strict=True)], device=dec.device)
        return blank_pos, layout.anchor(blank_pos, context_len, blank_id)

    generator = None
    if cfg.strategy == "sample" and cfg.seed is not None:
        generator = torch.Generator(dec.device).manual_seed(cfg.seed)
    beam = cfg.strategy == "beam"
    fills: list[list[Fill]] = [[] for _ in range(B)]
    logits = dec.prefill(prompts, round_anchor(0)[1])
    for r in range(R):
        active = torch.tensor([len(bl) > r for bl in blanks], device=dec.device)
        later = torch.tensor([len(bl) > r + 1 for bl in blanks], device=dec.device)
        blank_pos, anchor = round_anchor(r)
        if r > 0:  # open the span: [sop] at (the span's position, block position 1)
            sop = torch.where(active, ids.sop, ids.pad)
            logits = dec.step(sop, layout.positions(anchor, 1), None)
        start = dec.cache.length
        if beam:
            round_fills = _beam_round(dec, logits, blank_pos, anchor, active)
        else:
            stream = None if on_token is None else (lambda b, toks, r=r: on_token(b, r, toks))
            round_fills = _sample_round(dec, logits, blank_pos, anchor, active, later, generator,
                                        stream)  # fmt: skip
        for b, f in enumerate(round_fills):
            if f is not None:
                fills[b].append(dataclasses.replace(f, blank=r))
                if beam and on_token is not None:
                    on_token(b, r, list(f.token_ids))
        if beam and bool(later.any()):
            # Keep one row per prompt and re-encode the chosen fills after the shared [sop].
            dec.select_rows(torch.arange(B, device=dec.device) * cfg.num_beams)
            dec.truncate(start)
            n = max((len(f.token_ids) for f in round_fills if f is not None), default=0)
            if n:
                toks = torch.full((B, n), ids.pad, dtype=torch.long, device=dec.device)
                valid = ~later[:, None].expand(B, n).clone()
                for b, f in enumerate(round_fills):
                    if f is not None and later[b]:
                        toks[b, : len(f.token_ids)] = torch.tensor(f.token_ids)
                        valid[b, : len(f.token_ids)] = True
                dec.feed(toks, layout.positions(anchor, n + 1)[:, :, 1:], valid)
    return fills


__all__ = [  # decoding_config and decoding_layout_ are re-exported from blankfill.decoding
    "DEFAULT_MAX_NEW_TOKENS",
    "Fill",
    "InfillIds",
    "decoding_config",
    "decoding_layout_",
    "generate",
]
