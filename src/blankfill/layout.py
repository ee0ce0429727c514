"""Where a pretrained model expects Part B: the position ids of a span's tokens (spec §1.2).

Pretraining (``blankfill.data.corrupt.build_blocks`` and ``build_suffix``) gives the tokens of a
span in Part B, ``[sop] y_1 .. y_{L}``, the position ids (row 0, row 1):

- 2D, the default (GLM §2.3): (``m``, 1 .. L+1), ``m`` the Part-A index of the span's blank.
- 1D (``model.block_position_encoding=false``, official ``--no-block-position``): (``m``, 1); the
  model reads row 0 only, so a Part-B token knows its blank's place but not its offset in the span.
- sentinel (``corrupt.sentinels > 0``, official ``--sentinel-token``): a span whose blank is a
  token-level one (``[MASK]``, or a sentinel ``[MASK_i]``) sits at position ``context_len``
  (|Part A|; officially max_seq_len) wherever its blank is; only the blank's identity links them.
  A single span is blanked by ``[MASK]`` and opened by ``[sop]`` (sentinels start at the second
  span in Part B); ``[sMASK]``/``[gMASK]`` spans keep their blank's position.

Everything that uses a model after pretraining builds its Part-B ids here, so the model sees its
own layout: perplexity and last-word accuracy through a blank (``finetune.lm``), cloze and seq2seq
fine-tuning and scoring (``finetune.cloze.collate``), and blank filling, where each new token of
the KV-cache decoder takes ``positions(anchor, n)[:, :, t]`` (``decoding``, ``generate``).
``PartBLayout.of(model_config)`` reads 1D/2D from the model; the sentinel rule is in the run's
``corrupt`` section, so it is given with it: ``PartBLayout.of(model_config, corrupt, special)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import CorruptConfig, ModelConfig


@dataclass(frozen=True, kw_only=True)
class PartBLayout:
    """The Part-B position rule of one pretrained model (see the module docstring)."""

    block_positions: bool = True  # 2D: block positions 1..L+1; False (1D): 1 on all of Part B
    sentinel_blanks: tuple[int, ...] = ()  # blank ids whose span sits at position context_len

    @classmethod
    def of(
        cls, model: ModelConfig, corrupt: CorruptConfig | None = None, special: Any = None
    ) -> PartBLayout:
        """The layout a model of ``model`` was pretrained with (under ``corrupt``, if given).

        Args:
            model: its config; ``block_position_encoding`` decides 1D or 2D.
            corrupt: its pretraining corruption; ``sentinels > 0`` places token-level spans at
                ``context_len``; ``block_positions=false`` is 1D as well.
            special: the tokenizer's special ids (``special.mask``), needed with sentinels.
        """
        sentinel: tuple[int, ...] = ()
        # A run config keeps corrupt.block_positions equal to the model's flag; a model pretrained
        # with 1D data but a block table (block position 1 on Part B) is 1D here too.
        block = model.block_position_encoding and (corrupt is None or corrupt.block_positions)
        if corrupt is not None and corrupt.sentinels > 0:
            if special is None:
                raise ValueError("a sentinel layout needs the tokenizer's special ids ([MASK])")
            start = corrupt.sentinel_start
            sentinel = (int(special.mask), *range(start, start + corrupt.sentinels))
        return cls(block_positions=block, sentinel_blanks=sentinel)

    def anchor(
        self,
        blank_pos: torch.Tensor,
        context_len: torch.Tensor | int,
        blank_id: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Row 0 of every token of each span: [N] (its blank's index, or ``context_len``).

        Args:
            blank_pos: LongTensor [N], the Part-A index of each span's blank.
            context_len: |Part A| of each span's sample, int or LongTensor [N].
            blank_id: LongTensor [N], each span's blank token (needed with sentinels).
        """
        if not self.sentinel_blanks:
            return blank_pos
        assert blank_id is not None, "a sentinel layout needs the blank id of each span"
        detached = torch.isin(blank_id, torch.tensor(self.sentinel_blanks, device=blank_id.device))
        ctx = torch.as_tensor(context_len, device=blank_pos.device).expand_as(blank_pos)
        return torch.where(detached, ctx, blank_pos)

    def positions(self, anchor: torch.Tensor, n: int) -> torch.Tensor:
        """Position ids [N, 2, n] of the first ``n`` Part-B tokens of each span (``[sop]`` first).

        Args:
            anchor: LongTensor [N], from ``anchor``.
            n: tokens per span.
        """
        N = anchor.shape[0]
        if self.block_positions:
            block = torch.arange(1, n + 1, device=anchor.device).expand(N, n)
        else:
            block = torch.ones(N, n, dtype=torch.long, device=anchor.device)
        return torch.stack([anchor[:, None].expand(N, n), block], 1)


def model_layout(model: Any, layout: PartBLayout | None = None) -> PartBLayout:
    """``layout``, or the one read from ``model.config`` (1D or 2D, no sentinels)."""
    return layout if layout is not None else PartBLayout.of(model.config)
