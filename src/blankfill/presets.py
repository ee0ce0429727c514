"""Model presets: the released GLM sizes (spec §1.10) and a tiny one for tests.

One source of truth, used by ``blankfill info``, ``convert`` and the shipped configs' test.
"""

from __future__ import annotations

from typing import Any

from .config import ModelConfig
from .configtools import ConfigError, nearest


def _preset(**kw: Any) -> ModelConfig:
    return ModelConfig(**kw)


#: The released sizes (spec §1.10) and a tiny one for tests. One source of truth (convert.py too).
PRESETS: dict[str, ModelConfig] = {
    "tiny": _preset(
        vocab_size=384, num_layers=2, hidden_size=64, num_attention_heads=4, max_sequence_length=64
    ),
    "glm-small": _preset(
        vocab_size=8192,
        num_layers=6,
        hidden_size=512,
        num_attention_heads=8,
        max_sequence_length=512,
    ),
    "glm-base": _preset(num_layers=12, hidden_size=768, num_attention_heads=12),
    "glm-large": _preset(num_layers=24, hidden_size=1024, num_attention_heads=16),
    "glm-roberta-large": _preset(
        vocab_size=50304, num_layers=24, hidden_size=1024, num_attention_heads=16
    ),
    "glm-2b": _preset(
        vocab_size=50304,
        num_layers=36,
        hidden_size=2048,
        num_attention_heads=32,
        max_sequence_length=1024,
    ),
    "glm-10b": _preset(
        vocab_size=50304,
        num_layers=48,
        hidden_size=4096,
        num_attention_heads=64,
        max_sequence_length=1024,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named model preset, with field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}{nearest(name, PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
