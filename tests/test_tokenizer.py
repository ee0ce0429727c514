"""Tokenizer: special ids per vocabulary kind (spec §2), round trips, save/load, errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as Tokenizer_
from tokenizers import models, pre_tokenizers, trainers

import blankfill
from blankfill.tokenizer import (
    ROLE_TEXT,
    SpecialTokens,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

TEXT = (
    "Paris is the capital of France. The capital of Italy is Rome. "
    "Tokenizers split text into pieces; pieces map to ids. Les élèves étudient à Paris. "
    "東京は日本の首都です。 Numbers: 12345, 3.14159! Emoji: 🙂🚀 and tabs\tand\nnewlines.\n"
)
SENTENCE = "Paris is the capital of France."
WORDS = ["Paris", "is", "the", "capital", "of", "France", "hello", "world"]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_tokenizer([TEXT] * 20, vocab_size=600, min_frequency=2)


# ---- synthetic official vocabularies, full size so the official ids come out -----------------


def _bpe_pieces(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """A consistent byte-level vocabulary + merges, learned by the Rust trainer from ``text``."""
    backend = Tokenizer_(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator([text] * 5, trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return tokens, merges


def _write_bpe(folder: Path, head: list[str], tail: list[str], size: int) -> tuple[Path, Path]:
    pieces, merges = _bpe_pieces(TEXT)
    body = head + pieces
    fillers = [f"<filler{i}>" for i in range(size - len(body) - len(tail))]
    tokens = body + fillers + tail
    assert len(tokens) == size
    folder.mkdir(parents=True, exist_ok=True)
    vocab_json, merges_txt = folder / "vocab.json", folder / "merges.txt"
    vocab_json.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    merges_txt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_json, merges_txt


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory) -> tuple[Path, Path]:
    """GPT-2 layout: 50,257 entries, <|endoftext|> last (50256)."""
    return _write_bpe(tmp_path_factory.mktemp("gpt2"), [], ["<|endoftext|>"], 50257)


@pytest.fixture(scope="module")
def roberta_files(tmp_path_factory) -> tuple[Path, Path]:
    """RoBERTa layout: <s> 0, <pad> 1, </s> 2, <unk> 3, ..., <mask> 50264 (50,265 entries)."""
    head = ["<s>", "<pad>", "</s>", "<unk>"]
    return _write_bpe(tmp_path_factory.mktemp("roberta"), head, ["<mask>"], 50265)


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory) -> Path:
    """BERT-uncased layout: [PAD] 0, [unused*], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [w.lower() for w in WORDS] + [".", ",", "##s", "token", "##izer"]
    tokens += [f"[unused{i}]" for i in range(99, 99 + 30522 - len(tokens))]
    path = tmp_path_factory.mktemp("bert") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def official(bert_vocab, gpt2_files, roberta_files) -> dict[str, Tokenizer]:
    return {
        "bert": Tokenizer.from_bert_vocab(bert_vocab),
        "bert-task": Tokenizer.from_bert_vocab(bert_vocab, task_mask=True),
        "gpt2": Tokenizer.from_gpt2_files(*gpt2_files),
        "roberta": Tokenizer.from_roberta_files(*roberta_files),
    }


# (pad, eos, cls, mask, smask, gmask, sop, eop, sep, unk), vocab_size, padded: spec §2 table.
OFFICIAL_IDS = {
    "bert": ((0, 0, 101, 103, None, None, 30522, 30523, 102, 100), 30524, 30592),
    "bert-task": ((0, 0, 101, 103, 30525, 30524, 30522, 30523, 102, 100), 30526, 30592),
    "gpt2": ((50256, 50256, 50259, 50260, 50264, 50263, 50257, 50258, 50261, 50262), 50265, 50304),
    "roberta": ((2, 2, 0, 50264, None, None, 50265, 50266, 2, 3), 50267, 50304),
}


