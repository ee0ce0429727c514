"""A model folder with its tokenizer: loading both, checking they belong together, converting.

``load_model_and_tokenizer(path)`` is the one way commands (fill, finetune, evaluate, convert,
serve ...) open a model folder. Tokenizers: ours (``tokenizer.json`` + ``special_tokens.json``) or
the official files (BERT ``vocab.txt``, GPT-2/RoBERTa ``vocab.json`` + ``merges.txt``, the
Chinese SentencePiece model).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from . import convert
from .config import ConfigError
from .model import GLM
from .pretrained import (
    CONFIG_NAME,
    HUB_CODE_FILES,
    OFFICIAL_TOKENIZER_FILES,
    OUR_TOKENIZER_FILES,
    load_pretrained,
    read_checkpoint,
    save_state,
)
from .tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


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


def load_model_and_tokenizer(
    path: str | Path,
    tokenizer: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    **overrides: Any,
) -> tuple[GLM, Tokenizer]:
    """A model folder's GLM (eval mode, on ``device``) and its tokenizer, checked to fit.

    Args:
        path: a folder ``load_pretrained`` reads.
        tokenizer: a tokenizer folder to use instead of the one saved in ``path``.
        device: where the model goes.
        **overrides: model config fields to replace (``gelu="erf"``).
    """
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


def load_folder_tokenizer(path: str | Path) -> Any | None:
    """The tokenizer of a model folder, or None if it has no tokenizer files.

    Ours and the official BERT / GPT-2 / RoBERTa files are read by ``tokenizer.load_tokenizer``;
    the Chinese SentencePiece model (``*.model``) needs the optional ``sentencepiece`` package.
    """
    path = Path(path)
    names = OUR_TOKENIZER_FILES + ("vocab.txt", "vocab.json")
    if any((path / name).is_file() for name in names):
        return load_tokenizer(path)
    spm = sorted(path.glob("*.model"))
    return _sentencepiece_tokenizer(spm[0], path) if spm else None


def _sentencepiece_tokenizer(model_file: Path, path: Path) -> Any:
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{model_file}: the Chinese GLM tokenizer is a SentencePiece model; install the "
            "optional package sentencepiece (pip install sentencepiece) to read it"
        ) from None
    if not hasattr(Tokenizer, "from_sentencepiece"):
        raise ConfigError(f"{model_file}: SentencePiece tokenizers are not supported yet")
    config = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
    if config.get("bad_words_id") == [50009]:
        # glm-10b-chinese (spec §2): trained with [gMASK] = 50007 = eop; the hub converter copied
        # row 50007 to 50009, which the hub tokenizer uses for [gMASK]; never generate 50009.
        log.warning("%s: glm-10b-chinese: [gMASK] is 50009 (a copy of eop's row 50007)", path)
    return Tokenizer.from_sentencepiece(model_file)


def convert_folder(
    src: str | Path,
    dst: str | Path,
    to_format: Literal["blankfill", "hub"] = "blankfill",
    weights: Literal["safetensors", "bin"] = "safetensors",
    copy_gmask_row: bool = False,
    **overrides: Any,
) -> Path:
    """Convert any folder ``load_pretrained`` reads into ours or the hub layout; dtypes are kept.

    Tokenizer files are copied; official ones are also written as ours (blankfill format) when the
    tokenizer can be built here. ``copy_gmask_row``: see ``convert.copy_gmask_row``.
    """
    src, dst = Path(src), Path(dst)
    cfg, state = read_checkpoint(src, **overrides)
    if dst.resolve() == src.resolve():
        raise ConfigError(f"--to {dst} is the source folder; choose a new folder")
    if copy_gmask_row:
        state = convert.copy_gmask_row(state)
    save_state(state, cfg, dst, to_format, weights)
    names = OUR_TOKENIZER_FILES + OFFICIAL_TOKENIZER_FILES
    names += HUB_CODE_FILES if to_format == "hub" else ()
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    if to_format == "blankfill" and not (src / OUR_TOKENIZER_FILES[0]).is_file():
        try:
            tokenizer = load_folder_tokenizer(src)
        except (ImportError, ValueError, OSError) as e:
            log.warning("tokenizer not converted: %s", e)
        else:
            if tokenizer is not None:
                if tokenizer.vocab_size > cfg.vocab_size:
                    log.warning(
                        "the tokenizer has %d tokens but the model only %d embedding rows",
                        tokenizer.vocab_size,
                        cfg.vocab_size,
                    )
                tokenizer.save(dst)
    log.info("wrote %s (%s format) from %s", dst, to_format, src)
    return dst
