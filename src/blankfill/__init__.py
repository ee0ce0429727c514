"""blankfill: GLM (General Language Model) pretraining with autoregressive blank infilling."""

from .config import DecodingConfig, ModelConfig
from .filling import BlankFiller, FillResult, fill
from .generate import Fill, InfillIds, generate
from .kv_cache import KVCache
from .model import GLM, build_attention_mask, count_parameters
from .presets import preset
from .pretrained import load_pretrained, save_pretrained
from .tokenizer import SpecialTokens, Tokenizer, load_tokenizer, train_tokenizer

__version__ = "0.1.0"

__all__ = [
    "BlankFiller",
    "DecodingConfig",
    "Fill",
    "FillResult",
    "GLM",
    "InfillIds",
    "KVCache",
    "ModelConfig",
    "SpecialTokens",
    "Tokenizer",
    "build_attention_mask",
    "count_parameters",
    "fill",
    "generate",
    "load_pretrained",
    "load_tokenizer",
    "preset",
    "save_pretrained",
    "train_tokenizer",
]
