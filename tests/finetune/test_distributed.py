"""Fine-tuning under torchrun (2 processes, gloo, CPU) gives the metrics of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from blankfill.model import GLM
from blankfill.pretrained import load_pretrained, save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


def synthetic(n: int, seed: int) -> list[dict]:
    """The colour task's rows of test_finetune.py (a tests folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "ft", Path(__file__).with_name("test_finetune.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.synthetic(n, seed)


# one script for both: world size 1 (plain python) or 2 (torchrun)
SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from blankfill.config import FinetuneRunConfig, from_dict
    from blankfill.finetune.runner import finetune_cloze
    from blankfill.pretrained import load_pretrained, load_folder_tokenizer
    from blankfill.train.distributed import init_distributed, teardown
    sys.path.insert(0, sys.argv[3])
    from test_finetune import SENTIMENT
    folder, out = sys.argv[1], sys.argv[2]
    train = json.load(open(folder + "/train.json"))
    valid = json.load(open(folder + "/valid.json"))
    info = None
    for strategy, head in (("ddp", "cloze"), ("fsdp", "cloze"), ("ddp", "classifier")):
        cfg = from_dict(FinetuneRunConfig, {
            "finetune": {"device": "cpu", "precision": "fp32", "epochs": 2, "batch_size": 8,
                         "grad_accum": 2, "head": head},
            "optim": {"lr": 3e-3, "schedule": "linear", "warmup": 0.1, "min_lr_ratio": 0.0,
                      "beta2": 0.999, "eps": 1e-8},
            "dist": {"strategy": strategy, "backend": "gloo"},
        })
        info = init_distributed(cfg.dist, torch.device("cpu"))
        model, tok = load_pretrained(folder), load_folder_tokenizer(folder)
        finetune_cloze(model, tok, SENTIMENT, train, valid, cfg, info=info,
                       out_dir=f"{out}/{strategy}-{head}")
    teardown(info)
    """
)


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_finetuning_equals_one_process(tmp_path):
    train, valid = synthetic(40, 0), synthetic(21, 1)  # 21: ranks get unequal shares
    tok = train_tokenizer([r["text"] for r in train] + [" Colour: Red. Colour: Green."] * 9, 384)
    torch.manual_seed(0)
    save_pretrained(GLM(tiny_config()), tmp_path / "model", tok)
    (tmp_path / "model" / "train.json").write_text(json.dumps(train))
    (tmp_path / "model" / "valid.json").write_text(json.dumps(valid))
    (tmp_path / "run.py").write_text(SCRIPT)
    args = [str(tmp_path / "run.py"), str(tmp_path / "model"), None, str(Path(__file__).parent)]
    args[2] = str(tmp_path / "one")
    _run([sys.executable, *args])
    args[2] = str(tmp_path / "two")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          *args])  # fmt: skip
    for run in ("ddp-cloze", "fsdp-cloze", "ddp-classifier"):
        one = [json.loads(x) for x in (tmp_path / "one" / run / "metrics.jsonl").open()]
        two = [json.loads(x) for x in (tmp_path / "two" / run / "metrics.jsonl").open()]
        assert len(one) == len(two) == 2
        for a, b in zip(one, two, strict=True):
            # the same examples, the same global normalisation; only the order of float sums
            # differs (all-reduce vs one process). Measured: train_loss 9e-9 (DDP, FSDP) and
            # 3e-7 (classifier head) apart; accuracy equal
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5), run
            assert b["accuracy"] == a["accuracy"], run
        w1 = load_pretrained(tmp_path / "one" / run / "best").state_dict()
        w2 = load_pretrained(tmp_path / "two" / run / "best").state_dict()
        for k, v in w1.items():
            # Adam divides by sqrt(v): near-zero gradients turn rounding noise into weight noise
            # (measured max 1.8e-5 cloze, 1.3e-4 classifier head after 10 steps at lr 3e-3)
            torch.testing.assert_close(w2[k], v, rtol=1e-3, atol=5e-4, msg=f"{run} {k}")
