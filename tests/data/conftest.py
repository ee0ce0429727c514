"""Fixtures for data tests: a byte-level stand-in tokenizer and small token stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blankfill.data.store import prepare
from blankfill.tokenizer import SpecialTokens

#: The stub's special ids (tests build the same object with ``special``).
STUB_SPECIAL = SpecialTokens(
    pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9
)


class ByteTokenizer:
    """Bytes + 16 as ids; enough of the Tokenizer interface for prepare and the loader."""

    special = STUB_SPECIAL
    vocab_size = 16 + 256

    def encode(self, text: str) -> list[int]:
        return [b + 16 for b in text.encode("utf-8")]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i - 16 for i in ids if i >= 16).decode("utf-8", errors="replace")

    def token_strings(self) -> list[str]:
        return [f"<{i}>" for i in range(16)] + [chr(b) for b in range(256)]

    def fingerprint(self) -> str:
        return "byte-stub-1"

    def save(self, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "special_tokens.json").write_text(json.dumps(self.special.to_dict()))


SENTENCES = [
    "The cat sat on the mat.",
    "Why is the sky blue?",
    "It rains; the ground is wet.",
    "Stop!",
    "A list: one, two, three.",
    "Nothing ends here but the line\n",
]


def make_corpus(root: Path, n_docs: int = 12, seed: int = 0) -> Path:
    """Write ``n_docs`` small text documents of varied length under ``root/corpus``."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        k = 3 + (d * 7 + seed) % 40
        text = " ".join(SENTENCES[(d + j) % len(SENTENCES)] for j in range(k))
        (corpus / f"doc{d:02d}.txt").write_text(text + "\n")
    return corpus


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(name="make_corpus")
def _make_corpus_fixture():
    return make_corpus


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    prepare([make_corpus(root, n_docs=24)], root / "store", ByteTokenizer())
    return root / "store"
