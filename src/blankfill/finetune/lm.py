"""Language-model evaluation (spec §4.3): LAMBADA accuracy and sliding-window perplexity.

Both come in two modes:
- bidirectional: the context is Part A, ending in a blank (``[gMASK]``, else ``[MASK]``); the scored
  tokens are Part B, ``[sop] y_1 .. y_{n-1}`` with targets ``y_1 .. y_n`` at the blank's position;
- unidirectional: one left-to-right sequence; only the first token is "Part A".

LAMBADA ("strict"): the last word is the text after the final space, encoded with its leading
space; an example is correct when every last-word token is the argmax. Perplexity: the text is
encoded as one document and scored in windows of ``max_seq_len`` tokens that advance by ``stride``;
each window scores its last ``stride`` tokens given up to ``max_seq_len - 1 - stride`` before them
(the first window: only one context token). ``word_ppl`` is the official adjusted perplexity,
``exp(loss_per_token * (tokens - 1) / (words - 1))`` over whitespace-separated words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..layout import PartBLayout, model_layout
from .cloze import ClozeInput, collate, to_device
from .readers import read_utf8


def check_at_least(**values: tuple[int | None, int]) -> None:
    """``name=(value, least)``: a one-line ValueError for a set value below its least (a stride
    or batch of 0 would loop forever or fail deep inside)."""
    for name, (value, least) in values.items():
        if value is not None and value < least:
            raise ValueError(f"{name.replace('_', '-')} must be >= {least}, got {value}")


def _blank_id(tokenizer) -> int:
    sp = tokenizer.special
    return sp.gmask if getattr(sp, "gmask", None) is not None else sp.mask


def _score_rows(
    model,
    inputs: Sequence[tuple[list[int], list[int]]],
    tokenizer,
    unidirectional: bool,
    blank_from_end: int = 1,
    layout: PartBLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (sum of target log-probs, all targets argmax-correct).

    Rows are (context, targets). Bidirectional: the context is Part A and its blank is the token
    ``blank_from_end`` from its end; the targets form Part B, placed as ``layout`` says (default:
    the model's own, from its config; 2D: at the blank's position).
    """
    device = next(model.parameters()).device
    sp = tokenizer.special
    if unidirectional:
        rows = [ctx + tgt for ctx, tgt in inputs]
        T = max(map(len, rows))
        ids = torch.tensor([r + [sp.pad] * (T - len(r)) for r in rows], device=device)
        targets = torch.full_like(ids, -100)
        for b, (ctx, tgt) in enumerate(inputs):
            targets[b, len(ctx) - 1 : len(ctx) - 1 + len(tgt)] = torch.tensor(tgt)
        h = model.hidden(ids, context_len=torch.ones(len(rows), dtype=torch.long, device=device))
    else:
        xs = [ClozeInput(part_a=tuple(ctx), mask_pos=len(ctx) - blank_from_end, answers=(tuple(tgt),), target=0)
              for ctx, tgt in inputs]  # fmt: skip
        batch = collate(xs, sp.sop, sp.pad, single_token=False, layout=model_layout(model, layout))
        batch = to_device(batch, device)
        h = model.hidden(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask,
                         first_row=batch.first_row)  # [B, T - first, D]  # fmt: skip
        targets = batch.targets[:, batch.first_row :]
    sel = targets != -100  # [B, T]
    logits = model.logits(h[sel]).float()  # [N, V]
    tgt = targets[sel]  # [N]
    logp = F.log_softmax(logits, dim=-1).gather(1, tgt.unsqueeze(1)).squeeze(1)  # [N]
    wrong = (logits.argmax(-1) != tgt).float()  # [N]
    row = torch.arange(len(inputs), device=device).unsqueeze(1).expand_as(targets)[sel]  # [N]
    total = torch.zeros(len(inputs), device=device).index_add(0, row, logp)
    errors = torch.zeros(len(inputs), device=device).index_add(0, row, wrong)
    return total.cpu(), (errors == 0).cpu()


