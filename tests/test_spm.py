"""The Chinese GLM tokenizer: SentencePiece pieces + GLM's command tokens at the official ids
(spec §2), on SentencePiece models trained here."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

spm = pytest.importorskip("sentencepiece")

from blankfill import convert  # noqa: E402
from blankfill.filling import BlankFiller, fill  # noqa: E402
from blankfill.generate import InfillIds  # noqa: E402
from blankfill.model import GLM  # noqa: E402
from blankfill.pretrained import load_folder_tokenizer, save_pretrained  # noqa: E402
from blankfill.spm import command_ids  # noqa: E402
from blankfill.testing import tiny_config  # noqa: E402
from blankfill.tokenizer import Tokenizer, load_tokenizer  # noqa: E402

CORPUS = [
    "巴黎是法国的首都。",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "清华大学位于北京。",
    "the cat sat on the mat.",
    "GLM 是一个通用语言模型。",
] * 40


def _train(tmp_path, name, **kw) -> str:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(kw.pop("lines", CORPUS)), model_writer=buf, minloglevel=2, **kw
    )
    path = tmp_path / name
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> str:
    """A unigram model of at most 80 pieces trained on mixed Chinese/English text."""
    folder = tmp_path_factory.mktemp("spm")
    return _train(folder, "small.model", vocab_size=80, hard_vocab_limit=False)


@pytest.fixture(scope="module")
def cog_sized(tmp_path_factory) -> str:
    """A model with exactly 50,000 pieces, as cog-pretrain: the official ids come out literally."""
    words = [f"w{i:05d}" for i in range(50_000)]
    lines = [" ".join(words[i : i + 50]) for i in range(0, 50_000, 50)]
    path = _train(
        tmp_path_factory.mktemp("cog"),
        "cog-pretrain.model",
        lines=lines,
        vocab_size=50_000,
        model_type="word",
        hard_vocab_limit=False,
    )
    assert spm.SentencePieceProcessor(model_file=path).get_piece_size() == 50_000
    return path


def test_official_ids_of_glm_large_chinese(cog_sized):
    tok = Tokenizer.from_sentencepiece(cog_sized)  # fix_command_token=True
    s = tok.special
    assert (s.pad, s.eos, s.sep, s.cls, s.mask, s.unk) == (50000, 50000, 50001, 50002, 50003, 50004)
    assert (s.sop, s.eop, s.smask, s.gmask) == (50006, 50007, 50008, 50009)
    assert tok.vocab_size == 50010 and tok.padded_vocab_size == 50048
    assert tok.encode("w00007 [gMASK]") == [*tok.backend.sp.encode("w00007"), 50009]


def test_glm_10b_chinese_gmask_collides_with_eop(cog_sized):
    tok = Tokenizer.from_sentencepiece(cog_sized, fix_command_token=False)
    s = tok.special
    assert s.gmask == s.eop == 50007 and s.smask == 50008 and s.sop == 50006
    assert tok.encode("[gMASK]") == tok.encode("<|endofpiece|>") == [50007]
    assert tok.padded_vocab_size == 50048
    assert command_ids(50000, False)["gmask"] == convert.CHINESE_10B_GMASK_ROWS[0]
    assert command_ids(50000, True)["gmask"] == convert.CHINESE_10B_GMASK_ROWS[1]


def test_converter_row_copy_makes_the_hub_gmask_read_as_the_trained_one(cog_sized):
    """A 10B-Chinese checkpoint (trained with [gMASK] = 50007) after the hub converter's row copy
    gives, with the hub ids ([gMASK] 50009), the logits it gave with the trained ids."""
    trained_tok = Tokenizer.from_sentencepiece(cog_sized, fix_command_token=False)
    hub_tok = Tokenizer.from_sentencepiece(cog_sized, fix_command_token=True)
    torch.manual_seed(0)
    trained = GLM(tiny_config(vocab_size=50048)).eval()
    hub = GLM(tiny_config(vocab_size=50048)).eval()
    hub.load_state_dict(convert.copy_gmask_row(trained.state_dict()))
    text = "w00001 w00002 [gMASK]"
    a, b = trained_tok.encode(text), hub_tok.encode(text)
    assert a[-1] == 50007 and b[-1] == 50009 and a[:-1] == b[:-1]
    with torch.no_grad():
        la = trained(torch.tensor([a]), context_len=len(a))
        lb = hub(torch.tensor([b]), context_len=len(b))
    keep = torch.arange(50048) != 50009  # the copied row's own logit changes: it is eop's now
    torch.testing.assert_close(la[..., keep], lb[..., keep])
    torch.testing.assert_close(lb[..., 50009], lb[..., 50007])  # hence the hub bans 50009
    assert 50009 in InfillIds.from_tokenizer(hub_tok).banned  # never generated (hub bad_words_id)


def test_text_between_command_tokens_is_encoded_by_sentencepiece(small):
    tok = Tokenizer.from_sentencepiece(small)
    sp, s = tok.backend.sp, tok.special
    n = sp.get_piece_size()
    assert s.pad == n and s.gmask == n + 9
    ids = tok.encode("巴黎是 [MASK] 的首都。[sMASK]")
    assert ids == [*sp.encode("巴黎是"), s.mask, *sp.encode(" 的首都。"), s.smask]
    assert tok.encode("a [gMASK]") == tok.encode("a[gMASK]")  # blanks absorb the space before
    assert tok.encode("<|endoftext|>[CLS]") == [s.eos, s.cls]
    assert tok.decode([s.cls, *sp.encode("清华大学"), s.mask]) == "[CLS]清华大学[MASK]"
    assert (
        tok.decode([s.cls, *sp.encode("清华大学"), s.mask], skip_special_tokens=True) == "清华大学"
    )
    assert tok.id_to_token(s.sop) == "<|startofpiece|>" and tok.token_to_id("[MASK]") == s.mask
    assert tok.token_to_id("no such piece") is None


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="巴黎是法国的首都北京清华大学 the cat sat,.。，", max_size=40))
def test_plain_text_encodes_as_sentencepiece_does(small, text):
    tok = _cached(small)
    assert tok.encode(text) == tok.backend.sp.encode(text)
    assert tok.decode(tok.encode(text)) == tok.backend.sp.decode(tok.backend.sp.encode(text))


_TOKS: dict[str, Tokenizer] = {}


def _cached(path: str) -> Tokenizer:
    if path not in _TOKS:
        _TOKS[path] = Tokenizer.from_sentencepiece(path)
    return _TOKS[path]


def test_save_load_and_official_folders(small, tmp_path):
    tok = Tokenizer.from_sentencepiece(small, fix_command_token=False)
    saved = load_tokenizer(tok.save(tmp_path / "ours"))
    assert saved.kind == "sentencepiece" and saved.special == tok.special
    assert saved.fingerprint() == tok.fingerprint()
    assert saved.encode("北京 [gMASK]") == tok.encode("北京 [gMASK]")
    official = tmp_path / "official"
    official.mkdir()
    (official / "cog-pretrain.model").write_bytes(open(small, "rb").read())
    for loaded in (load_tokenizer(official), load_folder_tokenizer(official)):
        assert loaded.kind == "sentencepiece" and loaded.special.gmask == tok.backend.num_pieces + 9
    copied = tmp_path / "copied"  # the usual two files hold everything (the model inside)
    copied.mkdir()
    for name in ("tokenizer.json", "special_tokens.json"):
        (copied / name).write_bytes((tmp_path / "ours" / name).read_bytes())
    assert load_tokenizer(copied).fingerprint() == tok.fingerprint()
    saved_json = json.loads((copied / "tokenizer.json").read_text())
    saved_json["model"] = base64.b64encode(b"not a model").decode()
    (copied / "tokenizer.json").write_text(json.dumps(saved_json))
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer(copied)


def test_filling_with_the_chinese_tokenizer(small, tmp_path):
    tok = Tokenizer.from_sentencepiece(small)
    torch.manual_seed(0)
    model = GLM(tiny_config(vocab_size=tok.padded_vocab_size)).eval()
    r = fill(model, tok, "巴黎是[MASK]的首都。", max_new_tokens=4)
    assert len(r.fills) == 1 and r.text.startswith("巴黎是") and r.text.endswith("的首都。")
    assert r.prompt_ids[0] == tok.special.cls and tok.special.mask in r.prompt_ids
    again = BlankFiller.from_pretrained(save_pretrained(model, tmp_path / "m", tok))
    assert again.fill("巴黎是[MASK]的首都。", max_new_tokens=4).text == r.text