@pytest.mark.parametrize("kind", sorted(OFFICIAL_IDS))
def test_official_special_ids(official, kind):
    ids, vocab_size, padded = OFFICIAL_IDS[kind]
    tok = official[kind]
    assert tuple(getattr(tok.special, r) for r in blankfill.tokenizer.ROLES) == ids
    assert tok.vocab_size == vocab_size
    assert tok.padded_vocab_size == padded
    has_task = tok.special.gmask is not None
    assert tok.mask_ids == ((ids[3], ids[4], ids[5]) if has_task else (ids[3],))


def test_gpt2_without_task_mask(gpt2_files):
    tok = Tokenizer.from_gpt2_files(*gpt2_files, task_mask=False)
    assert (tok.special.gmask, tok.special.smask, tok.vocab_size) == (None, None, 50263)
    assert tok.encode("[gMASK]") != [50263]


def test_trained_special_ids(trained):
    s = trained.special
    assert (s.pad, s.eos, s.cls, s.mask, s.smask, s.gmask) == (0, 0, 1, 2, 3, 4)
    assert (s.sop, s.eop, s.sep, s.unk) == (5, 6, 7, 8)
    assert trained.mask_ids == (2, 3, 4)
    for role, text in ROLE_TEXT.items():
        assert trained.encode(text) == [getattr(s, role)], role
        assert trained.id_to_token(getattr(s, role)) == text


@pytest.mark.parametrize("kind", ["trained", *sorted(OFFICIAL_IDS)])
def test_specials_inside_text_are_single_ids(trained, official, kind):
    tok = trained if kind == "trained" else official[kind]
    s = tok.special
    ids = tok.encode("Paris is the [MASK] of France")
    assert ids.count(s.mask) == 1
    assert ids == tok.encode("Paris is the") + [s.mask] + tok.encode(" of France")
    roles = ["eos", "cls", "mask", "sop", "eop", "sep", "unk"]
    roles += ["smask", "gmask"] if s.gmask is not None else []
    text = " the ".join(ROLE_TEXT[r] for r in roles)
    ids = tok.encode(text)
    assert [i for i in ids if i in {getattr(s, r) for r in roles}] == [getattr(s, r) for r in roles]
    assert tok.encode_batch([text, "Paris"]) == [ids, tok.encode("Paris")]


NO_SPECIALS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80).filter(
    lambda t: not any(s in t for s in ROLE_TEXT.values())
)


@settings(max_examples=150, deadline=None)
@given(NO_SPECIALS)
def test_trained_round_trip(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert all(0 <= i < trained.vocab_size for i in ids)
    assert not set(ids) & {0, 1, 2, 3, 4, 5, 6, 7, 8}  # ordinary text never yields a special


@settings(max_examples=50, deadline=None)
@given(NO_SPECIALS.filter(lambda t: "<s>" not in t and "</s>" not in t and "<mask>" not in t))
def test_gpt2_and_roberta_round_trip(official, text):
    for kind in ("gpt2", "roberta"):
        assert official[kind].decode(official[kind].encode(text)) == text


def test_byte_level_official_encode(official):
    tok = official["gpt2"]
    ids = tok.encode(SENTENCE)
    assert [tok.id_to_token(i) for i in ids[:3]] == ["Paris", "Ġis", "Ġthe"]  # learned merges
    assert tok.decode(ids) == SENTENCE
    text = "Paris is the [MASK] of France<|endoftext|>"
    ids = tok.encode(text)
    assert ids[3] == 50260 and ids[-1] == 50256
    assert tok.decode(ids, skip_special_tokens=True) == "Paris is the of France"


def test_bert_encode_lowercases(official):
    tok = official["bert"]
    ids = tok.encode("Hello World, TOKENIZERS.")
    assert [tok.id_to_token(i) for i in ids] == [
        "hello",
        "world",
        ",",
        "token",
        "##izer",
        "##s",
        ".",
    ]
    assert tok.decode(ids) == "hello world, tokenizers."
    assert tok.encode("[CLS] hi")[0] == 101
    assert tok.encode("<|endoftext|>") == [0] == tok.encode("[PAD]")  # eos aliased to [PAD]
    assert tok.decode([101, *ids, 0], skip_special_tokens=True) == "hello world, tokenizers."


def test_roberta_aliases(official):
    tok = official["roberta"]
    assert tok.encode("[MASK]") == [50264] == tok.encode("<mask>")
    assert tok.encode("<|endoftext|>") == [2] == tok.encode("[SEP]") == tok.encode("</s>")
    assert tok.encode("[CLS]") == [0] and tok.encode("[UNK]") == [3]
    assert tok.decode([0, *tok.encode(SENTENCE), 2, 1], skip_special_tokens=True) == SENTENCE


@pytest.mark.parametrize("kind", ["trained", *sorted(OFFICIAL_IDS)])
def test_save_load_identity(trained, official, kind, tmp_path):
    tok = trained if kind == "trained" else official[kind]
    assert tok.save(tmp_path / "t") == tmp_path / "t"
    meta = json.loads((tmp_path / "t" / "special_tokens.json").read_text())
    assert meta["special"]["mask"] == tok.special.mask
    back = load_tokenizer(tmp_path / "t")
    assert back.special == tok.special and back.kind == tok.kind
    assert back.vocab_size == tok.vocab_size
    assert back.fingerprint() == tok.fingerprint()
    text = "Paris is the [MASK] of France. <|endoftext|> Les élèves 🙂"
    assert back.encode(text) == tok.encode(text)
    assert back.token_strings() == tok.token_strings()


def test_fingerprint_is_stable_and_discriminates(trained):
    again = train_tokenizer([TEXT] * 20, vocab_size=600, min_frequency=2)
    assert again.fingerprint() == trained.fingerprint()
    assert len(trained.fingerprint()) == 64
    other = train_tokenizer([TEXT] * 20, vocab_size=300, min_frequency=2)
    assert other.fingerprint() != trained.fingerprint()


def test_load_official_folders(bert_vocab, gpt2_files, roberta_files, official):
    assert load_tokenizer(bert_vocab.parent).fingerprint() == official["bert"].fingerprint()
    assert load_tokenizer(gpt2_files[0].parent).special == official["gpt2"].special
    assert load_tokenizer(roberta_files[0].parent).special == official["roberta"].special


@pytest.mark.parametrize("vocab_size", [265, 300, 384, 385, 700])
def test_padded_vocab_size(vocab_size):
    tok = train_tokenizer([TEXT] * 20, vocab_size=vocab_size, min_frequency=1)
    assert 265 <= tok.vocab_size <= vocab_size
    assert tok.padded_vocab_size % 128 == 0
    assert 0 <= tok.padded_vocab_size - tok.vocab_size < 128
    assert tok.decode(range(tok.vocab_size, tok.padded_vocab_size + 1)) == ""  # dummy rows


def test_token_strings(trained):
    strings = trained.token_strings()
    assert len(strings) == trained.vocab_size
    assert strings[trained.encode(".")[0]] == "."
    assert strings[trained.special.eop] == "<|endofpiece|>"
    ids = trained.encode(SENTENCE)
    assert "".join(strings[i] for i in ids) == SENTENCE
    strings[0] = "changed"
    assert trained.token_strings()[0] == "<|endoftext|>"  # the cache is not exposed


def test_train_from_files_and_folders(tmp_path):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "a.txt").write_text(TEXT * 10, encoding="utf-8")
    (tmp_path / "corpus" / "sub" / "b.txt").write_text(SENTENCE * 10, encoding="utf-8")
    by_folder = train_tokenizer(tmp_path / "corpus", vocab_size=400)
    by_str = train_tokenizer(str(tmp_path / "corpus"), vocab_size=400)
    files = [tmp_path / "corpus" / "a.txt", tmp_path / "corpus" / "sub" / "b.txt"]
    by_files = train_tokenizer(files, vocab_size=400)
    assert by_folder.fingerprint() == by_str.fingerprint() == by_files.fingerprint()
    assert by_folder.vocab_size > 265
    assert by_folder.decode(by_folder.encode(TEXT)) == TEXT


def test_exports():
    assert blankfill.Tokenizer is Tokenizer and blankfill.SpecialTokens is SpecialTokens
    assert blankfill.train_tokenizer is train_tokenizer
    assert blankfill.load_tokenizer is load_tokenizer


# ---- errors: one line, naming what is wrong ---------------------------------------------------


def _one_line_error(fn, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_error_vocab_size_too_small():
    _one_line_error(lambda: train_tokenizer([TEXT], vocab_size=264), "too small.*at least 265")


def test_error_training_inputs(tmp_path):
    _one_line_error(
        lambda: train_tokenizer(tmp_path / "nope.txt", vocab_size=300), "does not exist"
    )
    _one_line_error(lambda: train_tokenizer([tmp_path / "x.txt"], vocab_size=300), "x.txt")
    _one_line_error(lambda: train_tokenizer(tmp_path, vocab_size=300), "no \\*.txt")
    _one_line_error(lambda: train_tokenizer([], vocab_size=300), "no training text")
    with pytest.raises(TypeError):
        train_tokenizer(["text", 3], vocab_size=300)


def test_error_load_missing_and_corrupt(trained, tmp_path):
    _one_line_error(lambda: load_tokenizer(tmp_path / "absent"), "does not exist")
    _one_line_error(lambda: load_tokenizer(tmp_path), "no tokenizer in")
    trained.save(tmp_path / "t")
    (tmp_path / "t" / "special_tokens.json").unlink()
    _one_line_error(lambda: load_tokenizer(tmp_path / "t"), "special_tokens.json is missing")
    trained.save(tmp_path / "t")
    (tmp_path / "t" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    _one_line_error(lambda: load_tokenizer(tmp_path / "t"), "not a valid tokenizer file")
    trained.save(tmp_path / "t")
    (tmp_path / "t" / "special_tokens.json").write_text("[1, 2]", encoding="utf-8")
    _one_line_error(lambda: load_tokenizer(tmp_path / "t"), "special_tokens.json is corrupt")
    meta = trained.save(tmp_path / "t") / "special_tokens.json"
    data = json.loads(meta.read_text())
    data["special"]["mask"] = 10**6
    meta.write_text(json.dumps(data), encoding="utf-8")
    _one_line_error(lambda: load_tokenizer(tmp_path / "t"), "outside the vocabulary")
    data["special"]["mask"], data["vocab_size"] = 2, 5
    meta.write_text(json.dumps(data), encoding="utf-8")
    _one_line_error(lambda: load_tokenizer(tmp_path / "t"), "do not belong together")


def test_error_official_files(tmp_path, gpt2_files):
    _one_line_error(lambda: Tokenizer.from_bert_vocab(tmp_path / "vocab.txt"), "does not exist")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n", encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_bert_vocab(tmp_path / "vocab.txt"), "lacks.*\\[CLS\\]")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[PAD]\n", encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_bert_vocab(tmp_path / "vocab.txt"), "appears twice")
    _one_line_error(lambda: Tokenizer.from_gpt2_files(*gpt2_files[::-1]), "not valid JSON")
    _one_line_error(lambda: Tokenizer.from_roberta_files(*gpt2_files), "lacks.*<s>")
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\nq z\n", encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_gpt2_files(gpt2_files[0], bad), "do not fit together")
    bad.write_text("a b c\n", encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_gpt2_files(gpt2_files[0], bad), "merges.txt:1")
    v = tmp_path / "v.json"
    v.write_text(json.dumps({"<|endoftext|>": 0, "[MASK]": 1}), encoding="utf-8")
    bad.write_text("", encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_gpt2_files(v, bad), "already contains \\[MASK\\]")
    v.write_text(json.dumps({"<|endoftext|>": 0, "a": 5}), encoding="utf-8")
    _one_line_error(lambda: Tokenizer.from_gpt2_files(v, bad), "ids must be exactly")


def test_pickles_for_worker_processes(official):
    tok = pickle.loads(pickle.dumps(official["roberta"]))
    assert tok.encode("the [MASK] of") == official["roberta"].encode("the [MASK] of")
    assert tok.fingerprint() == official["roberta"].fingerprint()
