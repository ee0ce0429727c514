"""Seq2seq fine-tuning and ROUGE evaluation (spec §4.2).

Input: Part A = ``[CLS] source [gMASK] [eos]`` (``[MASK]`` for vocabularies without ``[gMASK]``),
the source truncated from the left; Part B = ``[sop] y_1 .. y_{n-1}`` with targets
``y_1 .. y_n [eop]`` at the blank's position. Loss: token cross-entropy with label smoothing
(``(1 - eps) * NLL + eps * mean over the vocabulary of -log p``), averaged over target tokens.
Evaluation decodes the blank with ``blankfill.generate`` (beam search settings of spec §4.2) and
scores ROUGE-1/2/L F1 with ``rouge-score`` (the optional ``eval`` extra, imported lazily).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import FinetuneRunConfig
from ..device import resolve_device
from .cloze import ClozeInput, collate, to_device
from .loop import Recipe, train
from .readers import read_rows


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(source, target) pairs from ``X.source`` + ``X.target`` (line by line) or a jsonl with
    ``source`` and ``target`` fields."""
    path = Path(path)
    if path.suffix in (".source", ".target"):
        src, tgt = path.with_suffix(".source"), path.with_suffix(".target")
        for p in (src, tgt):
            if not p.is_file():
                raise FileNotFoundError(f"seq2seq data needs both {src.name} and {tgt.name}: {p}")
        sources = src.read_text(encoding="utf-8").splitlines()
        targets = tgt.read_text(encoding="utf-8").splitlines()
        if len(sources) != len(targets):
            raise ValueError(f"{src} has {len(sources)} lines but {tgt} has {len(targets)}")
        return list(zip(sources, targets, strict=True))
    pairs = []
    for where, row in read_rows(path, "jsonl"):
        for key in ("source", "target"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{where}: missing field {key!r} (a string)")
        pairs.append((row["source"], row["target"]))
    return pairs


def _blank(tokenizer) -> int:
    sp = tokenizer.special
    return sp.gmask if getattr(sp, "gmask", None) is not None else sp.mask


def encode_source(tokenizer, source: str, max_len: int) -> list[int]:
    """Part A: ``[CLS] source [gMASK] [eos]``, the source cut from the left to fit ``max_len``."""
    sp = tokenizer.special
    ids = tokenizer.encode(source)[-(max_len - 3) :] if max_len > 3 else []
    return [sp.cls, *ids, _blank(tokenizer), sp.eos]


def encode_pair(tokenizer, source: str, target: str, src_len: int, tgt_len: int) -> ClozeInput:
    part_a = encode_source(tokenizer, source, src_len)
    answer = tokenizer.encode(target)[: tgt_len - 1] + [tokenizer.special.eop]
    return ClozeInput(part_a=tuple(part_a), mask_pos=len(part_a) - 2, answers=(tuple(answer),),
                      target=0)  # fmt: skip


def seq2seq_loss(model, batch, label_smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed mean token loss, number of correct argmax tokens) of a collated batch."""
    h = model.hidden(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask)
    sel = batch.targets != -100  # [B, T]
    logits = model.logits(h[sel]).float()  # [N, V]
    tgt = batch.targets[sel]  # [N]
    loss = F.cross_entropy(logits, tgt, label_smoothing=label_smoothing)
    return loss, (logits.argmax(-1) == tgt).sum()


def finetune_seq2seq(
    model,
    tokenizer,
    train_pairs: Sequence[tuple[str, str]],
    valid_pairs: Sequence[tuple[str, str]],
    cfg: FinetuneRunConfig,
    *,
    out_dir=None,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune on (source, target) pairs; each epoch reports the validation loss and
    teacher-forced token accuracy (the best checkpoint is chosen by the accuracy)."""
    ft = cfg.finetune
    device = resolve_device(ft.device, key="finetune.device")
    model.to(device)
    rows = model.config.max_sequence_length
    src_len, tgt_len = min(ft.max_seq_len or rows, rows), min(ft.max_target_len, rows - 1)
    sp = tokenizer.special
    train_xs = [encode_pair(tokenizer, s, t, src_len, tgt_len) for s, t in train_pairs]
    valid_xs = [encode_pair(tokenizer, s, t, src_len, tgt_len) for s, t in valid_pairs]

    def loss(items) -> torch.Tensor:
        batch = to_device(collate(items, sp.sop, sp.pad, single_token=False), device)
        return seq2seq_loss(model, batch, ft.label_smoothing)[0]

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model.eval()
        total, correct, count = 0.0, 0, 0
        for i in range(0, len(valid_xs), ft.eval_batch_size):
            items = valid_xs[i : i + ft.eval_batch_size]
            batch = to_device(collate(items, sp.sop, sp.pad, single_token=False), device)
            n = int((batch.targets != -100).sum())
            value, ok = seq2seq_loss(model, batch, 0.0)
            total, correct, count = total + float(value) * n, correct + int(ok), count + n
        return {"token_accuracy": correct / max(count, 1), "valid_loss": total / max(count, 1)}

    info = {"kind": "seq2seq", "max_seq_len": src_len, "max_target_len": tgt_len}
    recipe = Recipe(name="seq2seq", loss=loss, evaluate=evaluate, info=info)
    return train(model, recipe, train_xs, cfg, epochs=ft.epochs or 10, batch_size=ft.batch_size
                 or 16, out_dir=out_dir, tokenizer=tokenizer, on_step=on_step)  # fmt: skip


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 (``rouge-score``, with its Porter stemmer)."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ValueError(
            "ROUGE needs the rouge-score package: pip install 'blankfill[eval]'"
        ) from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for k, s in scorer.score(ref, pred).items():
            sums[k] += s.fmeasure
    return {k: 100 * v / max(len(predictions), 1) for k, v in sums.items()}


@torch.no_grad()
def evaluate_seq2seq(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    max_seq_len: int | None = None,
    batch_size: int = 8,
    **decoding: Any,
) -> dict[str, Any]:
    """Generate each target (default: beam search, 5 beams, no-repeat 3-grams) and score ROUGE."""
    from ..generate import InfillIds, generate

    model.eval()
    rows = model.config.max_sequence_length
    src_len = min(max_seq_len or rows, rows)
    settings = {"strategy": "beam", "num_beams": 5, "no_repeat_ngram_size": 3, **decoding}
    ids = InfillIds.from_tokenizer(tokenizer)
    predictions = []
    for i in range(0, len(pairs), batch_size):
        prompts = [encode_source(tokenizer, s, src_len) for s, _ in pairs[i : i + batch_size]]
        for fills in generate(model, prompts, ids=ids, **settings):
            predictions.append(tokenizer.decode(list(fills[0].token_ids), skip_special_tokens=True))
    return {**rouge(predictions, [t for _, t in pairs]), "examples": len(pairs),
            "decoding": settings, "predictions": predictions[:5]}  # fmt: skip
