"""The GPU check's steps (``benchmarks/gpu_check.sh`` runs them in order; one JSON line each).

    python benchmarks/gpu_check.py store    WORK          # a token store from this repository's text
    python benchmarks/gpu_check.py pretrain WORK [--steps 200] [--compile] [--precision bf16]
    python benchmarks/gpu_check.py finetune WORK          # one epoch of CB-format fine-tuning
    python benchmarks/gpu_check.py fill     WORK          # blank filling with the model
    python benchmarks/gpu_check.py report   RUN NAME      # a JSON line from RUN/metrics.jsonl

Nothing is downloaded: the corpus is this repository's own text (README, sources), the CB-format
examples are generated (premise/hypothesis pairs whose label follows a rule), so the figures are
throughput and memory, not task quality. Figures: tokens/s (interval averages the loop logs),
MFU (against the table in ``train/metrics.py`` for known GPUs), peak CUDA memory allocated.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _emit(name: str, **fields) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    print(json.dumps({"check": name, "device": device, "peak_gib": peak, **fields}), flush=True)


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def store(work: Path, vocab: int = 8192) -> None:
    from blankfill.data.store import prepare
    from blankfill.tokenizer import train_tokenizer

    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    files = sorted(REPO.glob("*.md")) + sorted((REPO / "src").rglob("*.py"))
    texts = [p.read_text(errors="replace") for p in files]
    for i, t in enumerate(texts * 4):  # ~4 copies: enough documents for 200 steps of sampling
        (corpus / f"{i:05d}.txt").write_text(t)
    tok = train_tokenizer(texts, vocab)
    t0 = time.perf_counter()
    manifest = prepare([corpus], work / "store", tok, overwrite=True)
    _emit("store", seconds=round(time.perf_counter() - t0, 1),
          tokens=manifest.get("tokens", manifest.get("num_tokens")))  # fmt: skip


def pretrain(work: Path, steps: int, compile: bool, precision: str, config: Path, device: str):
    from blankfill.config import RunConfig, load_config
    from blankfill.data.loader import PretrainLoader
    from blankfill.model import GLM
    from blankfill.tokenizer import load_tokenizer
    from blankfill.train.loop import train

    over = [f"data.store={work / 'store'}", f"train.out_dir={work / 'pretrain'}",
            f"train.max_steps={steps}", "train.save_every=0", "train.eval_every=0",
            f"train.compile={str(compile).lower()}", f"train.precision={precision}",
            "data.valid_fraction=0", "log.progress=false", "log.tensorboard=false",
            "log.every=50", f"train.device={device}", "train.save_every=0"]  # fmt: skip
    cfg = load_config(RunConfig, config, over)
    tok = load_tokenizer(work / "store" / "tokenizer")
    data = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tok.special)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = train(cfg, GLM(cfg.model), data, device=device, tokenizer=tok)
    seconds = time.perf_counter() - t0
    from blankfill.train.metrics import read_metrics

    rows = read_metrics(work / "pretrain" / "metrics.jsonl")
    last = rows[-1]  # the last interval: compile and warm-up are behind it
    _emit(f"pretrain {config.stem}", steps=result.step, compile=compile, precision=precision,
          seconds=round(seconds, 1), loss_first=rows[0]["loss"], loss_last=last["loss"],
          tokens_per_s=last.get("tokens_per_s"), mfu=last.get("mfu"),
          checkpoint=str(result.checkpoint))  # fmt: skip


def _cb_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    subjects = ["the cat", "a man", "the committee", "my sister", "the old dog", "our team"]
    verbs = ["sleeps", "wins", "reads", "leaves", "sings", "waits"]
    rows = []
    for _ in range(n):
        s, v = rng.choice(subjects), rng.choice(verbs)
        label = rng.choice(["entailment", "contradiction", "neutral"])
        hyp = {"entailment": f"{s} {v}", "contradiction": f"{s} never {v}",
               "neutral": f"{s} {rng.choice(verbs)} on sundays"}[label]  # fmt: skip
        rows.append({"premise": f"I think {s} {v} today.", "hypothesis": hyp + ".",
                     "label": label})  # fmt: skip
    return rows


def finetune(work: Path, device: str) -> None:
    from blankfill.config import FinetuneRunConfig, load_config
    from blankfill.finetune.runner import finetune_cloze
    from blankfill.finetune.tasks import get_task
    from blankfill.folder import load_model_and_tokenizer

    task = get_task("cb")
    for split, n, seed in (("train", 250, 0), ("val", 56, 1)):
        with (work / f"cb-{split}.jsonl").open("w") as f:
            for row in _cb_rows(n, seed):
                f.write(json.dumps(row) + "\n")
    ckpt = sorted((work / "pretrain" / "checkpoints").glob("step-*"))[-1]
    model, tok = load_model_and_tokenizer(ckpt, device=device)
    cfg = load_config(FinetuneRunConfig, None, ["finetune.epochs=1", f"finetune.device={device}",
                                                "finetune.precision=bf16", "optim.lr=1e-5"])  # fmt: skip
    train, valid = task.load(work / "cb-train.jsonl"), task.load(work / "cb-val.jsonl")
    _reset_peak()
    t0 = time.perf_counter()
    result = finetune_cloze(model, tok, task, train, valid, cfg, out_dir=work / "cb")
    seconds = time.perf_counter() - t0
    _emit("finetune cb", epochs=1, examples=len(train), seconds=round(seconds, 1),
          examples_per_s=round(len(train) / seconds, 1), metrics=result["best"])  # fmt: skip


def fill(work: Path, device: str) -> None:
    from blankfill.filling import fill as fill_text
    from blankfill.folder import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(work / "cb" / "best", device=device)
    prompts = [f"def train(cfg, model, data): [MASK] return {i}" for i in range(16)]
    fill_text(model, tok, prompts[:2], max_new_tokens=8)  # warm-up
    _reset_peak()
    t0 = time.perf_counter()
    results = fill_text(model, tok, prompts, max_new_tokens=32)  # ends on the host: synced
    seconds = time.perf_counter() - t0
    new = sum(len(f.token_ids) for r in results for f in r.fills)
    _emit("fill", prompts=len(prompts), new_tokens=new, seconds=round(seconds, 2),
          tokens_per_s=round(new / seconds, 1), example=results[0].text[:120])  # fmt: skip


def report(run: Path, name: str) -> None:
    from blankfill.train.metrics import read_metrics

    rows = read_metrics(run / "metrics.jsonl")
    last = rows[-1]
    print(json.dumps({"check": name, "steps": last["step"], "loss_last": last["loss"],
                      "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"),
                      "checkpoints": sorted(p.name for p in (run / "checkpoints").iterdir())}),
          flush=True)  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("store", "pretrain", "finetune", "fill", "report"))
    p.add_argument("work", type=Path)
    p.add_argument("name", nargs="?", default="torchrun fsdp")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the steps (tiny config)")
    p.add_argument("--config", type=Path, default=REPO / "configs/pretrain/glm-small.toml")
    p.add_argument("--vocab", type=int, default=8192, help="store: tokenizer size")
    args = p.parse_args()
    needs_gpu = args.step in ("pretrain", "finetune", "fill") and args.device == "cuda"
    if needs_gpu and not torch.cuda.is_available():
        print(json.dumps({"check": args.step, "skipped": "no CUDA device"}))
        return 0
    if args.step == "pretrain":
        pretrain(args.work, args.steps, args.compile, args.precision, args.config, args.device)
    elif args.step == "report":
        report(args.work, args.name)
    elif args.step == "store":
        store(args.work, args.vocab)
    else:
        {"finetune": finetune, "fill": fill}[args.step](args.work, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
