"""README.md cannot drift from the code: every ```python block and every `blankfill ...` line of
the quick tour runs here, on a tiny setup made in the test.

What is substituted, and why (everything else runs as written, in a scratch working directory
that holds the files the README names: ``my_texts/``, ``CB/train.jsonl``, ``lambada_test.jsonl``,
``official-glm-large/`` ...):

- the quick tour's ``configs/pretrain/cpu.toml`` becomes ``configs/pretrain/tiny.toml`` with
  ``--train.max_steps=2``, and its vocabulary size 8192 becomes 384 (the tiny model's), so that
  the tour takes seconds; ``step-NNNNNNNN`` becomes the checkpoint that run writes;
- ``finetune --task cb`` gets ``--finetune.epochs=1`` (the official 50 epochs would take minutes);
- ``official-glm-large/`` (an official hub folder, not available offline) is a tiny model written
  in the official hub layout by the test;
- in the Python blocks, placeholder paths (``corpus/``, ``vocab.txt``, ``path/to/model`` ...) point
  to files made here, and the names a block uses without defining (``model``, ``tokenizer``,
  ``prompt_ids``, ``input_ids``) are given.
"""

from __future__ import annotations

import json
import random
import re
import shlex
from pathlib import Path

import pytest
import torch

from blankfill import cli
from blankfill.folder import convert_folder
from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
WORDS = "the king queen lord good night day love sweet heart paris france capital city".split()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def quick_tour(text: str) -> list[str]:
    """The ``blankfill ...`` lines of the first bash block under "## Quick tour" (continuations
    joined)."""
    section = text.split("## Quick tour", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", section, flags=re.S | re.M).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("blankfill ")]


def _corpus(folder: Path, n_docs: int = 12) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(n_docs):
        text = " ".join(" ".join(rng.choices(WORDS, k=9)).capitalize() + "." for _ in range(30))
        (folder / f"doc{d:02d}.txt").write_text(text + "\n")
    return folder


def _official_vocab_files(folder: Path) -> None:
    """Minimal official vocabularies: BERT ``vocab.txt``; one ``vocab.json`` + ``merges.txt``
    that carries both the GPT-2 (``<|endoftext|>``) and the RoBERTa specials."""
    from tokenizers import pre_tokenizers

    bert = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
    (folder / "vocab.txt").write_text("\n".join(bert) + "\n")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tokens = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["<|endoftext|>", "<mask>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    texts = [p.read_text() for p in sorted(_corpus(folder / "corpus", 4).glob("*.txt"))]
    torch.manual_seed(0)
    save_pretrained(GLM(tiny_config()), folder / "model", train_tokenizer(texts, 384))
    return folder / "model"


def test_the_readme_has_what_this_test_runs():
    assert len(python_blocks(README)) >= 3
    tour = quick_tour(README)
    verbs = [shlex.split(line, comments=True)[1] for line in tour]
    assert {"prepare", "pretrain", "fill", "finetune", "evaluate", "convert", "info"} <= set(verbs)


@pytest.mark.parametrize("index", range(len(python_blocks(README))))
def test_python_block_runs(index, model_folder, tmp_path, monkeypatch):
    from blankfill import BlankFiller

    monkeypatch.chdir(tmp_path)
    code = python_blocks(README)[index]
    _corpus(tmp_path / "corpus", 3)
    _official_vocab_files(tmp_path)
    code = code.replace('"path/to/model"', repr(str(model_folder)))
    code = code.replace('"path/to/folder"', repr(str(model_folder)))
    filler = BlankFiller.from_pretrained(model_folder)
    special = filler.tokenizer.special
    given = {
        "model": filler.model,
        "tokenizer": filler.tokenizer,
        "prompt_ids": [[special.cls, *filler.tokenizer.encode("the king"), 3, special.eos]],
        "input_ids": torch.randint(0, 384, (2, 8)),
    }
    exec(compile(code, f"README.md python block {index}", "exec"), given)  # noqa: S102


def test_quick_tour_runs(model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _corpus(tmp_path / "my_texts")
    rows = [
        {"premise": f"The {a} is good.", "hypothesis": f"The {b} is good.", "label": lab, "idx": i}
        for i, (a, b, lab) in enumerate(
            [("king", "king", "entailment"), ("king", "queen", "contradiction")] * 4
        )
    ]
    (tmp_path / "CB").mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / "CB" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    lambada = [{"text": f"the good {w} and the sweet {w}"} for w in WORDS[:6]]
    (tmp_path / "lambada_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lambada))
    convert_folder(model_folder, tmp_path / "official-glm-large", to_format="hub")

    tiny = str(REPO / "configs" / "pretrain" / "tiny.toml")
    for line in quick_tour(README):
        line = line.replace("configs/pretrain/cpu.toml", f"{tiny} --train.max_steps=2")
        line = line.replace("8192", "384").replace("step-NNNNNNNN", "step-00000002")
        if line.startswith("blankfill finetune"):
            line += " --finetune.epochs=1"
        argv = shlex.split(line, comments=True)[1:]
        assert cli.main(argv) == 0, f"README quick tour: {line}\n{capsys.readouterr().err}"
        out = capsys.readouterr().out
        if argv[0] == "fill":
            assert out.count("[") == 1 and "of France is Paris." in out
        if argv[0] == "info" and "--hardware" in argv:
            assert json.loads(out)["precision"]["auto"] in ("fp32", "bf16")
        elif argv[0] == "info" and "--memory" in argv:
            assert "FSDP over 8" in out and "total" in out
        elif argv[0] == "info":
            assert json.loads(out)["num_layers"] == 48
    assert (tmp_path / "runs/cpu/checkpoints/step-00000002/model.safetensors").is_file()
    assert (tmp_path / "runs/cb/best/finetune.json").is_file()
    assert json.loads((tmp_path / "glm-large/config.json").read_text())["format"] == "blankfill"
