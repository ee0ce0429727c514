"""GLM's design claims at small scale (issue 15): seven variants of equal size and token budget.

    python experiments/run.py all --budget-minutes 120   # `make experiments`: the full suite
    python experiments/run.py all --smoke                # `make experiments-smoke`: a few steps each
    python experiments/run.py a f g                      # some variants (letters or names)
    python experiments/run.py report                     # tables + loss-curve PNGs of what finished

Variants (GLM Table 6 and §3; every one is a set of ``--corrupt.*`` overrides of base.toml):
(a) GLM token level; (b) GLM multi-task (token + sentence + document); (c) no span shuffling;
(d) 1D positions; (e) sentinel blanks; (f) masked-LM baseline (BERT); (g) causal-LM baseline (GPT).

Stages per variant and seed, each skipped when its output exists, so the runner is resumable:
``prepare`` (once: tokenizer and token stores of the corpus's train/validation/test splits),
``plan`` (once: steps from the measured speed and ``--budget-minutes``; every variant gets the same
steps, so the same number of text tokens), ``pretrain`` (``blankfill pretrain ... --resume auto``:
a killed run continues from its last checkpoint), ``eval`` and ``finetune`` (experiments/evaluation.py).
Everything goes under ``--out`` (default experiments/runs/, ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASE = HERE / "base.toml"
SENTINELS = 64  # sentinel rows reserved past the tokenizer's vocabulary (variant e)

#: letter -> (name, what it is, corrupt overrides); {vocab} is the tokenizer's vocab_size.
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "a": ("token", "GLM, token-level blanks", []),
    "b": ("multi", "GLM multi-task: token 0.5 / sentence 0.3 / document 0.2 (the 10B mix)",
          ["corrupt.token_prob=0.5", "corrupt.sentence_prob=0.3", "corrupt.document_prob=0.2"]),
    "c": ("noshuffle", "GLM token level, spans in text order", ["corrupt.shuffle_spans=false"]),
    "d": ("1d", "GLM token level, 1D positions",
          ["corrupt.block_positions=false", "model.block_position_encoding=false"]),
    "e": ("sentinel", "GLM token level, sentinel blanks [MASK_i]",
          [f"corrupt.sentinels={SENTINELS}", "corrupt.sentinel_start={vocab}"]),
    "f": ("mlm", "masked LM (BERT: single tokens in place, bidirectional)",
          ["corrupt.objective=masked_lm", "corrupt.max_span_length=2"]),
    "g": ("clm", "causal LM (GPT: context length 0)", ["corrupt.objective=causal_lm"]),
}  # fmt: skip
PRETRAIN_SHARE = 0.6  # of --budget-minutes; the rest is evaluation and fine-tuning


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj) -> None:
    """Atomic: a killed runner never leaves half a result behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def corpus_split(data_root: Path) -> dict[str, list[Path]] | None:
    corpus = data_root / "corpus"
    if not (corpus / "splits.json").is_file():
        return None
    splits = json.loads((corpus / "splits.json").read_text())
    return {k: [corpus / p for p in splits[k]] for k in ("train", "validation", "test")}


def prepare(out: Path, splits: dict[str, list[Path]], smoke: bool) -> dict:
    """Tokenizer (BPE on the train split) and one token store per split, made once."""
    sys.path.insert(0, str(REPO / "src"))
    from blankfill.data.store import prepare as prepare_store
    from blankfill.tokenizer import load_tokenizer, train_tokenizer

    shared = out / "shared"
    done = shared / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())
    shared.mkdir(parents=True, exist_ok=True)
    files = {k: v[:12] if smoke else v for k, v in splits.items()}
    tok_dir = shared / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tok = load_tokenizer(tok_dir)
    else:
        say(f"prepare: BPE tokenizer on {len(files['train'])} training documents")
        tok = train_tokenizer(files["train"], vocab_size=4096)
        tok.save(tok_dir)
    for split, name in (("train", "store-train"), ("validation", "store-valid"),
                        ("test", "store-test")):  # fmt: skip
        if not (shared / name / "manifest.json").is_file():
            say(f"prepare: token store {name} ({len(files[split])} documents)")
            prepare_store(files[split], shared / name, tok, overwrite=True)
    info = {
        "vocab_size": tok.vocab_size,
        "files": {k: [str(p) for p in v] for k, v in files.items()},
    }
    write_json(done, info)
    return info


