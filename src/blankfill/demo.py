"""``make demo``: what exists end to end (replaced by the full quickstart with pretraining)."""

from __future__ import annotations

import torch

from .model import GLM
from .testing import tiny_config


def main() -> int:
    torch.manual_seed(0)
    model = GLM(tiny_config()).eval()
    text = "The quick brown fox jumps over the lazy dog."
    ids = torch.tensor([list(text.encode())])  # bytes as ids: the tiny model has 384 rows
    with torch.no_grad():
        logits = model(ids, context_len=ids.shape[1])
    print(f"tiny GLM: {sum(p.numel() for p in model.parameters()):,} parameters")
    print(f"forward on {ids.shape[1]} byte tokens -> logits {tuple(logits.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
