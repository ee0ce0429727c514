"""The Chinese GLM tokenizer: a SentencePiece model plus GLM's command tokens (spec §2).

glm-large-chinese and glm-10b-chinese use the cog-pretrain SentencePiece model (50,000 pieces);
the command tokens follow the pieces. With ``n`` pieces (official ``ChineseSPTokenizer``):

    role   text               fix_command_token=True       False (glm-10b-chinese as trained)
    pad    <|endoftext|>      n       (= eos)              n
    sep    [SEP]              n + 1                        n + 1
    cls    [CLS]              n + 2                        n + 2
    mask   [MASK]             n + 3                        n + 3
    unk    [UNK]              n + 4                        n + 4
    sop    <|startofpiece|>   n + 6                        n + 6
    eop    <|endofpiece|>     n + 7                        n + 7
    smask  [sMASK]            n + 8                        n + 8
    gmask  [gMASK]            n + 9                        n + 7  (the same id as eop)

glm-10b-chinese was pretrained without ``--fix-command-token``, so its [gMASK] was eop's id. The
hub release copies embedding row n + 7 to n + 9 (``convert.copy_gmask_row``) and its tokenizer
maps [gMASK] to n + 9: hub folders of both models therefore load with ``fix_command_token=True``;
``False`` is for the original 10B-Chinese training checkpoints.

Text is split on the command-token texts first (the blanks absorb the whitespace on their left,
official ``lstrip``), and each piece in between is encoded by SentencePiece itself, exactly as
the official tokenizer does. ``sentencepiece`` is imported when a model is loaded. ``Tokenizer.save``
keeps the two files of every tokenizer folder: ``tokenizer.json`` then holds the SentencePiece
model itself (base64), so copying a folder's tokenizer files copies it whole.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .special_tokens import ROLE_TEXT, SpecialTokens

#: Offsets of the command tokens after the pieces (spec §2), per fix_command_token.
COMMAND_OFFSETS: dict[bool, dict[str, int]] = {
    True: dict(pad=0, eos=0, sep=1, cls=2, mask=3, unk=4, sop=6, eop=7, smask=8, gmask=9),
    False: dict(pad=0, eos=0, sep=1, cls=2, mask=3, unk=4, sop=6, eop=7, smask=8, gmask=7),
}
LSTRIP = frozenset({"[MASK]", "[sMASK]", "[gMASK]"})
#: First key of a saved SentencePiece ``tokenizer.json`` (the model inside, base64).
MARKER = "blankfill_sentencepiece"


def command_ids(num_pieces: int, fix_command_token: bool) -> dict[str, int]:
    """Role -> id of GLM's command tokens after ``num_pieces`` SentencePiece pieces."""
    return {role: num_pieces + k for role, k in COMMAND_OFFSETS[fix_command_token].items()}


def from_sentencepiece(
    cls: Any, model_file: str | os.PathLike, *, fix_command_token: bool = True
) -> Any:
    """The Chinese GLM tokenizer (``Tokenizer.from_sentencepiece``; needs ``sentencepiece``).

    With cog-pretrain's 50,000 pieces: pad = eos 50000, sep 50001, [CLS] 50002, [MASK] 50003,
    [UNK] 50004, sop 50006, eop 50007, [sMASK] 50008 and [gMASK] 50009 (glm-large-chinese and
    both hub folders); ``fix_command_token=False`` gives [gMASK] = eop = 50007, as glm-10b-chinese
    was trained (see the module docstring).
    """
    path = Path(model_file)
    if not path.is_file():
        raise ValueError(f"SentencePiece model {path} does not exist; check the path")
    model = path.read_bytes()
    ids = command_ids(_processor(model, str(path)).get_piece_size(), fix_command_token)
    backend = SentencePieceBackend(model, {ROLE_TEXT[r]: i for r, i in ids.items()}, str(path))
    return cls(backend, SpecialTokens(**ids), kind="sentencepiece")


