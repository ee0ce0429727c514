"""Logit filters for decoding: pure functions ``(logits [N, V], fill so far [N, t], settings,
stop ids [S]) -> logits [N, V]``, looked up by name in ``FILTERS``.

*Processors* (repetition penalty, no-repeat n-gram, minimum length) shape the scores of every
strategy (for beam search they act on log-probabilities, as HF's logits processors do);
*warpers* (temperature, top-k, top-p) only shape sampling. "The fill so far" is the tokens
generated for the current blank, so penalties look inside one fill, never at the prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import DecodingConfig

LogitFilter = Callable[[Tensor, Tensor, DecodingConfig, Tensor], Tensor]


def repetition_penalty(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    """CTRL penalty (Keskar et al. 2019): divide positive / multiply negative seen-token logits."""
    if fill.shape[1] == 0:
        return logits
    seen = logits.gather(1, fill)  # [N, t]
    p = cfg.repetition_penalty
    return logits.scatter(1, fill, torch.where(seen > 0, seen / p, seen * p))


def no_repeat_ngram(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    """Ban every token that would complete an n-gram already present in the fill."""
    n, t = cfg.no_repeat_ngram_size, fill.shape[1]
    if t + 1 < n:
        return logits
    banned = torch.zeros_like(logits, dtype=torch.bool)
    for row, seq in enumerate(fill.tolist()):
        prefix = tuple(seq[t - n + 1 :]) if n > 1 else ()
        for i in range(t - n + 1):
            if tuple(seq[i : i + n - 1]) == prefix:
                banned[row, seq[i + n - 1]] = True
    return logits.masked_fill(banned, float("-inf"))


def min_length(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    """Ban the stop ids until the fill holds ``min_length`` tokens."""
    if fill.shape[1] >= cfg.min_length:
        return logits
    return logits.index_fill(1, stop, float("-inf"))


def temperature(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    return logits / cfg.temperature


def top_k(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    """Keep the ``top_k`` largest logits of each row."""
    k = min(cfg.top_k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[:, -1:]  # [N, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: Tensor, fill: Tensor, cfg: DecodingConfig, stop: Tensor) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): the smallest set holding ``top_p`` of the mass."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > cfg.top_p  # mass before the token already exceeds p
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


#: name -> filter. Processors shape every strategy's scores; warpers only sampling's.
FILTERS: dict[str, LogitFilter] = {
    "repetition_penalty": repetition_penalty,
    "no_repeat_ngram": no_repeat_ngram,
    "min_length": min_length,
    "temperature": temperature,
    "top_k": top_k,
    "top_p": top_p,
}


def active_filters(cfg: DecodingConfig) -> tuple[list[LogitFilter], list[LogitFilter]]:
    """(processors, warpers) that change anything under ``cfg``, in application order."""
    on = {
        "repetition_penalty": cfg.repetition_penalty != 1.0,
        "no_repeat_ngram": cfg.no_repeat_ngram_size > 0,
        "min_length": cfg.min_length > 0,
        "temperature": cfg.strategy == "sample" and cfg.temperature != 1.0,
        "top_k": cfg.strategy == "sample" and cfg.top_k > 0,
        "top_p": cfg.strategy == "sample" and cfg.top_p < 1.0,
    }
    names = [n for n in FILTERS if on[n]]
    procs = [
        FILTERS[n] for n in names if n in ("repetition_penalty", "no_repeat_ngram", "min_length")
    ]
    warps = [FILTERS[n] for n in names if n in ("temperature", "top_k", "top_p")]
    return procs, warps