def model_vocab(vocab_size: int) -> int:
    return -(-(vocab_size + SENTINELS) // 128) * 128  # equal for every variant


def plan(out: Path, args, vocab: int) -> dict:
    """Steps per run from the speed measured here, the same for every variant (equal tokens)."""
    path = out / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    runs = len(args.variants) * args.seeds
    precision = pick_precision()
    if args.smoke:
        p = {"steps": 3, "budget_minutes": 0, "steps_per_minute": None, "smoke": True}
    else:
        spm = measure_speed(out, vocab, precision["precision"])
        minutes = args.budget_minutes * PRETRAIN_SHARE / max(runs, 1)
        p = {"steps": max(20, int(spm * minutes)), "budget_minutes": args.budget_minutes,
             "steps_per_minute": round(spm, 1), "minutes_per_run": round(minutes, 2)}  # fmt: skip
    p.update(runs=runs, variants=args.variants, seeds=args.seeds, **precision)
    write_json(path, p)
    return p


def pick_precision() -> dict:
    """``train.precision = "auto"`` resolved once, here, and pinned for every run of the suite: a
    later start on a busier machine could measure differently, and equal compute means equal
    arithmetic."""
    sys.path.insert(0, str(REPO / "src"))
    from blankfill.config import RunConfig, load_config
    from blankfill.device import resolve_device
    from blankfill.hardware import choose_precision

    width = load_config(RunConfig, BASE, []).model.hidden_size
    choice = choose_precision(resolve_device("auto"), width=width)
    say(f"plan: precision {choice.precision} ({choice.reason})")
    return {"precision": choice.precision, "precision_reason": choice.reason}


def measure_speed(out: Path, vocab: int, precision: str) -> float:
    """Optimizer steps per minute of variant (a) here, at ``precision`` (10 steps, the first 2
    not timed)."""
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from blankfill.config import RunConfig, load_config
    from blankfill.data.loader import PretrainLoader
    from blankfill.demo import steps_per_minute
    from blankfill.model import GLM
    from blankfill.tokenizer import load_tokenizer
    from blankfill.train.engine import DTYPES

    shared = out / "shared"
    cfg = load_config(RunConfig, BASE, base_overrides(out, "speed", 0, vocab))
    tok = load_tokenizer(shared / "tokenizer")
    data = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tok.special)
    dtype = DTYPES.get(precision)  # the engine's autocast dtypes; fp32: none
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        spm = steps_per_minute(cfg, GLM(cfg.model), data)
    say(f"plan: {spm:.0f} steps/min measured for variant (a) at {precision}")
    return spm


def threads() -> int:
    """Torch threads: the idle cores (more threads than free cores make small matrix products
    many times slower on a shared machine; README, The demo)."""
    from blankfill.demo import free_cores

    return free_cores()


def run_dir(out: Path, letter: str, seed: int) -> Path:
    return out / f"{letter}-{VARIANTS[letter][0]}-s{seed}"


