"""Tokenizers: a byte-level BPE trained here, or the official GLM vocabularies with official ids.

Everything runs on Hugging Face ``tokenizers`` (Rust); this module only decides which tokens are
special and which ids they get (spec §2). GLM's command tokens and their roles:

    role   text                 meaning
    pad    <|endoftext|>        padding (the same id as eos, except BERT: [PAD] = eos = 0)
    eos    <|endoftext|>        end of document
    cls    [CLS]                first token of Part A (official "ENC")
    mask   [MASK]               token-level blank (GLM §2.2.1)
    smask  [sMASK]              sentence-level blank (GLM §2.2.2; vocabularies with task masks)
    gmask  [gMASK]              document-level blank (GLM §2.2.2; vocabularies with task masks)
    sop    <|startofpiece|>     opens a span in Part B
    eop    <|endofpiece|>       closes a span in Part B
    sep    [SEP]                separator
    unk    [UNK]                unknown token

The role texts above, typed literally inside text, encode to their single ids for every kind of
vocabulary (``"Paris is the [MASK] of France"``); the blanks absorb the whitespace to their left
(official ``lstrip``). Where an official vocabulary spells a role differently (RoBERTa's
``<mask>``, BERT's ``[PAD]`` for eos) both spellings work. ``encode`` never adds specials.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from . import spm
from .config import pad_vocab
from .special_tokens import (
    _VOCAB_TEXT,
    FORMAT,
    ROLE_TEXT,
    ROLES,
    SPECIAL_FILE,
    TOKENIZER_FILE,
    TRAINED_SPECIALS,
    SpecialTokens,
)
from .vocab_files import (
    _added,
    _append,
    _byte_bpe,
    _existing_file,
    _index,
    _read_bpe,
    _require,
    _training_source,
)

Kind = Literal["bpe", "bert", "gpt2", "roberta", "sentencepiece"]


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus GLM's special-token roles.

    Build one with :func:`train_tokenizer`, :func:`load_tokenizer` or the ``from_*`` constructors
    for the official vocabularies; do not call ``__init__`` directly unless you hold a backend.

    Args:
        backend: the Hugging Face tokenizer; every special token is one of its added tokens.
        special: role -> id.
        kind: where the vocabulary came from (``bpe`` = trained here).
        aliases: GLM role text -> the vocabulary's own spelling, substituted before encoding.
    """

    def __init__(
        self,
        backend: Backend,
        special: SpecialTokens,
        *,
        kind: Kind,
        aliases: dict[str, str] | None = None,
    ) -> None:
        if kind not in get_args(Kind):
            raise ValueError(f"tokenizer kind {kind!r} is not one of {', '.join(get_args(Kind))}")
        self.backend = backend
        self.special = special
        self.kind = kind
        self.aliases = dict(aliases or {})
        vocab = backend.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        for role, i in special.to_dict().items():
            if i is not None and not 0 <= i < self._vocab_size:
                raise ValueError(
                    f"special token {role}={i} is outside the vocabulary of size "
                    f"{self._vocab_size}; fix {SPECIAL_FILE}"
                )
        self._alias_re = (
            re.compile("|".join(map(re.escape, sorted(self.aliases, key=len, reverse=True))))
            if self.aliases
            else None
        )
        self._token_strings: list[str] | None = None

    # ---- official vocabularies (spec §2) -------------------------------------------------------

    @classmethod
    def from_bert_vocab(cls, vocab_txt: str | os.PathLike, *, task_mask: bool = False) -> Tokenizer:
        """BERT-uncased WordPiece (glm-base/large): sop/eop appended (30522/30523 for the official
        vocab), then ``[gMASK]``/``[sMASK]`` when ``task_mask``; eos is ``[PAD]`` = 0."""
        path = _existing_file(vocab_txt, "BERT vocab.txt")
        # One token per line; only "\n" ends a line (str.splitlines also splits on U+2028, ...).
        tokens = [t.rstrip("\r") for t in path.read_text(encoding="utf-8").split("\n")]
        while tokens and not tokens[-1]:
            tokens.pop()  # trailing newline(s)
        vocab = _index(tokens, path)
        _require(vocab, ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"), path)
        appended = ["<|startofpiece|>", "<|endofpiece|>"] + (
            ["[gMASK]", "[sMASK]"] if task_mask else []
        )
        vocab = _append(vocab, appended, path)
        backend = Backend(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        return cls._assemble(backend, vocab, "bert")

    @classmethod
    def from_gpt2_files(
        cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike, *, task_mask: bool = True
    ) -> Tokenizer:
        """GPT-2 BPE (glm-2b/10b): eos = pad = 50256, then sop, eop, [CLS], [MASK], [SEP], [UNK]
        (50257..50262) and, with ``task_mask``, [gMASK] 50263, [sMASK] 50264."""
        vocab, merges = _read_bpe(vocab_json, merges_txt)
        _require(vocab, ("<|endoftext|>",), Path(vocab_json))
        appended = ["<|startofpiece|>", "<|endofpiece|>", "[CLS]", "[MASK]", "[SEP]", "[UNK]"]
        appended += ["[gMASK]", "[sMASK]"] if task_mask else []
        vocab = _append(vocab, appended, Path(vocab_json))
        return cls._assemble(_byte_bpe(vocab, merges), vocab, "gpt2")

    @classmethod
    def from_roberta_files(
        cls, vocab_json: str | os.PathLike, merges_txt: str | os.PathLike
    ) -> Tokenizer:
        """RoBERTa BPE (glm-roberta-large): pad = eos = sep = ``</s>`` 2, cls ``<s>`` 0,
        mask ``<mask>`` 50264, unk ``<unk>`` 3, sop/eop appended (50265/50266); no task masks."""
        vocab, merges = _read_bpe(vocab_json, merges_txt)
        _require(vocab, ("<s>", "</s>", "<unk>", "<mask>"), Path(vocab_json))
        vocab = _append(vocab, ["<|startofpiece|>", "<|endofpiece|>"], Path(vocab_json))
        return cls._assemble(_byte_bpe(vocab, merges), vocab, "roberta")

    from_sentencepiece = classmethod(spm.from_sentencepiece)  # the Chinese GLMs (spec §2)

    @classmethod
    def _assemble(cls, backend: Backend, vocab: dict[str, int], kind: Kind) -> Tokenizer:
        """Register the vocabulary's role texts as special added tokens; alias GLM's spellings."""
        names = {role: text for role, text in _VOCAB_TEXT[kind].items() if text in vocab}
        extra = ["<pad>"] if kind == "roberta" else []  # RoBERTa's own pad, skipped in decoding
        backend.add_special_tokens([_added(t) for t in dict.fromkeys([*names.values(), *extra])])
        aliases = {ROLE_TEXT[r]: t for r, t in names.items() if t != ROLE_TEXT[r]}
        special = SpecialTokens(**{role: vocab[text] for role, text in names.items()})
        return cls(backend, special, kind=kind, aliases=aliases)

    # ---- sizes and roles -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of real tokens (largest id + 1), specials included."""
        return self._vocab_size

    @property
    def padded_vocab_size(self) -> int:
        """The model's V: ``vocab_size`` rounded up to a multiple of 128 (official padding)."""
        return pad_vocab(self._vocab_size)

    @property
    def mask_ids(self) -> tuple[int, ...]:
        """The blank ids present: [MASK], then [sMASK] and [gMASK] where the vocabulary has them."""
        return self.special.mask_ids

    # ---- encoding ------------------------------------------------------------------------------

    def _prepare(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if self._alias_re is None:
            return text
        return self._alias_re.sub(lambda m: self.aliases[m.group(0)], text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; adds no special tokens (literal role texts map to their ids)."""
        return self.backend.encode(self._prepare(text), add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over many texts, in parallel (Rust threads)."""
        prepared = [self._prepare(t) for t in texts]
        return [e.ids for e in self.backend.encode_batch(prepared, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (exact inverse of ``encode`` for byte-level vocabularies). Ids in the
        padding range (``vocab_size <= id < padded_vocab_size``) decode to nothing."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of id ``i`` (raw, e.g. ``Ġthe`` or ``##s``)."""
        token = self.backend.id_to_token(int(i))
        if token is None:
            raise ValueError(f"token id {i} is not in the vocabulary (size {self.vocab_size})")
        return token

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry, or None."""
        return self.backend.token_to_id(token)

    def token_strings(self) -> list[str]:
        """Decoded text of every id ``0..vocab_size-1`` (computed once, then cached); used to find
        sentence ends. Byte-level pieces of a multi-byte character decode to U+FFFD."""
        if self._token_strings is None:
            single = [[i] for i in range(self._vocab_size)]
            self._token_strings = self.backend.decode_batch(single, skip_special_tokens=False)
        return list(self._token_strings)

    # ---- persistence ---------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "vocab_size": self._vocab_size,
            "special": self.special.to_dict(),
            "aliases": self.aliases,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``special_tokens.json`` into folder ``path``; returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / TOKENIZER_FILE).write_text(self.backend.to_str(pretty=True), encoding="utf-8")
        meta = json.dumps(self._meta(), indent=2, sort_keys=True)
        (path / SPECIAL_FILE).write_text(meta + "\n", encoding="utf-8")
        return path

    def fingerprint(self) -> str:
        """sha256 over the tokenizer and its special-token roles; equal after save/load."""
        h = hashlib.sha256(self.backend.to_str().encode("utf-8"))
        h.update(b"\0" + json.dumps(self._meta(), sort_keys=True).encode("utf-8"))
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"padded_vocab_size={self.padded_vocab_size}, special={self.special})"
        )


# ---- training --------------------------------------------------------------------------------


def train_tokenizer(
    files_or_texts: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE with GLM's special tokens reserved at ids 0..8.

    Args:
        files_or_texts: a path (a text file, or a folder: every ``*.txt`` under it), an iterable
            of paths (``pathlib.Path``/``os.PathLike``), or an iterable of ``str`` texts. A bare
            ``str`` is a path; ``str`` items of an iterable are texts.
        vocab_size: the largest vocabulary to learn (specials + 256 bytes + merges); fewer tokens
            result when the text has too few pairs of frequency ``min_frequency``.
        min_frequency: least count for a merge.
        show_progress: show the Rust progress bar.

    Returns:
        The tokenizer: ``<|endoftext|>`` (pad, eos) 0, ``[CLS]`` 1, ``[MASK]`` 2, ``[sMASK]`` 3,
        ``[gMASK]`` 4, ``<|startofpiece|>`` 5, ``<|endofpiece|>`` 6, ``[SEP]`` 7, ``[UNK]`` 8.
    """
    least = len(TRAINED_SPECIALS) + 256
    if vocab_size < least:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{least} (256 bytes + {len(TRAINED_SPECIALS)} special tokens)"
        )
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[_added(t) for t in TRAINED_SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    files, texts = _training_source(files_or_texts)
    if files is not None:
        backend.train([str(f) for f in files], trainer)
    else:
        backend.train_from_iterator(texts, trainer)
    ids = {t: i for i, t in enumerate(TRAINED_SPECIALS)}
    special = SpecialTokens(**{role: ids[text] for role, text in ROLE_TEXT.items()})
    assert all(backend.token_to_id(t) == i for t, i in ids.items()), "specials were not reserved"
    return Tokenizer(backend, special, kind="bpe")


# ---- loading ---------------------------------------------------------------------------------


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer folder.

    Reads ``tokenizer.json`` + ``special_tokens.json`` (written by :meth:`Tokenizer.save`); a
    folder with only official files loads them instead: ``vocab.txt`` (BERT, no task masks), or
    ``vocab.json`` + ``merges.txt`` (RoBERTa when the vocabulary has ``<mask>``, else GPT-2 with
    task masks), or the Chinese GLMs' SentencePiece ``cog-pretrain.model``.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer folder {path} does not exist")
    if (path / SPECIAL_FILE).is_file():
        return _load_saved(path)
    if (path / "vocab.txt").is_file():
        return Tokenizer.from_bert_vocab(path / "vocab.txt")
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab, _ = _read_bpe(path / "vocab.json", path / "merges.txt")
        if "<mask>" in vocab:
            return Tokenizer.from_roberta_files(path / "vocab.json", path / "merges.txt")
        return Tokenizer.from_gpt2_files(path / "vocab.json", path / "merges.txt")
    if (path / TOKENIZER_FILE).is_file():
        return _load_saved(path)  # an error naming the missing special_tokens.json
    if (model := spm.find_model_file(path)) is not None:
        return Tokenizer.from_sentencepiece(model)
    raise ValueError(
        f"no tokenizer in {path}: expected {TOKENIZER_FILE} + {SPECIAL_FILE} "
        "(Tokenizer.save), vocab.txt, vocab.json + merges.txt or a SentencePiece *.model"
    )


def _load_saved(path: Path) -> Tokenizer:
    for name in (TOKENIZER_FILE, SPECIAL_FILE):
        if not (path / name).is_file():
            raise ValueError(
                f"{path / name} is missing; a saved tokenizer needs both "
                f"{TOKENIZER_FILE} and {SPECIAL_FILE} (re-save it with Tokenizer.save)"
            )
    try:
        backend = spm.read_backend(path / TOKENIZER_FILE, Backend.from_file)
    except Exception as e:  # the Rust error type is not exported
        raise ValueError(
            f"{path / TOKENIZER_FILE} is not a valid tokenizer file: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    try:
        meta = json.loads((path / SPECIAL_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        special = SpecialTokens(**meta["special"])
        tok = Tokenizer(backend, special, kind=meta["kind"], aliases=meta.get("aliases", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path / SPECIAL_FILE} is corrupt ({e}); re-save the tokenizer") from e
    if tok.vocab_size != meta.get("vocab_size"):
        raise ValueError(
            f"{path / SPECIAL_FILE} says vocab_size={meta.get('vocab_size')} but "
            f"{TOKENIZER_FILE} has {tok.vocab_size}; the two files do not belong together"
        )
    return tok


__all__ = ["ROLES", "ROLE_TEXT", "SpecialTokens", "Tokenizer", "load_tokenizer", "train_tokenizer"]
