"""Fine-tuning a tiny model on a small synthetic cloze task reaches > 90% accuracy."""

from __future__ import annotations

import json
import random

import torch

from blankfill.config import FinetuneRunConfig, load_config
from blankfill.finetune.runner import evaluate_cloze, finetune_cloze
from blankfill.finetune.tasks import ClozeTask
from blankfill.model import GLM
from blankfill.pretrained import load_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

COLOURS = {"red": ["apple", "cherry", "blood", "ruby"], "green": ["grass", "leaf", "frog", "lime"]}
SENTIMENT = ClozeTask(
    name="colour", fields=("text",), labels=("red", "green"), patterns=("{text} Colour: __.",),
    verbalizers=((" Red", " Green"),), epochs=4, batch_size=8, max_seq_len=32,
)  # fmt: skip


def synthetic(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    fillers = ["the", "a", "big", "small", "old", "new", "my", "your"]
    rows = []
    for i in range(n):
        label = rng.choice(sorted(COLOURS))
        words = [rng.choice(fillers) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), rng.choice(COLOURS[label]))
        rows.append({"text": " ".join(words), "label": SENTIMENT.labels.index(label),
                     "_where": f"synthetic:{i}"})  # fmt: skip
    return rows


def test_finetuning_a_tiny_model_reaches_90_percent(tmp_path):
    train, valid = synthetic(160, 0), synthetic(64, 1)
    tok = train_tokenizer([r["text"] for r in train] + [" Colour: Red. Colour: Green."] * 9, 384)
    torch.manual_seed(0)
    model = GLM(tiny_config())
    cfg = load_config(
        FinetuneRunConfig, None, ["optim.lr=3e-3", "finetune.device=cpu", "finetune.precision=fp32"]
    )
    before = evaluate_cloze(model, tok, SENTIMENT, valid)
    result = finetune_cloze(model, tok, SENTIMENT, train, valid, cfg, out_dir=tmp_path / "run")
    assert result["best"]["accuracy"] > 0.9, (before, result["history"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 5))
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    best = tmp_path / "run" / "best"
    info = json.loads((best / "finetune.json").read_text())
    assert info["task"] == "colour" and info["epoch"] == result["best_epoch"]
    reloaded = load_pretrained(best)
    again = evaluate_cloze(reloaded, tok, SENTIMENT, valid)
    assert again["accuracy"] == result["best"]["accuracy"]


def test_classifier_head_ablation_trains(tmp_path):
    train, valid = synthetic(128, 0), synthetic(48, 1)
    tok = train_tokenizer([r["text"] for r in train] + [" Colour: Red. Colour: Green."] * 9, 384)
    torch.manual_seed(0)
    model = GLM(tiny_config())
    cfg = load_config(
        FinetuneRunConfig,
        None,
        [
            "optim.lr=5e-3",
            "finetune.head=classifier",
            "finetune.epochs=5",
            "finetune.precision=fp32",
        ],
    )
    result = finetune_cloze(model, tok, SENTIMENT, train, valid, cfg, out_dir=tmp_path)
    assert result["best"]["accuracy"] > 0.9, result["history"]
    assert (tmp_path / "best" / "head.safetensors").is_file()


def test_lora_trains_adapters_only_merged_or_apart(tmp_path):
    import pytest

    pytest.importorskip("peft")
    from blankfill.finetune.lora import ADAPTER_NAME, load_adapter

    train, valid = synthetic(96, 0), synthetic(48, 1)
    tok = train_tokenizer([r["text"] for r in train] + [" Colour: Red. Colour: Green."] * 9, 384)
    for merge in (True, False):
        torch.manual_seed(0)
        model = GLM(tiny_config())
        base = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = load_config(FinetuneRunConfig, None, ["optim.lr=1e-2", "finetune.precision=fp32",
                                          "finetune.lora_rank=4", f"finetune.lora_merge={merge}",
                                          "finetune.epochs=3"])  # fmt: skip
        out = tmp_path / str(merge)
        result = finetune_cloze(model, tok, SENTIMENT, train, valid, cfg, out_dir=out)
        hist = result["history"]
        assert hist[-1]["train_loss"] < hist[0]["train_loss"], hist
        saved = load_pretrained(out / "best")
        state = saved.state_dict()
        # frozen: embeddings and layer norms are the base model's in both layouts
        assert torch.equal(state["word_embeddings.weight"], base["word_embeddings.weight"])
        key = "transformer.layers.0.attention.query_key_value.weight"
        if merge:
            assert not torch.equal(state[key], base[key])  # the adapters are in the weights
            assert not (out / "best" / ADAPTER_NAME).exists()
            model_for_eval = saved
        else:
            assert torch.equal(state[key], base[key])  # base unchanged; adapters beside it
            model_for_eval = load_adapter(saved, out / "best")
        again = evaluate_cloze(model_for_eval, tok, SENTIMENT, valid)
        assert again["accuracy"] == pytest.approx(result["best"]["accuracy"])


def test_sigterm_stops_after_the_step_evaluates_and_keeps_best(tmp_path):
    import os
    import signal

    train, valid = synthetic(64, 0), synthetic(16, 1)
    tok = train_tokenizer([r["text"] for r in train] + [" Colour: Red. Colour: Green."] * 9, 384)
    torch.manual_seed(0)
    cfg = load_config(FinetuneRunConfig, None, ["finetune.precision=fp32", "finetune.epochs=3"])

    before = signal.getsignal(signal.SIGTERM)

    def term_at_step_3(s: dict) -> None:
        if s["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    result = finetune_cloze(GLM(tiny_config()), tok, SENTIMENT, train, valid, cfg,
                            out_dir=tmp_path, on_step=term_at_step_3)  # fmt: skip
    assert result["interrupted"] and result["signal"] == signal.SIGTERM
    assert [r["step"] for r in result["history"]] == [3] and result["history"][0]["interrupted"]
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored
