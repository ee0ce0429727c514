"""blankfill: GLM (General Language Model) pretraining with autoregressive blank infilling."""

from .config import ModelConfig, preset
from .model import GLM, KVCache, build_attention_mask, count_parameters

__version__ = "0.1.0"

__all__ = ["GLM", "KVCache", "ModelConfig", "build_attention_mask", "count_parameters", "preset"]
