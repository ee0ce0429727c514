"""Seq2seq: data files, the Part A/B layout, label-smoothed loss, a tiny copy task, ROUGE."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from blankfill.config import FinetuneRunConfig, load_config
from blankfill.finetune.cloze import collate
from blankfill.finetune.seq2seq import (
    encode_pair,
    evaluate_seq2seq,
    finetune_seq2seq,
    read_pairs,
    rouge,
    seq2seq_loss,
)
from blankfill.model import GLM
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

PAIRS = [("red green blue", "blue"), ("one two three", "three"), ("cat dog cow", "cow")] * 6


def test_read_pairs_from_source_target_and_jsonl(tmp_path):
    (tmp_path / "train.source").write_text("a b\nc d\n")
    (tmp_path / "train.target").write_text("b\nd\n")
    assert read_pairs(tmp_path / "train.source") == [("a b", "b"), ("c d", "d")]
    (tmp_path / "x.jsonl").write_text(json.dumps({"source": "s", "target": "t"}) + "\n{}\n")
    with pytest.raises(ValueError, match=r"x.jsonl:2: missing field 'source'"):
        read_pairs(tmp_path / "x.jsonl")
    (tmp_path / "train.target").write_text("b\n")
    with pytest.raises(ValueError, match="has 2 lines but"):
        read_pairs(tmp_path / "train.source")


def test_layout_and_label_smoothed_loss():
    tok = train_tokenizer([s + " " + t for s, t in PAIRS], 384)
    sp = tok.special
    x = encode_pair(tok, "red green blue", " blue", src_len=64, tgt_len=8)
    assert x.part_a[0] == sp.cls and x.part_a[-2:] == (sp.gmask, sp.eos)
    assert x.mask_pos == len(x.part_a) - 2 and x.answers[0][-1] == sp.eop
    short = encode_pair(tok, "red green blue " * 20, " blue", src_len=10, tgt_len=8)
    assert len(short.part_a) == 10  # the source is cut from the left
    model = GLM(tiny_config()).eval()
    batch = collate([x], sp.sop, sp.pad, single_token=False)
    loss, _ = seq2seq_loss(model, batch, 0.1)
    h = model(batch.input_ids, batch.position_ids, attention_mask=batch.attention_mask)[0]
    logp = F.log_softmax(h[len(x.part_a) :], -1)
    y = torch.tensor(x.answers[0])
    want = 0.9 * F.nll_loss(logp, y) + 0.1 * (-logp.mean(-1)).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_tiny_model_learns_to_copy_the_last_word(tmp_path):
    tok = train_tokenizer([s + " " + t for s, t in PAIRS], 384)
    torch.manual_seed(0)
    model = GLM(tiny_config())
    cfg = load_config(
        FinetuneRunConfig,
        None,
        ["optim.lr=3e-3", "finetune.epochs=25", "finetune.batch_size=6", "finetune.precision=fp32"],
    )
    out = finetune_seq2seq(model, tok, [(s, " " + t) for s, t in PAIRS],
                           [(s, " " + t) for s, t in PAIRS[:3]], cfg, out_dir=tmp_path)  # fmt: skip
    assert out["best"]["token_accuracy"] == 1.0, out["history"]
    assert out["history"][-1]["valid_loss"] < out["history"][0]["valid_loss"]
    # Evaluation by generation (beam search through blankfill.generate) recovers the targets.
    pytest.importorskip("rouge_score")
    scores = evaluate_seq2seq(model, tok, [(s, " " + t) for s, t in PAIRS[:3]], num_beams=2)
    assert scores["rouge1"] == pytest.approx(100.0), scores["predictions"]


def test_rouge_scores():
    pytest.importorskip("rouge_score")
    out = rouge(["the cat sat", "a dog"], ["the cat sat", "the bird"])
    assert out["rouge1"] == pytest.approx(50.0) and out["rougeL"] == pytest.approx(50.0)
