"""A model folder with its tokenizer: loading both and checking that they belong together.

``load_model_and_tokenizer(path)`` is the one way commands (fill, finetune, evaluate, serve ...)
open a model folder for use. ``blankfill convert`` copies folders without building a model
(``convert_folder``, so dtypes are kept) and reads tokenizers with the same
``load_folder_tokenizer``; both live in ``blankfill.pretrained`` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .model import GLM
from .pretrained import convert_folder, load_folder_tokenizer, load_pretrained
from .tokenizer import Tokenizer
from .train.checkpoint import model_folder


def check_compatible(model: GLM, tokenizer: Tokenizer, reference: Tokenizer | None = None) -> None:
    """Raise a one-line ValueError unless ``tokenizer`` belongs to ``model``.

    Args:
        reference: the tokenizer saved with the model, if any; its special ids must agree.
    """
    V = model.config.vocab_size
    if tokenizer.padded_vocab_size != V:
        raise ValueError(
            f"tokenizer and model do not belong together: the tokenizer's padded vocabulary is "
            f"{tokenizer.padded_vocab_size} rows but the model has {V}; use the tokenizer saved "
            "with the model"
        )
    if reference is not None and reference.special != tokenizer.special:
        diff = [
            f"{k} {v} vs {reference.special.to_dict()[k]}"
            for k, v in tokenizer.special.to_dict().items()
            if v != reference.special.to_dict()[k]
        ]
        raise ValueError(
            "tokenizer and model do not belong together: special ids differ from the tokenizer "
            f"saved with the model ({', '.join(diff)})"
        )
    fingerprint = getattr(tokenizer, "fingerprint", None)
    if reference is not None and fingerprint is not None and hasattr(reference, "fingerprint"):
        if fingerprint() != reference.fingerprint():  # same size, other vocabulary: garbage out
            raise ValueError(
                "tokenizer and model do not belong together: it is not the tokenizer saved with "
                f"the model (fingerprints {fingerprint()[:12]} vs {reference.fingerprint()[:12]}); "
                "leave out --tokenizer to use the saved one"
            )


def load_model_and_tokenizer(
    path: str | Path,
    tokenizer: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> tuple[GLM, Tokenizer]:
    """A model folder's GLM (eval mode, on ``device``) and its tokenizer, checked to fit.

    Args:
        path: a folder ``load_pretrained`` reads, or a pretraining run folder (its newest
            checkpoint whose files verify is used).
        tokenizer: a tokenizer folder to use instead of the one saved in ``path`` (it must be
            that one, by fingerprint, when ``path`` has one).
        device: where the model goes.
        **overrides: model config fields to replace (``gelu="erf"``).
    """
    path = model_folder(path)
    model = load_pretrained(path, **overrides)
    saved = load_folder_tokenizer(path)
    if tokenizer is None and saved is None:
        raise ValueError(
            f"no tokenizer files in {path}: save the model with its tokenizer "
            "(save_pretrained(model, dir, tokenizer)) or name a tokenizer folder"
        )
    tok = saved if tokenizer is None else _load_tokenizer_folder(tokenizer)
    check_compatible(model, tok, reference=saved)
    return model.to(device), tok


def _load_tokenizer_folder(path: str | Path) -> Tokenizer:
    tok = load_folder_tokenizer(path)
    if tok is None:
        raise ValueError(f"no tokenizer files in {path}")
    return tok


__all__ = [
    "check_compatible",
    "convert_folder",
    "load_folder_tokenizer",
    "load_model_and_tokenizer",
]
