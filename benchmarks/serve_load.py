"""Load on ``blankfill serve``: latency and throughput with and without server-side batching.

Starts ``blankfill serve`` (a subprocess, on 127.0.0.1 only) on a random-weight model, sends
``--requests`` fill requests with ``--concurrency`` in flight at a time, and prints one JSON line
per mode: p50/p99/mean latency (ms), requests/s, how many completed and how many were dropped
(an error status or a failed connection), and the server's batch count. Every request decodes
exactly ``--new-tokens`` tokens (``min_length``), so both modes do the same work. The first line
names the machine.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import train_tokenizer

TEXTS = [
    "the cat sat on the [MASK] and looked at the birds.",
    "a dog ran in the park [MASK] the children played.",
    "Paris is the capital of [MASK].",
    "she opened the door and [gMASK]",
]


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "machine": cpu,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def make_model(folder: Path, layers: int, hidden: int) -> None:
    tok = train_tokenizer(
        [t.replace("[MASK]", "x").replace("[gMASK]", "") for t in TEXTS] * 50, 400
    )
    torch.manual_seed(0)
    cfg = tiny_config(
        vocab_size=tok.padded_vocab_size,
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=hidden // 32,
        max_sequence_length=256,
    )
    save_pretrained(GLM(cfg), folder, tok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, n: int, concurrency: int, new_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    dropped = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal dropped
            body = {
                "text": TEXTS[i % len(TEXTS)],
                "decoding": {"max_new_tokens": new_tokens, "min_length": new_tokens},
            }
            async with sem:
                start = time.perf_counter()
                try:
                    r = await client.post("/v1/fill", json=body)
                    ok = r.status_code == 200 and len(r.json()["fills"][0]["token_ids"]) > 0
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    dropped += 1

        before = (await client.get("/healthz")).json()["batches"]
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
        health = (await client.get("/healthz")).json()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0]
    return {
        "completed": len(latencies),
        "dropped": dropped,
        "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "p99_ms": round(q[98] * 1000, 1) if len(q) > 98 else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
        "req_per_s": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
        "server_batches": health["batches"] - before,
        "largest_batch_so_far": health["largest_batch"],
    }


def serve(folder: Path, port: int, max_batch: int, wait_ms: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "blankfill", "serve", "--model", str(folder), "--port", str(port)]
    cmd += ["--max-batch", str(max_batch), "--wait-ms", str(wait_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"blankfill serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("blankfill serve did not start within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16, help="server batch size when batching")
    ap.add_argument("--wait-ms", type=float, default=5.0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()
    print(json.dumps({"bench": "serve_load", **machine(), **vars(args)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        make_model(folder, args.layers, args.hidden)
        results = {}
        for mode, max_batch, wait in (
            ("no_batching", 1, 0.0),
            ("batching", args.max_batch, args.wait_ms),
        ):
            port = free_port()
            proc = serve(folder, port, max_batch, wait)
            try:
                url = f"http://127.0.0.1:{port}"
                asyncio.run(load(url, args.concurrency, args.concurrency, args.new_tokens))  # warm
                stats = asyncio.run(load(url, args.requests, args.concurrency, args.new_tokens))
            finally:
                proc.terminate()
                proc.wait(30)
            results[mode] = stats
            print(json.dumps({"mode": mode, "max_batch": max_batch, **stats}), flush=True)
        ratio = results["batching"]["req_per_s"] / max(results["no_batching"]["req_per_s"], 1e-9)
        print(json.dumps({"summary": "batching / no_batching req/s", "ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
