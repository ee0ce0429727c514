"""Blank filling on text: prompt construction, results, model/tokenizer checks, the CLI."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch

from blankfill import cli
from blankfill.filling import BlankFiller, build_prompt, check_compatible, fill
from blankfill.generate import InfillIds, generate
from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import Tokenizer, train_tokenizer

TEXTS = [
    "the cat sat on the mat.",
    "a dog ran in the park!",
    "Paris is the capital of France.",
] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tok) -> GLM:
    torch.manual_seed(0)
    return GLM(tiny_config(vocab_size=tok.padded_vocab_size)).eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tok):
    return save_pretrained(model, tmp_path_factory.mktemp("m"), tok)


def test_prompt_is_built_as_the_official_code(tok):
    s = tok.special
    ids = tok.encode("the cat [MASK] on the mat.")
    assert build_prompt(tok, "the cat [MASK] on the mat.") == [s.cls, *ids, s.eos]
    assert build_prompt(tok, "the cat [gMASK]") == [s.cls, *tok.encode("the cat [gMASK]")]
    no_blank = build_prompt(tok, "the cat sat")
    assert no_blank == [s.cls, *tok.encode("the cat sat"), s.gmask]


def test_fill_text_and_structured_fills(model, tok):
    r = fill(model, tok, "the cat [MASK] on the [sMASK] park!", max_new_tokens=5)
    assert len(r.fills) == 2 and r.fills[0].position < r.fills[1].position
    assert r.text == f"the cat{_lead(r.fills[0].text)} on the{_lead(r.fills[1].text)} park!"
    ids = build_prompt(tok, "the cat [MASK] on the [sMASK] park!")
    assert r.prompt_ids == tuple(ids)
    core = generate(model, [ids], ids=InfillIds.from_tokenizer(tok), max_new_tokens=5)[0]
    assert [f.token_ids for f in r.fills] == [f.token_ids for f in core]
    for f in r.fills:
        assert f.text == tok.decode(f.token_ids, skip_special_tokens=True)
        banned = set(InfillIds.from_tokenizer(tok).banned)
        assert not banned.intersection(f.token_ids)  # no command tokens, no padding rows
    cont = fill(model, tok, "the cat sat", max_new_tokens=4)
    assert cont.text.startswith("the cat sat") and len(cont.fills) == 1


def _lead(text: str) -> str:
    return text if text[:1].isspace() else " " + text


def test_batch_of_texts_equals_one_by_one(model, tok):
    prompts = ["the [MASK] sat.", "a dog ran in the [MASK] and [MASK]!", "Paris [gMASK]"]
    for kw in ({}, {"strategy": "beam", "num_beams": 2}):
        batch = fill(model, tok, prompts, max_new_tokens=4, **kw)
        assert [r.text for r in batch] == [
            fill(model, tok, p, max_new_tokens=4, **kw).text for p in prompts
        ]


def test_filler_from_pretrained(model_dir, model, tok):
    filler = BlankFiller.from_pretrained(model_dir, precision="fp32")  # exact fills
    assert filler.fill("the [MASK] sat.", max_new_tokens=3) == fill(
        model, tok, "the [MASK] sat.", max_new_tokens=3
    )


def test_model_and_tokenizer_that_do_not_belong_together(tok):
    other = GLM(tiny_config(vocab_size=tok.padded_vocab_size + 128))
    with pytest.raises(ValueError, match="padded vocabulary is 384 rows but the model has 512"):
        fill(other, tok, "the [MASK]")
    s = tok.special
    swapped = Tokenizer(tok.backend, dataclasses.replace(s, sop=s.eop, eop=s.sop), kind="bpe")
    with pytest.raises(ValueError, match="special ids differ.*sop 6 vs 5"):
        check_compatible(GLM(tiny_config(vocab_size=tok.padded_vocab_size)), swapped, reference=tok)


def _cli(argv, capsys, stdin: str | None = None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_streams_the_same_text_as_json(model_dir, capsys, monkeypatch):
    prompt = "the cat [MASK] on the [MASK]."
    code, streamed, _ = _cli(
        ["fill", "--model", str(model_dir), prompt, "--max-new-tokens", "4"], capsys
    )
    assert code == 0
    code, js, _ = _cli(
        ["fill", "--model", str(model_dir), prompt, "--max-new-tokens=4", "--json"], capsys
    )
    record = json.loads(js)
    assert streamed == record["text"] + "\n"
    assert len(record["fills"]) == 2 and {"text", "token_ids", "logprobs", "logprob"} <= set(
        record["fills"][0]
    )
    lines = "the [MASK] sat.\n\na dog [MASK]!\n"
    code, out, _ = _cli(
        ["fill", "--model", str(model_dir), "--max-new-tokens", "3", "--batch-size", "2", "-"],
        capsys,
        lines,
        monkeypatch,
    )
    assert code == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].startswith("a dog")
    code, out1, _ = _cli(
        ["fill", "--model", str(model_dir), "--max-new-tokens", "3"], capsys, lines, monkeypatch
    )
    assert out1 == out  # streamed one by one == batched
    # --mark brackets each fill, streamed or batched, and is otherwise the same text.
    code, marked, _ = _cli(
        ["fill", "--model", str(model_dir), "--max-new-tokens", "3", "--mark"], capsys, lines,
        monkeypatch,
    )  # fmt: skip
    code2, marked2, _ = _cli(
        ["fill", "--model", str(model_dir), "--max-new-tokens", "3", "--mark", "--batch-size",
         "2"], capsys, lines, monkeypatch,
    )  # fmt: skip
    assert code == code2 == 0 and marked == marked2
    assert marked.count("[") == 2 and marked.replace("[", "").replace("]", "") == out


def test_cli_decoding_overrides_equal_their_aliases(model_dir, capsys):
    base = ["fill", "--model", str(model_dir), "the cat [MASK] on the [MASK].", "--json"]
    dotted = ["--decoding.strategy=beam", "--decoding.num_beams=3", "--decoding.max_new_tokens=4"]
    aliases = ["--strategy", "beam", "--num-beams", "3", "--max-new-tokens", "4"]
    code, out, _ = _cli(base + dotted, capsys)
    code2, out2, _ = _cli(base + aliases, capsys)
    code3, greedy, _ = _cli(base + ["--decoding.max_new_tokens=4"], capsys)
    assert code == code2 == code3 == 0 and out == out2
    assert all(len(f["token_ids"]) <= 4 for f in json.loads(out)["fills"])


def test_cli_errors_are_one_line(model_dir, capsys, tmp_path):
    long = "the cat " * 40 + "[MASK]"
    path = tmp_path / "prompts.txt"
    path.write_text("the [MASK] sat.\n\n" + long + "\n")
    for argv, msg in [
        ([long], "prompt on line 1 is "),
        (["--file", str(path), "--batch-size", "2"], "prompt on line 3 is "),
        (["x [MASK]", "--top-p", "2"], "decoding.top_p must be in (0, 1]"),
        (["x [MASK]", "--max-new-tokens", "200"], "use at most 63"),
        (["x [MASK]", "--decoding.num_beam=2"], "--decoding.num_beam: unknown key; did you mean"),
        (["x [MASK]", "--decoding.top_k=-1"], "decoding.top_k must be >= 0"),
    ]:
        code, out, err = _cli(["fill", "--model", str(model_dir), *argv], capsys)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert out == ""  # nothing half-printed before the error


@pytest.mark.parametrize("mark", [("", ""), ("[", "]")])
def test_streamer_writes_what_fill_joins(tok, mark):
    from blankfill.filling import Streamer, _join, _render, _segments

    text = "the cat [MASK] on the [MASK]. [MASK]"
    fills = [[], tok.encode(" mat"), tok.encode("é!")[:1]]  # empty; bpe space; cut mid character
    out = io.StringIO()
    s = Streamer(tok, text, 3, out, mark)
    for blank, ids in enumerate(fills):
        for i in ids:
            s.token(blank, [i])
    s.finish()
    parts, spaces = _segments(tok, text, 3)
    texts = [tok.decode(f, skip_special_tokens=True) for f in fills]
    plain = parts[0] + "".join(
        _join(sp, t) + p for sp, t, p in zip(spaces, texts, parts[1:], strict=True)
    )
    assert out.getvalue() == _render(parts, spaces, texts, *mark) + "\n"
    if mark[0]:  # marks sit around each fill, after the whitespace it brings
        assert out.getvalue().startswith("the cat [] on the [") and "[" not in plain
    else:
        assert out.getvalue() == plain + "\n"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_filler_in_a_lower_precision_fills_every_blank(model, tok, precision):
    import copy

    filler = BlankFiller(copy.deepcopy(model), tok, precision=precision)
    assert filler.model.word_embeddings.weight.dtype == torch.bfloat16
    got = filler.fill("the [MASK] sat on the [MASK].", max_new_tokens=4)
    assert len(got.fills) == 2 and all(len(f.token_ids) <= 4 for f in got.fills)
    with pytest.raises(ValueError, match="precision"):
        BlankFiller(copy.deepcopy(model), tok, precision="fp8")


def test_cli_fills_in_int8(model_dir, capsys):
    argv = ["fill", "--model", str(model_dir), "the [MASK] sat.", "--max-new-tokens", "3"]
    code, out, _ = _cli([*argv, "--precision", "int8", "--json"], capsys)
    assert code == 0
    assert len(json.loads(out)["fills"]) == 1
