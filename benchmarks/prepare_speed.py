"""``prepare`` against raw ``tokenizers`` ``encode_batch`` on the same files (prints JSON lines).

    python benchmarks/prepare_speed.py [--repeats 2] [--max-mb 8]

The peer reads the same documents (``blankfill.data.sources.iter_documents``) and calls the
tokenizer backend's ``encode_batch`` on chunks of the same size, discarding the ids: the floor for
any prepare. ``prepare`` also maps ids to the store's dtype, finds sentence ends and writes the
store. Both run back to back, in alternating order, with the store's trained tokenizer; wall
time (the tokenizer uses every core), input MB/s and the ratio prepare / raw (target >= 0.8).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import emit, machine, token_store

from blankfill.data.encode import CHUNK_CHARS
from blankfill.data.sources import ReadStats, iter_documents, list_input_files
from blankfill.data.store import TokenStore, prepare


def inputs(max_mb: float) -> list[Path]:
    from common import corpus_inputs

    files, size = [], 0
    for f in list_input_files(corpus_inputs()):
        files.append(f)
        size += f.stat().st_size
        if size >= max_mb * 1e6:
            break
    return files


def raw_encode(files: list[Path], tokenizer) -> int:
    stats = ReadStats()
    chunk: list[str] = []
    n = 0
    for path in files:
        for doc in iter_documents(path, stats):
            chunk.append(tokenizer._prepare(doc))
            n += len(doc)
            if n >= CHUNK_CHARS:
                tokenizer.backend.encode_batch(chunk, add_special_tokens=False)
                chunk, n = [], 0
    if chunk:
        tokenizer.backend.encode_batch(chunk, add_special_tokens=False)
    return stats.bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-mb", type=float, default=8.0, help="input size (0: the whole corpus)")
    args = p.parse_args()
    emit({"what": "machine", **machine()})
    tokenizer = TokenStore(token_store()).load_tokenizer()
    files = inputs(args.max_mb or float("inf"))
    times: dict[str, list[float]] = {"prepare": [], "raw_encode_batch": []}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in ("prepare", "raw_encode_batch")[:: 1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                if name == "prepare":
                    size = prepare(files, Path(tmp) / "store", tokenizer, overwrite=True)[
                        "input_bytes"
                    ]
                else:
                    raw_encode(files, tokenizer)
                times[name].append(time.perf_counter() - t0)
                emit({"what": "prepare_run", "impl": name, "repeat": rep,
                      "seconds": round(times[name][-1], 3)})  # fmt: skip
        shutil.rmtree(Path(tmp) / "store", ignore_errors=True)
    pairs = [r / q for q, r in zip(times["prepare"], times["raw_encode_batch"], strict=True)]
    emit({"what": "prepare_speed", "files": len(files), "input_mb": round(size / 1e6, 2),
          "prepare_mb_per_s": round(size / 1e6 / statistics.median(times["prepare"]), 2),
          "raw_mb_per_s": round(size / 1e6 / statistics.median(times["raw_encode_batch"]), 2),
          "ratio_prepare_over_raw": round(statistics.median(pairs), 3)})  # fmt: skip


if __name__ == "__main__":
    main()
