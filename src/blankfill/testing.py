"""Helpers shipped for tests (ours and users'): tiny configs and reference computations."""

from __future__ import annotations

import torch

from .config import ModelConfig, preset


def tiny_config(**overrides) -> ModelConfig:
    """2 layers, d 64, 4 heads, seq 64, no dropout: a model that runs in milliseconds on a CPU."""
    base = dict(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0)
    return preset("tiny", **{**base, **overrides})


def brute_force_mask(context_len: list[int], T: int) -> torch.Tensor:
    """The GLM mask by the definition, one entry at a time: [B, 1, T, T] bool."""
    out = torch.zeros(len(context_len), 1, T, T, dtype=torch.bool)
    for b, sep in enumerate(context_len):
        for i in range(T):
            for j in range(T):
                out[b, 0, i, j] = j < sep or j <= i
    return out
