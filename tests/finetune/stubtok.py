"""A word-level tokenizer with the blankfill Tokenizer interface, for tests (no training needed).

Pieces are words with their leading space (" Yes") and single punctuation marks, so verbalizers
like " Yes"/" No" are one token. Ids 0-9 are the GLM specials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SPECIALS = ["[PAD]", "<|endoftext|>", "[CLS]", "[MASK]", "[sMASK]", "[gMASK]",
            "<|startofpiece|>", "<|endofpiece|>", "[SEP]", "[UNK]"]  # fmt: skip
_PIECE = re.compile(r"\[MASK\]|\[sMASK\]|\[gMASK\]|<\|endoftext\|>| ?\w+| ?[^\w\s]| +|\n")


@dataclass(frozen=True)
class Special:
    pad: int = 0
    eos: int = 1
    cls: int = 2
    mask: int = 3
    smask: int = 4
    gmask: int = 5
    sop: int = 6
    eop: int = 7
    sep: int = 8
    unk: int = 9


class WordTokenizer:
    special = Special()
    mask_ids = (3, 4, 5)

    def __init__(self, texts: list[str], size: int = 384) -> None:
        vocab: list[str] = list(SPECIALS)
        for text in texts:
            for piece in _PIECE.findall(text):
                if piece not in vocab and len(vocab) < size:
                    vocab.append(piece)
        self.vocab = vocab
        self.ids = {p: i for i, p in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(p, self.special.unk) for p in _PIECE.findall(text)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < 10))

    def save(self, path) -> None:
        from pathlib import Path

        (Path(path) / "stub_vocab.txt").write_text("\n".join(self.vocab))
