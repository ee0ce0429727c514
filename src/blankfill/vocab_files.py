"""Reading official vocabulary files (BERT ``vocab.txt``, GPT-2/RoBERTa ``vocab.json`` +
``merges.txt``) for ``blankfill.tokenizer``: checks with one-line errors, and the BPE backend;
also the training input of ``train_tokenizer`` (files, folders of ``*.txt``, or texts)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from .special_tokens import _LSTRIP


def _added(text: str) -> AddedToken:
    return AddedToken(text, special=True, normalized=False, lstrip=text in _LSTRIP)


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist; check the path")
    return path


def _index(tokens: list[str], path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in vocab:
            raise ValueError(f"{path}: token {t!r} appears twice (ids {vocab[t]} and {i})")
        vocab[t] = i
    return vocab


def _require(vocab: dict[str, int], tokens: Sequence[str], path: Path) -> None:
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(
            f"{path} lacks the special token(s) {', '.join(missing)}; "
            "is it the right kind of vocabulary?"
        )


def _append(vocab: dict[str, int], tokens: Sequence[str], path: Path) -> dict[str, int]:
    """Append GLM's command tokens after the base vocabulary (official order, spec §2)."""
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise ValueError(
            f"{path} already contains {', '.join(clash)}; pass the base vocabulary "
            "without GLM's command tokens (they are appended with the official ids)"
        )
    return vocab | {t: len(vocab) + k for k, t in enumerate(tokens)}


def _read_bpe(
    vocab_json: str | os.PathLike, merges_txt: str | os.PathLike
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vpath = _existing_file(vocab_json, "BPE vocab.json")
    mpath = _existing_file(merges_txt, "BPE merges.txt")
    try:
        vocab = json.loads(vpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{vpath} is not valid JSON ({e})") from e
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{vpath} must be a JSON object mapping token -> integer id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{vpath}: ids must be exactly 0..{len(vocab) - 1}, each once")
    merges = []
    for n, line in enumerate(mpath.read_text(encoding="utf-8").split("\n"), 1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{mpath}:{n}: a merge is two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    return vocab, merges


def _byte_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Backend:
    try:
        model = models.BPE(vocab, merges)
    except Exception as e:  # e.g. a merge whose token is not in the vocabulary
        raise ValueError(f"vocab.json and merges.txt do not fit together: {e}") from e
    backend = Backend(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def _training_source(source: Any) -> tuple[list[Path] | None, Iterator[str] | None]:
    """Split the training input into a list of files or a stream of texts (see train_tokenizer)."""
    if isinstance(source, (str, os.PathLike)):
        return _expand_files([source]), None
    items = iter(source)
    first = next(items, None)
    if first is None:
        raise ValueError("train_tokenizer got no training text (an empty list of files/texts)")
    if isinstance(first, os.PathLike):
        return _expand_files(chain([first], items)), None

    def texts() -> Iterator[str]:
        for item in chain([first], items):
            if not isinstance(item, str):
                raise TypeError(f"train_tokenizer: expected str texts, got {type(item).__name__}")
            yield item

    return None, texts()


def _expand_files(paths: Iterable[Any]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"train_tokenizer: expected paths, got {type(p).__name__}")
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not found:
                raise ValueError(f"tokenizer training folder {p} holds no *.txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"tokenizer training file {p} does not exist; check the path")
    if not files:
        raise ValueError("train_tokenizer got no training files")
    return files
