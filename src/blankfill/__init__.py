"""blankfill: GLM (General Language Model) pretraining with autoregressive blank infilling."""

from .config import ModelConfig, preset
from .model import GLM, KVCache, build_attention_mask, count_parameters
from .tokenizer import SpecialTokens, Tokenizer, load_tokenizer, train_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GLM",
    "KVCache",
    "ModelConfig",
    "SpecialTokens",
    "Tokenizer",
    "build_attention_mask",
    "count_parameters",
    "load_tokenizer",
    "preset",
    "train_tokenizer",
]
