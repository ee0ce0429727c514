"""LAMBADA and perplexity: batched scoring equals per-example forwards; windows cover the text."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from blankfill.finetune.lm import lambada, perplexity
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

TEXTS = ["the cat sat on the mat", "a dog ran far away from home today", "we like tea"]


@pytest.fixture
def setup():
    tok = train_tokenizer(TEXTS * 5, 384)
    return tok, GLM(tiny_config()).eval()


def test_lambada_accuracy_and_loss_match_single_forwards(setup, tmp_path):
    tok, model = setup
    sp = tok.special
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    for uni in (False, True):
        got = lambada(model, tok, path, unidirectional=uni, batch_size=2)
        logp, correct = 0.0, 0
        for t in TEXTS:
            ctx, word = t.rsplit(" ", 1)
            c, y = tok.encode(ctx), tok.encode(" " + word)
            with torch.no_grad():
                if uni:
                    ids = [sp.cls] + c + y
                    logits = model(torch.tensor([ids]), context_len=1)[0, len(c) : len(c) + len(y)]
                else:
                    a = [sp.cls] + c + [sp.gmask, sp.eos]
                    ids = a + [sp.sop] + y[:-1]
                    pos = list(range(len(a))) + [len(a) - 2] * len(y)
                    blk = [0] * len(a) + list(range(1, len(y) + 1))
                    logits = model(torch.tensor([ids]), torch.tensor([[pos, blk]]),
                                   context_len=len(a))[0, len(a) :]  # fmt: skip
            lp = F.log_softmax(logits, -1)
            logp += sum(float(lp[i, t]) for i, t in enumerate(y))
            correct += bool((logits.argmax(-1) == torch.tensor(y)).all())
        n_tok = sum(len(tok.encode(" " + t.rsplit(" ", 1)[1])) for t in TEXTS)
        assert got["accuracy"] == correct / 3
        assert got["last_word_ppl"] == pytest.approx(math.exp(-logp / n_tok), rel=1e-4)


def test_perplexity_windows_score_every_token_once(setup, tmp_path):
    tok, model = setup
    path = tmp_path / "text.txt"
    path.write_text(" ".join(TEXTS * 6))
    n = len(tok.encode(path.read_text()))
    for uni in (False, True):
        out = perplexity(model, tok, path, stride=16, unidirectional=uni, batch_size=3)
        assert out["tokens"] == n - 1 and out["windows"] == math.ceil((n - 1) / 16)
        assert 1.0 < out["ppl"] < 10 * tok.padded_vocab_size and "word_ppl" in out
    # one window holding the whole text, left to right, is the plain causal LM loss
    path.write_text(" ".join(TEXTS))
    ids = tok.encode(path.read_text())
    out = perplexity(model, tok, path, stride=len(ids), max_seq_len=64, unidirectional=True)
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :-1]
    assert out["loss"] == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor(ids[1:]))), rel=1e-4
    )


def test_lambada_reads_the_real_file(setup, benchmarks_dir):
    tok, model = setup
    out = lambada(model, tok, benchmarks_dir / "lambada" / "lambada_test.jsonl", limit=4)
    assert out["examples"] == 4 and 0.0 <= out["accuracy"] <= 1.0
