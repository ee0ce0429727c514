"""``make bench``: run every benchmark, then write benchmarks/RESULTS.md and benchmarks/results.png.

    python benchmarks/run_all.py [--scale 1] [--only data train ...]

Each benchmark is a script printing JSON lines (peers alternated in its own process); this runs
them one after another, keeps their lines in ``benchmarks/results/NAME.jsonl`` and summarises
them with the machine, the date and the load average. ``--scale`` (or ``BENCH_SCALE``) multiplies
the measuring time and repeats: 1 keeps the whole run to a few minutes on a quiet 2-core
machine; 3 or more gives steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import REPO, machine

HERE = REPO / "benchmarks"
OUT = HERE / "results"


def commands(scale: int) -> dict[str, list[str]]:
    s = max(1, scale)
    return {
        "data": ["data_throughput.py", "--seconds", str(1.5 * s)],
        "loader": ["loader_wait.py", "--steps", str(40 * s)],
        "train": ["train_speed.py", "--repeats", str(1 + s), "--steps", "1"],
        "bf16": ["bf16_curve.py", "--steps", str(300 if s == 1 else 300 * s)],
        "generate": ["generate.py", "--repeats", str(2 + s), "--new-tokens", "32"],
        "prepare": ["prepare_speed.py", "--repeats", str(1 + s), "--max-mb", str(2 * s)],
    }


def run(name: str, argv: list[str]) -> list[dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-u", str(HERE / argv[0]), *argv[1:]],
        cwd=HERE, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    rows = []
    for line in proc.stdout.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    status = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
    print(f"{name}: {status}, {len(rows)} lines, {time.perf_counter() - t0:.0f} s", flush=True)
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=int(os.environ.get("BENCH_SCALE", "1")))
    p.add_argument("--only", nargs="*", default=None, help="a subset of the benchmark names")
    args = p.parse_args()
    before = machine()
    results = {}
    for name, argv in commands(args.scale).items():
        if args.only and name not in args.only:
            old = OUT / f"{name}.jsonl"  # keep earlier results of the others in the report
            if old.is_file():
                results[name] = [json.loads(x) for x in old.read_text().splitlines() if x]
            continue
        results[name] = run(name, argv)
    from report import write_report

    write_report(results, before, machine(), args.scale)
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")


if __name__ == "__main__":
    main()
