"""Seq2seq fine-tuning and ROUGE evaluation (spec §4.2).

Input: Part A = ``[CLS] source [gMASK] [eos]`` (``[MASK]`` for vocabularies without ``[gMASK]``),
the source truncated from the left; Part B = ``[sop] y_1 .. y_{n-1}`` with targets
``y_1 .. y_n [eop]`` at the blank's position. Loss: token cross-entropy with label smoothing
(``(1 - eps) * NLL + eps * mean over the vocabulary of -log p``), averaged over target tokens.
Evaluation decodes the blank with ``blankfill.generate`` (beam search settings of spec §4.2) and
scores ROUGE-1/2/L F1 with ``rouge-score`` (the optional ``eval`` extra, imported lazily).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config import FinetuneRunConfig
from ..device import resolve_device
from ..layout import PartBLayout, model_layout
from ..model import rows_from
from ..train.distributed import DistInfo
from .cloze import ClozeInput, collate, to_device
from .lm import check_at_least
from .loop import EvalContext, Recipe, train
from .readers import read_rows, read_utf8
from .runner import capped_length

log = logging.getLogger(__name__)


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(source, target) pairs from ``X.source`` + ``X.target`` (line by line) or a jsonl with
    ``source`` and ``target`` fields."""
    path = Path(path)
    if path.suffix in (".source", ".target"):
        src, tgt = path.with_suffix(".source"), path.with_suffix(".target")
        for p in (src, tgt):
            if not p.is_file():
                raise FileNotFoundError(f"seq2seq data needs both {src.name} and {tgt.name}: {p}")
        sources, targets = read_utf8(src).splitlines(), read_utf8(tgt).splitlines()
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


def seq2seq_loss(
    model, batch, label_smoothing: float = 0.1, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed token loss, its mean or sum, and the number of correct argmax tokens)."""
    first = batch.first_row  # the last block runs from the first [sop] on
    h = model.hidden(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask,
                     first_row=first)  # [B, T - first, D]  # fmt: skip
    sel = batch.target_index  # [N] flat target positions, from collate (host-side)
    logits = model.logits(h.flatten(0, 1)[rows_from(sel, batch.input_ids.shape[1], first)])
    logits = logits.float()  # [N, V]
    tgt = batch.targets.flatten()[sel]  # [N]
    loss = F.cross_entropy(logits, tgt, label_smoothing=label_smoothing, reduction=reduction)
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
    info: DistInfo | None = None,
    layout: PartBLayout | None = None,
) -> dict[str, Any]:
    """Fine-tune on (source, target) pairs; each epoch reports the validation loss and
    teacher-forced token accuracy (the best checkpoint is chosen by the accuracy). ``layout``:
    the model's Part-B positions (default: read from ``model.config``)."""
    require_pairs(valid_pairs, "validation data")
    ft = cfg.finetune
    info = info or DistInfo()
    device = resolve_device(ft.device, info.local_rank, key="finetune.device")
    rows = model.config.max_sequence_length
    src_len = capped_length(ft.max_seq_len or rows, model, "finetune.max_seq_len")
    tgt_len = min(ft.max_target_len, rows - 1)
    if ft.max_target_len > rows - 1:
        log.info("finetune.max_target_len=%d is capped to %d by the model", ft.max_target_len,
                 rows - 1)  # fmt: skip
    sp = tokenizer.special
    layout = model_layout(model, layout)
    train_xs = [encode_pair(tokenizer, s, t, src_len, tgt_len) for s, t in train_pairs]
    valid_xs = [encode_pair(tokenizer, s, t, src_len, tgt_len) for s, t in valid_pairs]

    def loss(glm, head, items) -> torch.Tensor:
        batch = to_device(collate(items, sp.sop, sp.pad, False, layout), device)
        return seq2seq_loss(glm, batch, ft.label_smoothing, reduction="sum")[0]

    def evaluate(ctx: EvalContext) -> dict[str, float]:
        # this rank's share, summed on the device, then over ranks: [loss sum, correct, count]
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        mine = ctx.shard(valid_xs)
        for i in range(0, len(mine), ft.eval_batch_size):
            batch = to_device(collate(mine[i : i + ft.eval_batch_size], sp.sop, sp.pad,
                                      False, layout), device)  # fmt: skip
            value, ok = ctx.run(lambda glm, head, b: seq2seq_loss(glm, b, 0.0, "sum"), batch)
            sums += torch.stack([value.double(), ok.double(), (batch.targets != -100).sum()])
        total, correct, count = ctx.sum(sums).tolist()
        return {"token_accuracy": correct / max(count, 1), "valid_loss": total / max(count, 1)}

    info_json = {"kind": "seq2seq", "max_seq_len": src_len, "max_target_len": tgt_len}
    recipe = Recipe(name="seq2seq", loss=loss, count=lambda items: sum(len(x.answers[0])
                    for x in items), evaluate=evaluate, info=info_json)  # fmt: skip
    return train(model, recipe, train_xs, cfg, epochs=ft.epochs or 10, batch_size=ft.batch_size
                 or 16, out_dir=out_dir, tokenizer=tokenizer, on_step=on_step, info=info,
                 device=device)  # fmt: skip


def require_pairs(
    pairs: Sequence[tuple[str, str]], what: str = "evaluation data", source: str = ""
) -> None:
    """Raise a one-line ValueError for no pairs or a pair without a target (nothing to score)."""
    if not pairs:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}the {what} has no examples; give a non-empty file")
    empty = [i for i, (_, t) in enumerate(pairs) if not t.strip()]
    if empty:
        raise ValueError(
            f"{len(empty)} of {len(pairs)} {what} pairs have an empty target (the first is pair "
            f"{empty[0] + 1}); scores need reference targets"
        )


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
    layout: PartBLayout | None = None,
    **decoding: Any,
) -> dict[str, Any]:
    """Generate each target (default: beam search, 5 beams, no-repeat 3-grams) and score ROUGE.

    ``layout``: the model's Part-B positions (default: read from ``model.config``)."""
    from ..generate import InfillIds, generate

    require_pairs(pairs)
    check_at_least(batch_size=(batch_size, 1), max_seq_len=(max_seq_len, 8))
    model.eval()
    rows = model.config.max_sequence_length
    src_len = capped_length(max_seq_len or rows, model, "max_seq_len")
    settings = {"strategy": "beam", "num_beams": 5, "no_repeat_ngram_size": 3, **decoding}
    ids = InfillIds.from_tokenizer(tokenizer)
    predictions = []
    for i in range(0, len(pairs), batch_size):
        prompts = [encode_source(tokenizer, s, src_len) for s, _ in pairs[i : i + batch_size]]
        for fills in generate(model, prompts, ids=ids, layout=layout, **settings):
            predictions.append(tokenizer.decode(list(fills[0].token_ids), skip_special_tokens=True))
    return {**rouge(predictions, [t for _, t in pairs]), "examples": len(pairs),
            "decoding": settings, "predictions": predictions[:5]}  # fmt: skip