def read_backend(file: Path, otherwise: Callable[[str], Any]) -> Any:
    """The backend saved in ``tokenizer.json``: ours for SentencePiece, else ``otherwise(file)``."""
    with open(file, "rb") as f:
        head = f.read(64)
    if MARKER.encode() not in head:
        return otherwise(str(file))
    try:
        saved = json.loads(Path(file).read_text(encoding="utf-8"))
        model, commands = base64.b64decode(saved["model"], validate=True), saved["commands"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: a corrupt SentencePiece tokenizer ({e}); re-save it") from e
    return SentencePieceBackend(model, commands, str(file))


def _processor(model: bytes, where: str) -> Any:
    try:
        import sentencepiece
    except ImportError:
        raise ValueError(
            f"{where}: the Chinese GLM tokenizer needs the sentencepiece package "
            "(pip install 'blankfill[sentencepiece]')"
        ) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
        raise ValueError(f"{where} is not a SentencePiece model ({e})") from None
    return sp


@dataclass(frozen=True)
class _Encoding:
    ids: list[int]


class SentencePieceBackend:
    """A SentencePiece model with appended command tokens, behind the subset of the
    ``tokenizers.Tokenizer`` interface that :class:`blankfill.tokenizer.Tokenizer` uses.

    Args:
        model: the serialized SentencePiece model (the bytes of the ``.model`` file).
        commands: command-token text -> id (texts may share an id: 10B-Chinese [gMASK] = eop).
        where: named in errors.
    """

    def __init__(self, model: bytes, commands: Mapping[str, int], where: str = "model") -> None:
        self.model = bytes(model)
        self.sp = _processor(self.model, where)
        self.num_pieces = self.sp.get_piece_size()
        low = [t for t, i in commands.items() if i < self.num_pieces]
        if low:
            raise ValueError(f"{where}: command token ids {low} fall inside the pieces")
        self.commands = dict(commands)
        self.text_of: dict[int, str] = {}
        for text, i in self.commands.items():
            self.text_of.setdefault(i, text)  # the first text listed for an id wins in decoding
        texts = sorted(self.commands, key=len, reverse=True)
        self._split = re.compile("|".join(map(re.escape, texts)))

    # ---- the tokenizers.Tokenizer subset -------------------------------------------------------

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.num_pieces)}
        if with_added_tokens:
            vocab.update(self.commands)
        return vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> _Encoding:
        ids: list[int] = []
        last = 0
        for m in self._split.finditer(text):
            piece = text[last : m.start()]
            if m.group(0) in LSTRIP:
                piece = piece.rstrip()
            if piece:
                ids += self.sp.encode(piece)
            ids.append(self.commands[m.group(0)])
            last = m.end()
        if text[last:]:
            ids += self.sp.encode(text[last:])
        return _Encoding(ids)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False):
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        out, run = [], []
        for i in ids:
            if 0 <= i < self.num_pieces:
                run.append(i)
                continue
            if run:
                out.append(self.sp.decode(run))
                run = []
            if i in self.text_of and not skip_special_tokens:
                out.append(self.text_of[i])
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False):
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def id_to_token(self, i: int) -> str | None:
        if 0 <= i < self.num_pieces:
            return self.sp.id_to_piece(i)
        return self.text_of.get(i)

    def token_to_id(self, token: str) -> int | None:
        if token in self.commands:
            return self.commands[token]
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def to_str(self, pretty: bool = False) -> str:
        """What ``Tokenizer.save`` writes as ``tokenizer.json``: the model (base64) and the
        command tokens (``read_backend`` reads it back)."""
        saved = {
            MARKER: 1,
            "pieces": self.num_pieces,
            "commands": self.commands,
            "model": base64.b64encode(self.model).decode("ascii"),
        }
        return json.dumps(saved, indent=2 if pretty else None, ensure_ascii=False)


def find_model_file(folder: str | Path) -> Path | None:
    """The SentencePiece model of an official Chinese folder (``cog-pretrain.model``, or the only
    ``*.model`` file), or None."""
    folder = Path(folder)
    official = folder / "cog-pretrain.model"
    if official.is_file():
        return official
    found = sorted(p for p in folder.glob("*.model") if p.is_file())
    return found[0] if len(found) == 1 else None
