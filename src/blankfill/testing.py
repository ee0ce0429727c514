"""Helpers shipped for tests (ours and users'): tiny configs and reference computations."""

from __future__ import annotations

import torch

from .config import ModelConfig
from .presets import preset


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


class SyntheticBatches:
    """A resumable stream of small, learnable GLM ``Batch``es (one masked span per row).

    Each row is an arithmetic run of token ids with one span replaced by ``[MASK]`` (Part A) and
    the span to fill after ``[sop]`` (Part B), the way ``blankfill.data`` lays samples out. Batch
    ``k`` of this rank is global micro-batch ``k * world_size + rank``, built only from
    ``(seed, global index)``: ``world_size`` ranks see what one process sees with
    ``grad_accum = world_size``. ``state_dict()`` / ``load_state_dict()`` resume it exactly.

    Args:
        batch_size: rows per micro-batch.
        seq_len: tokens of "text" per row (before the span moves to Part B).
        seed: the stream's seed.
        rank, world_size: which share of the global stream this is.
        repeat: yield global batch 0 forever (for overfitting tests).
        vocab: token ids are drawn below this (specials sit above it).
    """

    MASK, SOP, EOP = 260, 261, 262

    def __init__(
        self,
        batch_size: int = 4,
        seq_len: int = 24,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = False,
        vocab: int = 64,
    ) -> None:
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size, self.repeat, self.vocab = rank, world_size, repeat, vocab
        self.index = 0

    def __iter__(self) -> SyntheticBatches:
        return self

    def __next__(self):
        g = 0 if self.repeat else self.index * self.world_size + self.rank
        self.index += 1
        return self.batch(g)

    def state_dict(self) -> dict:
        """This rank's position and the global one (micro-batches of all ranks consumed)."""
        return {"index": self.index, "consumed": self.index * self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume; on another world size from the global position (like ``PretrainLoader``)."""
        consumed = int(state.get("consumed", int(state["index"]) * self.world_size))
        assert consumed % self.world_size == 0, f"{consumed} batches do not split over ranks"
        self.index = consumed // self.world_size

    def batch(self, g: int):
        import numpy as np

        from .data.batch import Batch

        rows = []
        for r in range(self.batch_size):
            rng = np.random.default_rng([self.seed, g, r])
            start, step = int(rng.integers(self.vocab)), int(rng.integers(1, 4))
            text = [(start + step * i) % self.vocab + 1 for i in range(self.seq_len)]
            k = int(rng.integers(1, 6))
            a = int(rng.integers(1, self.seq_len - k))
            part_a = text[:a] + [self.MASK] + text[a + k :]
            span = text[a : a + k]
            ids = part_a + [self.SOP] + span
            labels = [0] * len(part_a) + span + [self.EOP]
            pos = list(range(len(part_a))) + [a] * (k + 1)
            block = [0] * len(part_a) + list(range(1, k + 2))
            loss = [0.0] * len(part_a) + [1.0] * (k + 1)
            obj = [-1] * len(part_a) + [(g + r) % 3] * (k + 1)
            rows.append((ids, labels, pos, block, loss, obj, len(part_a)))
        T = max(len(row[0]) for row in rows)

        def pad(i: int, fill, dtype):
            return torch.tensor([row[i] + [fill] * (T - len(row[i])) for row in rows], dtype=dtype)

        return Batch(
            input_ids=pad(0, 0, torch.long),
            labels=pad(1, 0, torch.long),
            loss_mask=pad(4, 0.0, torch.float),
            position_ids=torch.stack([pad(2, 0, torch.long), pad(3, 0, torch.long)], dim=1),
            objective=pad(5, -1, torch.long),
            sample_index=torch.arange(self.batch_size) + g * self.batch_size,
            context_len=torch.tensor([row[6] for row in rows]),
        )
