"""``prepare`` against raw ``tokenizers`` ``encode_batch`` on the same files (prints JSON lines).

    python benchmarks/prepare_speed.py [--repeats 2] [--max-mb 8] [--workers 1,2]
    python benchmarks/prepare_speed.py --gen-mb 300 --repeats 1   # a generated .jsonl.gz

The peer reads the same documents (``blankfill.data.sources.iter_documents``) and calls the
tokenizer backend's ``encode_batch`` on chunks of the same size, discarding the ids: the floor for
any prepare. ``prepare`` also maps ids to the store's dtype, finds sentence ends and writes the
store. They run back to back, in alternating order, with the store's trained tokenizer; wall
time (the tokenizer uses every core), input MB/s and the ratio prepare / raw (target >= 0.8),
for each ``--workers`` count. ``--gen-mb N`` first writes one ``.jsonl.gz`` of N MB of text
(the corpus cut into ~4 kB documents, repeated) and uses it instead: the streaming case. The
peak resident memory of each run (proportional set size of this process plus its worker
processes, summed, sampled every 50 ms from /proc) is reported, against the issue's 2 GB bound.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import tempfile
import threading
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


def generate_jsonl_gz(path: Path, mb: float) -> Path:
    """One ``.jsonl.gz`` holding ``mb`` MB of text: the corpus cut into ~4 kB documents."""
    from common import corpus_inputs

    docs: list[str] = []
    for f in list_input_files(corpus_inputs()):
        for doc in iter_documents(f, ReadStats()):
            part: list[str] = []
            for para in doc.split("\n\n"):
                part.append(para)
                if sum(map(len, part)) >= 4000:
                    docs.append("\n\n".join(part))
                    part = []
            if part:
                docs.append("\n\n".join(part))
    written = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as out:
        while written < mb * 1e6:
            for doc in docs:
                line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
                out.write(line)
                written += len(line.encode())
                if written >= mb * 1e6:
                    break
    return path


def _tree_rss() -> int:
    """Proportional resident bytes (PSS) of this process and every descendant, summed: a page
    shared by k processes (forked workers share the parent's) counts 1/k in each."""
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("Pss:")) * 1024
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


class PeakRSS:
    """Samples ``_tree_rss`` every ``every`` seconds while in the ``with`` block."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak = every, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
    p.add_argument(
        "--gen-mb",
        type=float,
        default=0.0,
        help="generate one .jsonl.gz of this many MB of text and use it instead",
    )
    p.add_argument("--workers", default="1,2", help="comma-separated prepare --workers counts")
    p.add_argument("--tmp", default=None, help="folder for the generated input and the store")
    p.add_argument(
        "--no-raw",
        action="store_true",
        help="skip the raw peer (a memory-bound run on a big input: half the time, no ratio)",
    )
    args = p.parse_args()
    emit({"what": "machine", **machine()})
    tokenizer = TokenStore(token_store()).load_tokenizer()
    workers = [int(w) for w in args.workers.split(",")]
    names = [*([] if args.no_raw else ["raw_encode_batch"]), *(f"prepare_w{w}" for w in workers)]
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, int] = dict.fromkeys(names, 0)
    size = 0
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        if args.gen_mb:
            t0 = time.perf_counter()
            files = [generate_jsonl_gz(Path(tmp) / "gen.jsonl.gz", args.gen_mb)]
            emit({"what": "generated", "text_mb": args.gen_mb,
                  "gz_mb": round(files[0].stat().st_size / 1e6, 1),
                  "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        else:
            files = inputs(args.max_mb or float("inf"))
        for rep in range(args.repeats):
            for name in names[:: 1 if rep % 2 == 0 else -1]:
                t0 = time.perf_counter()
                with PeakRSS() as rss:
                    if name == "raw_encode_batch":
                        raw_encode(files, tokenizer)
                    else:
                        w = int(name.removeprefix("prepare_w"))
                        m = prepare(files, Path(tmp) / "store", tokenizer, overwrite=True,
                                    workers=w)  # fmt: skip
                        size = m["input_bytes"]
                times[name].append(time.perf_counter() - t0)
                peaks[name] = max(peaks[name], rss.peak)
                emit({"what": "prepare_run", "impl": name, "repeat": rep,
                      "seconds": round(times[name][-1], 3),
                      "peak_rss_mb": round(rss.peak / 2**20)})  # fmt: skip
        shutil.rmtree(Path(tmp) / "store", ignore_errors=True)
    raw = times.get("raw_encode_batch")
    for w in workers:
        t = times[f"prepare_w{w}"]
        row = {"what": "prepare_speed", "workers": w, "files": len(files),
               "input_mb": round(size / 1e6, 2), "generated": bool(args.gen_mb),
               "prepare_mb_per_s": round(size / 1e6 / statistics.median(t), 2),
               "peak_rss_mb": round(peaks[f"prepare_w{w}"] / 2**20)}  # fmt: skip
        if raw:
            pairs = [r / q for q, r in zip(t, raw, strict=True)]
            row.update(raw_mb_per_s=round(size / 1e6 / statistics.median(raw), 2),
                       ratio_prepare_over_raw=round(statistics.median(pairs), 3),
                       raw_peak_rss_mb=round(peaks["raw_encode_batch"] / 2**20))  # fmt: skip
        emit(row)


if __name__ == "__main__":
    main()
