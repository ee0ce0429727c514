"""The batch the trainer consumes (one layout for padded and packed rows)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

#: Objective ids used in ``Batch.objective`` (per-objective losses are logged under these names).
OBJECTIVES = ("MASK", "sMASK", "gMASK")


@dataclass
class Batch:
    """A micro-batch of GLM samples.

    Attributes:
        input_ids: LongTensor [B, T]: Part A then Part B (then padding).
        labels: LongTensor [B, T], already shifted: the label at t is the next Part-B token.
        loss_mask: FloatTensor [B, T]: 1 on target tokens, 0 on Part A and padding.
        position_ids: LongTensor [B, 2, T]: position, block position.
        objective: LongTensor [B, T]: index into ``OBJECTIVES`` per target token, -1 elsewhere.
        sample_index: LongTensor [B]: global index of (the first) sample in each row.
        context_len: LongTensor [B] | None: |Part A| per row (padded layout).
        attention_mask: BoolTensor [B, 1, T, T] | None: explicit mask (packed layout).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    objective: torch.Tensor
    sample_index: torch.Tensor
    context_len: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum().item())
