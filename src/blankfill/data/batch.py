"""The batch the trainer consumes (one layout for padded and packed rows)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
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
        attention_mask: BoolTensor [B, 1, T, T] | None: an explicit mask (fine-tuning batches
            built by hand; the loader's layouts carry one of the compact forms).
        segment_ids: IntTensor [B, T] | None: packed layout: the sample of the row each token
            belongs to (every padding token a segment of its own).
        context_end: IntTensor [B, T] | None: packed layout: the row index where the Part A of
            each token's sample ends. The model expands both to the mask on the device
            (``model.build_segment_mask``).
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    objective: torch.Tensor
    sample_index: torch.Tensor
    context_len: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    context_end: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``; from pinned memory the copies are asynchronous (stream-ordered,
        so the kernels that read them still see the data)."""
        return Batch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).to(device, non_blocking=True)
                for f in fields(self)
            }
        )

    def pin_memory(self) -> Batch:
        """The same batch in page-locked memory (``DataLoader(pin_memory=True)`` calls this), so
        ``to(device, non_blocking=True)`` copies asynchronously."""
        return Batch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).pin_memory()
                for f in fields(self)
            }
        )

    def to_buffer(self) -> tuple[tuple, np.ndarray]:
        """The batch as one byte buffer and a small layout (for passing between processes).

        One buffer costs one transfer; seven tensors cost seven shared-memory segments, which
        took longer than a glm-small GPU step. Inverse: ``Batch.from_buffer``.
        """
        layout, parts, offset = [], [], 0
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                layout.append((f.name, None, None, 0))
                continue
            a = np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8)
            layout.append((f.name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
            pad = -len(a) % 8  # keep every field 8-byte aligned
            parts += [a, np.zeros(pad, np.uint8)]
            offset += len(a) + pad
        return tuple(layout), np.concatenate(parts)

    @staticmethod
    def from_buffer(layout: tuple, buffer: np.ndarray | torch.Tensor) -> Batch:
        """The batch of ``to_buffer``, as views of ``buffer`` (uint8; pinned stays pinned)."""
        buf = torch.as_tensor(buffer)
        out = {}
        for name, dtype, shape, offset in layout:
            if dtype is None:
                out[name] = None
                continue
            dt = getattr(torch, dtype)
            n = math.prod(shape) * dt.itemsize
            out[name] = buf[offset : offset + n].view(dt).view(shape)
        return Batch(**out)

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask.sum().item())
