"""lm-evaluation-harness plug-in: GLM scored the GLM way (the ``harness`` extra, ``lm-eval``).

Importing this module registers :class:`BlankfillLM` under the harness model name ``blankfill``
(``lm_eval.simple_evaluate(model="blankfill", model_args="pretrained=DIR", ...)``); ``blankfill
lm-eval`` runs the harness with it. The installed harness (0.4.x) discovers models by import
only, not by entry points.

The three request types:
- ``loglikelihood(context, continuation)``: the continuation is Part B after a Part A of
  ``[CLS] context [gMASK]``, which the model reads bidirectionally (GLM §2.3; the paper's
  LAMBADA "bidirectional" setting). The requests that share a context share one Part A: their
  continuations are segments of one row, each seeing Part A and itself only (the multi-token
  cloze layout of :mod:`blankfill.finetune.cloze`), so Part A is encoded once per context.
  ``unidirectional=true`` scores causally instead: ``[CLS] context continuation`` left to right.
  The score is the sum of the continuation's token log-probs, [eop] excluded; ``is_greedy`` is
  True when every token is the argmax.
- ``loglikelihood_rolling(text)``: the sliding-window perplexity of
  :func:`blankfill.finetune.lm.sliding_windows` over ``[CLS] text``, so every text token is
  scored once; windows of ``max_length`` tokens advance by ``stride``.
- ``generate_until(context, gen_kwargs)``: the blank of ``[CLS] context [gMASK]`` is filled
  (greedy, or sampled with ``do_sample``) for up to ``max_gen_toks`` tokens; the fill is cut at
  the first of the ``until`` strings. Requests with equal settings are decoded as one batch.

A context ending in whitespace gives the whitespace to its continuation, as the harness's own
models do. Contexts too long for the model are cut from the left.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .config import DecodingConfig
from .device import resolve_device
from .finetune.cloze import ClozeInput, collate, to_device
from .finetune.lm import _score_rows, sliding_windows
from .folder import load_model_and_tokenizer
from .generate import InfillIds, generate
from .layout import model_layout
from .model import GLM

log = logging.getLogger(__name__)

MODEL_NAME = "blankfill"


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return bool(value)


@register_model(MODEL_NAME)
class BlankfillLM(LM):
    """A blankfill GLM behind the harness's ``LM`` API.

    Args:
        pretrained: a model folder (``save_pretrained``, or an official one with its tokenizer).
        model, tokenizer: an already loaded model and tokenizer (instead of ``pretrained``).
        unidirectional: score ``loglikelihood`` left to right instead of as Part B.
        batch_size: rows per forward pass (one row per distinct context).
        max_length: longest sequence (default: the model's ``max_sequence_length``).
        stride: tokens scored per window in ``loglikelihood_rolling`` (default ``max_length // 2``).
        device: where the model runs (``cpu``, ``cuda``, ...).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        model: GLM | None = None,
        tokenizer: Any = None,
        unidirectional: bool | str = False,
        batch_size: int | str = 8,
        max_length: int | None = None,
        stride: int | None = None,
        device: str | None = None,
        max_batch_size: int | None = None,  # accepted for the harness; batches are fixed
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown blankfill model argument(s) {', '.join(sorted(unknown))}; valid: "
                "pretrained, unidirectional, batch_size, max_length, stride, device"
            )
        if (pretrained is None) == (model is None):
            raise ValueError("give either pretrained=DIR or model= and tokenizer=")
        where = resolve_device(device, key="device") if device else None
        if model is None:
            model, tokenizer = load_model_and_tokenizer(pretrained, device=where or "cpu")
        elif tokenizer is None:
            raise ValueError("model= needs tokenizer= too")
        elif where is not None:
            model.to(where)
        if str(batch_size).startswith("auto"):
            batch_size = 8
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.unidirectional = _flag(unidirectional)
        self.glm = model.eval()
        self.tok = tokenizer
        limit = model.config.max_sequence_length
        self.max_length = min(int(max_length or limit), limit)
        self.stride = int(stride or self.max_length // 2)
        sp = tokenizer.special
        self.blank = sp.gmask if sp.gmask is not None else sp.mask
        self.name = str(pretrained) if pretrained else "blankfill"
        self.ban = torch.zeros(model.config.vocab_size, device=model.word_embeddings.weight.device)
        self.ban[list(InfillIds.from_tokenizer(tokenizer).banned)] = float("-inf")

    @property
    def tokenizer_name(self) -> str:
        return self.name

    # ---- loglikelihood -------------------------------------------------------------------------

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        return self.tok.encode(context) if context else [], self.tok.encode(continuation)

    def part_a(self, context_ids: Sequence[int], longest_continuation: int) -> list[int]:
        """``[CLS] context [gMASK]`` cut from the left so the longest continuation fits."""
        room = self.max_length - 2 - longest_continuation
        if room < 0:
            raise ValueError(
                f"a continuation of {longest_continuation} tokens does not fit max_length="
                f"{self.max_length}"
            )
        ctx = list(context_ids)[max(0, len(context_ids) - room) :]
        return [self.tok.special.cls, *ctx, self.blank]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        return self.score_pairs(pairs)

    @torch.no_grad()
    def score_pairs(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[tuple[float, bool]]:
        """(sum of log-probs, all tokens greedy) of each (context ids, continuation ids)."""
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        todo = []
        for i, (_, cont) in enumerate(pairs):
            if not cont:
                out[i] = (0.0, True)
            else:
                todo.append(i)
        if self.unidirectional:
            self._causal(pairs, todo, out)
        else:
            self._part_b(pairs, todo, out)
        assert all(o is not None for o in out), "a request was not scored"
        return out  # type: ignore[return-value]

    def _targets(
        self, logits: torch.Tensor, tgt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of each target [N] and whether it is not the greedy choice [N].

        Greedy is taken over the ids generation may produce (``InfillIds.banned`` excluded), so
        ``is_greedy`` means what the plug-in's own ``generate_until`` would have chosen.
        """
        logp = F.log_softmax(logits, -1).gather(1, tgt[:, None])[:, 0]
        return logp, ((logits + self.ban).argmax(-1) != tgt).float()

    def _causal(self, pairs, todo: list[int], out: list) -> None:
        sp, device = self.tok.special, self.glm.word_embeddings.weight.device
        rows = []
        for i in todo:
            ctx, cont = pairs[i]
            room = self.max_length - len(cont)
            if room < 1:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length")
            rows.append((i, [sp.cls, *ctx][-room:], list(cont)))
        rows.sort(key=lambda r: -len(r[1]) - len(r[2]))
        for b in range(0, len(rows), self.batch_size):
            chunk = rows[b : b + self.batch_size]
            T = max(len(c) + len(x) for _, c, x in chunk)
            ids = torch.full((len(chunk), T), sp.pad, dtype=torch.long)
            targets = torch.full_like(ids, -100)
            for r, (_, c, x) in enumerate(chunk):
                ids[r, : len(c) + len(x)] = torch.tensor(c + x)
                targets[r, len(c) - 1 : len(c) - 1 + len(x)] = torch.tensor(x)
            ones = torch.ones(len(chunk), dtype=torch.long, device=device)
            h = self.glm.hidden(ids.to(device), context_len=ones)  # causal: Part A = [CLS]
            self._collect(h, targets.to(device), None, [[i] for i, _, _ in chunk], out)

    def _part_b(self, pairs, todo: list[int], out: list) -> None:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in todo:
            groups[tuple(pairs[i][0])].append(i)
        budget = 4 * self.max_length  # row length: Part A + every continuation of the context
        rows: list[tuple[list[int], ClozeInput]] = []
        for ctx, members in groups.items():
            chunk: list[int] = []
            for i in [*members, None]:
                n = sum(len(pairs[j][1]) for j in chunk)
                if chunk and (i is None or n + len(pairs[i][1]) > budget):
                    a = self.part_a(ctx, max(len(pairs[j][1]) for j in chunk))
                    answers = tuple(tuple(pairs[j][1]) for j in chunk)
                    rows.append((chunk, ClozeInput(part_a=tuple(a), mask_pos=len(a) - 1,
                                                   answers=answers, target=-1)))  # fmt: skip
                    chunk = []
                if i is not None:
                    chunk.append(i)
        rows.sort(key=lambda r: -len(r[1].part_a) - sum(map(len, r[1].answers)))
        sp, device = self.tok.special, self.glm.word_embeddings.weight.device
        for b in range(0, len(rows), self.batch_size):
            chunk = rows[b : b + self.batch_size]
            xs = [x for _, x in chunk]
            batch = to_device(collate(xs, sp.sop, sp.pad, False, model_layout(self.glm)), device)
            f = batch.first_row  # the last block runs from the first [sop] on
            h = self.glm.hidden(
                batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask,
                first_row=f,
            )  # [B, T - f, D]  # fmt: skip
            members = [m for m, _ in chunk]
            self._collect(h, batch.targets[:, f:], batch.candidate[:, f:], members, out)

    def _collect(self, h, targets, candidate, members: list[list[int]], out: list) -> None:
        """Sum the target log-probs per (row, candidate) into ``out[request]``.

        h [B, T, D]; targets [B, T] (-100: not scored); candidate [B, T] or None (one per row).
        """
        sel = targets != -100  # [B, T]
        logp, wrong = self._targets(self.glm.logits(h[sel]).float(), targets[sel])  # [N]
        C = max(map(len, members))
        row = torch.arange(len(members), device=h.device)[:, None].expand_as(targets)[sel]
        slot = row * C + (candidate[sel] if candidate is not None else 0)  # [N]
        total = torch.zeros(len(members) * C, device=h.device).index_add(0, slot, logp)
        errors = torch.zeros(len(members) * C, device=h.device).index_add(0, slot, wrong)
        for r, requests in enumerate(members):
            for k, i in enumerate(requests):
                out[i] = (float(total[r * C + k]), bool(errors[r * C + k] == 0))

    # ---- loglikelihood_rolling -----------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[int, list[int], list[int]]] = []
        for n, r in enumerate(requests):
            ids = [self.tok.special.cls, *self.tok.encode(r.args[0])]
            windows += [(n, c, t) for c, t in sliding_windows(ids, self.max_length, self.stride)]
        totals = [0.0] * len(requests)
        for b in range(0, len(windows), self.batch_size):
            chunk = windows[b : b + self.batch_size]
            if self.unidirectional:
                rows = [(c, t) for _, c, t in chunk]
            else:
                rows = [([*c, self.blank], t) for _, c, t in chunk]
            total, _ = _score_rows(self.glm, rows, self.tok, self.unidirectional)
            for (n, _, _), t in zip(chunk, total.tolist(), strict=True):
                totals[n] += t
        return totals

    # ---- generate_until ------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            groups[json.dumps(r.args[1], sort_keys=True, default=str)].append(i)
        ids = InfillIds.from_tokenizer(self.tok)
        for key, members in groups.items():
            cfg, until = self._decoding(json.loads(key))
            for b in range(0, len(members), self.batch_size):
                chunk = members[b : b + self.batch_size]
                prompts = []
                for i in chunk:
                    ctx = self.tok.encode(requests[i].args[0])
                    prompts.append(self.part_a(ctx, 0))
                fills = generate(self.glm, prompts, ids=ids, decoding=cfg)
                for i, row in zip(chunk, fills, strict=True):
                    text = self.tok.decode(row[0].token_ids, skip_special_tokens=True)
                    out[i] = _cut(text, until)
        return out  # type: ignore[return-value]

    def _decoding(self, kw: dict[str, Any]) -> tuple[DecodingConfig, list[str]]:
        until = kw.get("until", [])
        until = [until] if isinstance(until, str) else list(until or [])
        new = min(int(kw.get("max_gen_toks", 256)), self.glm.config.max_sequence_length - 1)
        if kw.get("do_sample") and float(kw.get("temperature", 1.0)) > 0:
            cfg = DecodingConfig(
                strategy="sample",
                max_new_tokens=new,
                temperature=float(kw.get("temperature", 1.0)),
                top_k=int(kw.get("top_k") or 0),
                top_p=float(kw.get("top_p") or 1.0),
                seed=kw.get("seed"),
            )
        else:
            cfg = DecodingConfig(max_new_tokens=new)
        return cfg, until


def _cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first of the stop strings."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def evaluate(
    model: str | Path | BlankfillLM,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    unidirectional: bool = False,
    builtin_tasks: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Run the harness's ``simple_evaluate`` on a blankfill model; returns its results dict.

    Args:
        model: a model folder, or a :class:`BlankfillLM`.
        tasks: harness task names (built-in, or defined by YAML files under ``include_path``).
        builtin_tasks: also index the harness's own tasks (False: only ``include_path``, faster).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = (
        model
        if isinstance(model, BlankfillLM)
        else BlankfillLM(
            str(model), batch_size=batch_size, unidirectional=unidirectional, device=device
        )
    )
    manager = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=builtin_tasks
    )
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        log_samples=False,
    )
    if results is None:
        raise RuntimeError("the harness returned no results")
    return results