@torch.no_grad()
def lambada(
    model,
    tokenizer,
    path: str | Path,
    *,
    unidirectional: bool = False,
    batch_size: int = 16,
    max_seq_len: int | None = None,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    layout: PartBLayout | None = None,
) -> dict:
    """LAMBADA accuracy (and last-word perplexity) from the ``{"text": ...}`` jsonl.

    ``layout``: Part-B positions (``blankfill.layout``); default: the model's, from its config."""
    check_at_least(batch_size=(batch_size, 1), max_seq_len=(max_seq_len, 8), limit=(limit, 1))
    model.eval()
    max_len = min(max_seq_len or 512, model.config.max_sequence_length)
    examples = []
    for n, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{n}: expected a JSON object with a 'text' field") from None
        if " " not in text.strip():
            raise ValueError(f"{path}:{n}: the text has no last word to predict")
        context, word = text.rstrip().rsplit(" ", 1)
        examples.append((tokenizer.encode(context), tokenizer.encode(" " + word)))
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"{path}: no examples (an empty file?); LAMBADA needs one text per line")
    sp = tokenizer.special
    correct, logp, tokens = 0, 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = []
        for ctx, tgt in examples[start : start + batch_size]:
            if unidirectional:
                ctx = ([sp.cls] + ctx)[-(max_len - len(tgt)) :]
            else:  # [CLS] context [blank] [eos] | [sop] word[:-1]
                ctx = [sp.cls] + ctx[-(max_len - len(tgt) - 3) :] + [_blank_id(tokenizer)]
            rows.append((ctx, tgt))
        if not unidirectional:
            # the blank is Part A's last-but-one token; [eos] closes Part A (spec §4.3)
            rows = [(ctx + [sp.eos], tgt) for ctx, tgt in rows]
        total, ok = _score_rows(model, rows, tokenizer, unidirectional, 2, layout)
        correct += int(ok.sum())
        logp += float(total.sum())
        tokens += sum(len(t) for _, t in rows)
        if progress is not None:
            progress(len(rows))
    n = max(len(examples), 1)
    return {"accuracy": correct / n, "examples": len(examples),
            "last_word_ppl": math.exp(-logp / max(tokens, 1)),
            "mode": "unidirectional" if unidirectional else "bidirectional"}  # fmt: skip


def sliding_windows(
    ids: Sequence[int], max_len: int, stride: int
) -> list[tuple[list[int], list[int]]]:
    """(context, scored tokens) windows over ``ids``: every token but the first is scored once.

    Each window scores up to ``stride`` tokens (at most ``max_len // 2``) given up to
    ``max_len - 1 - stride`` tokens before them, which leaves room for the blank; the first
    window predicts from one context token (spec §4.3).
    """
    stride = min(stride, max_len // 2)
    context_size = max_len - 1 - stride
    windows, start = [], 1
    while start < len(ids):
        windows.append(
            (list(ids[max(0, start - context_size) : start]), list(ids[start : start + stride]))
        )
        start += stride
    return windows


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    path: str | Path,
    *,
    stride: int = 256,
    max_seq_len: int | None = None,
    unidirectional: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    layout: PartBLayout | None = None,
) -> dict:
    """Sliding-window perplexity of a text file (token level, and the adjusted word level).

    ``layout``: Part-B positions (``blankfill.layout``); default: the model's, from its config."""
    check_at_least(stride=(stride, 1), batch_size=(batch_size, 1), max_seq_len=(max_seq_len, 4))
    model.eval()
    path = Path(path)
    text = read_utf8(path)
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"{path}: needs at least two tokens to score")
    max_len = min(max_seq_len or model.config.max_sequence_length,
                  model.config.max_sequence_length)  # fmt: skip
    windows = sliding_windows(ids, max_len, stride)
    windows = windows[:limit] if limit else windows
    logp, tokens = 0.0, 0
    for b in range(0, len(windows), batch_size):
        rows = windows[b : b + batch_size]
        if not unidirectional:
            rows = [(ctx + [_blank_id(tokenizer)], tgt) for ctx, tgt in rows]
        total, _ = _score_rows(model, rows, tokenizer, unidirectional, 1, layout)
        logp += float(total.sum())
        tokens += sum(len(t) for _, t in rows)
        if progress is not None:
            progress(len(rows))
    loss = -logp / tokens
    words = len(text.split())
    out = {"ppl": math.exp(loss), "loss": loss, "tokens": tokens, "windows": len(windows),
           "mode": "unidirectional" if unidirectional else "bidirectional"}  # fmt: skip
    if not limit and words > 1:
        out["word_ppl"] = math.exp(loss * (len(ids) - 1) / (words - 1))
    return out