def base_overrides(
    out: Path, letter: str, steps: int, vocab: int, seed: int = 1, precision: str = "auto"
) -> list[str]:
    shared = out / "shared"
    ov = [f"data.store={shared / 'store-train'}", f"data.valid_store={shared / 'store-valid'}",
          f"model.vocab_size={model_vocab(vocab)}", f"train.seed={seed}",
          f"data.seed={1000 + seed}", f"train.precision={precision}"]  # fmt: skip
    if steps:
        every = max(1, steps // 5) if steps >= 10 else steps  # a smoke run: once, at the end
        ov += [f"train.max_steps={steps}", f"train.save_every={every}",
               f"train.eval_every={every}", f"log.every={max(1, min(25, steps // 40))}"]  # fmt: skip
    if letter in VARIANTS:
        ov += [o.format(vocab=vocab) for o in VARIANTS[letter][2]]
    return ov


def finished_step(rd: Path) -> int:
    ckpts = sorted((rd / "checkpoints").glob("step-*")) if (rd / "checkpoints").is_dir() else []
    return max((int(c.name.split("-")[1]) for c in ckpts if (c / "config.json").is_file()),
               default=0)  # fmt: skip


def pretrain(out: Path, letter: str, seed: int, steps: int, vocab: int, precision: str) -> Path:
    rd = run_dir(out, letter, seed)
    done = rd / "pretrain.json"
    if done.is_file():
        return rd
    ov = base_overrides(out, letter, steps, vocab, seed, precision) + [f"train.out_dir={rd}"]
    cmd = [sys.executable, "-m", "blankfill", "pretrain", "--config", str(BASE), "--resume",
           "auto", *(f"--{o}" for o in ov)]  # fmt: skip
    say(f"pretrain ({letter}) {VARIANTS[letter][1]}, seed {seed}: {steps} steps -> {rd}")
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads())}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0 or finished_step(rd) < steps:
        raise SystemExit(f"pretrain ({letter}) stopped (exit {proc.returncode}); run again to "
                         f"continue from its last checkpoint: {' '.join(cmd)}")  # fmt: skip
    ckpt = rd / "checkpoints" / f"step-{finished_step(rd):08d}"
    write_json(done, {"variant": letter, "seed": seed, "steps": steps, "checkpoint": str(ckpt),
                      "command": " ".join(cmd), "wall_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
    return rd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments/run.py", description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="*", default=["all"],
                   help="all, report, or variant letters/names: " + " ".join(
                       f"{k}={v[0]}" for k, v in VARIANTS.items()))  # fmt: skip
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=120.0,
        help="whole-suite budget; pretraining gets 60%% of it, split equally",
    )
    p.add_argument("--smoke", action="store_true", help="3 steps per variant, tiny evaluations")
    p.add_argument("--seeds", type=int, default=1, help="pretraining seeds per variant")
    p.add_argument("--finetune-seeds", type=int, default=2, help="fine-tuning seeds per task")
    p.add_argument("--stages", default="pretrain,eval,finetune", help="comma-separated")
    p.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data"),
        help="shared data root (corpus/, benchmarks/); default ../shared/data",
    )
    p.add_argument("--out", default=None, help="default experiments/runs (smoke: runs-smoke)")
    args = p.parse_args(argv)
    out = Path(args.out or HERE / ("runs-smoke" if args.smoke else "runs"))
    names = {v[0]: k for k, v in VARIANTS.items()}
    report_only = args.variants == ["report"]
    if args.variants == ["all"] or report_only:
        args.variants = list(VARIANTS)
    else:
        bad = [v for v in args.variants if v not in VARIANTS and v not in names]
        if bad:
            p.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)} or {list(names)}")
        args.variants = [names.get(v, v) for v in args.variants]
    data_root = Path(args.data)
    splits = corpus_split(data_root)
    if splits is None:
        print(f"experiments: skipped, the corpus is not at {data_root / 'corpus'} "
              "(pass --data DIR holding corpus/ and benchmarks/)")  # fmt: skip
        return 0
    import evaluation  # experiments/evaluation.py (next to this file)
    import torch

    torch.set_num_threads(threads())

    if report_only:
        evaluation.report(out, VARIANTS)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    info = prepare(out, splits, args.smoke)
    vocab = info["vocab_size"]
    planned = plan(out, args, vocab)
    steps, precision = planned["steps"], planned.get("precision", "auto")
    stages = set(args.stages.split(","))
    for seed in range(1, args.seeds + 1):
        for letter in args.variants:
            rd = run_dir(out, letter, seed)
            if "pretrain" in stages:
                pretrain(out, letter, seed, steps, vocab, precision)
            if not (rd / "pretrain.json").is_file():
                continue
            if "eval" in stages:
                evaluation.evaluate_variant(rd, letter, out / "shared", data_root, args.smoke)
            if "finetune" in stages:
                evaluation.finetune_variant(rd, letter, data_root, args.smoke,
                                            seeds=args.finetune_seeds)  # fmt: skip
    evaluation.report(out, VARIANTS)
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(HERE), str(REPO / "src")]
    sys.exit(main())
