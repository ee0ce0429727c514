"""Shared by the benchmarks: the machine record, a token store to read, JSON-line output.

Every benchmark prints JSON lines; each figure is a ratio against a peer timed alternately in
the same process, next to the machine (``hardware.describe()``), the load average and the date.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

from blankfill import hardware

REPO = Path(__file__).resolve().parents[1]
#: The corpus the data, prepare and training benchmarks read (``BENCH_CORPUS`` overrides it).
CORPUS = Path(os.environ.get("BENCH_CORPUS") or REPO.parent / "shared" / "data" / "corpus")
CACHE = REPO / ".bench"


def machine() -> dict:
    """The machine and the moment: CPU, flags, threads, GPU, torch, load average, UTC date."""
    info = hardware.describe()
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    have = all((CORPUS / f).is_dir() for f in ("austen", "sotu", "shakespeare", "kjv"))
    info["corpus"] = str(CORPUS) if have else "synthetic (no corpus at BENCH_CORPUS)"
    return info


def emulated_bf16() -> str | None:
    """Why bf16 runs are skipped here (the CPU has no native bf16, so bf16 is emulated and many
    times slower than fp32), or None where it has native bf16."""
    if hardware.native_bf16_flags():
        return None
    return f"CPU {hardware.cpu_model()!r} has no native bf16"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def corpus_inputs() -> list[Path]:
    """The text folders of ``../shared/data/corpus``, or a synthetic corpus made here."""
    folders = [CORPUS / name for name in ("austen", "sotu", "shakespeare", "kjv")]
    if all(f.is_dir() for f in folders):
        return folders
    print(f"no corpus at {CORPUS} (set BENCH_CORPUS): using a synthetic one", file=sys.stderr)
    synth = CACHE / "synthetic-corpus"
    if not synth.is_dir():
        import numpy as np

        rng = np.random.default_rng(0)
        words = [w for w in "the of and to a in that is was he for it with as his on be".split()]
        synth.mkdir(parents=True)
        for d in range(200):
            sents = [
                " ".join(rng.choice(words, rng.integers(4, 20))).capitalize() + "."
                for _ in range(400)
            ]
            (synth / f"doc{d:03d}.txt").write_text(" ".join(sents) + "\n")
    return [synth]


def token_store() -> Path:
    """A store of the corpus with a trained 8192-token BPE (made once, kept in ``.bench/``)."""
    from blankfill.data.store import TokenStore

    path = CACHE / ("store-" + ("corpus" if corpus_inputs()[0].parent == CORPUS else "synthetic"))
    try:
        TokenStore(path)
        return path
    except ValueError:
        pass
    import subprocess

    CACHE.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "blankfill", "prepare", "--input", *map(str, corpus_inputs())]
    cmd += ["--out", str(path), "--train-tokenizer", "--vocab-size", "8192", "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    emit({"what": "store_made", "path": str(path), "seconds": round(time.perf_counter() - t0, 1)})
    return path
