"""Metric sinks (JSONL, TensorBoard, none) and the throughput/MFU arithmetic.

A sink takes one flat ``{name: number}`` dict per step. Only rank 0 gets real sinks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Protocol

import torch

from ..config import ModelConfig
from ..safeio import guard_write

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"

#: Dense bf16 peak FLOP/s of common accelerators (vendor datasheets), matched by substring.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "4090": 165e12,
}


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


class NullSink:
    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """One JSON object per line: ``{"step": N, ...metrics}``; appends across resumes.

    Non-finite values are written as ``null`` (JSON has no NaN). ``start_step``: the step the run
    (re)starts from; rows logged after it by an earlier, killed process are dropped first, so that
    every step appears once after a resume. A full disk raises one ``DiskFullError`` naming the file.
    """

    def __init__(self, path: str | Path, start_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_step is not None and self.path.is_file():
            with guard_write(self.path):
                _drop_rows_after(self.path, start_step)
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with guard_write(self.path):
            self._f.write(json.dumps({"step": step, **finite_or_none(metrics)}) + "\n")

    def close(self) -> None:
        with guard_write(self.path):
            self._f.close()


def finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """Non-finite floats replaced by None (``null`` in JSON)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()
    }


def _drop_rows_after(path: Path, step: int) -> None:
    """Rewrite ``path`` (atomically) without the rows past ``step`` and any half-written line."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        log.info("%s: dropped %d row(s) logged after step %d (a run stopped early)", path,
                 dropped, step)  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


class TensorBoardSink:
    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self._w.add_scalar(k, v, step)

    def close(self) -> None:
        self._w.close()


class MultiSink:
    def __init__(self, sinks: list[MetricSink]) -> None:
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for s in self.sinks:
            s.log(step, metrics)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def default_sinks(run_dir: Path, tensorboard: bool, start_step: int | None = None) -> MetricSink:
    """``metrics.jsonl`` in the run folder, plus TensorBoard events when installed and wanted.

    ``start_step``: see ``JsonlSink``."""
    sinks: list[MetricSink] = [JsonlSink(run_dir / METRICS_NAME, start_step)]
    if tensorboard:
        try:
            sinks.append(TensorBoardSink(run_dir / "tensorboard"))
        except ImportError:
            log.debug("tensorboard not installed; metrics go to %s only", METRICS_NAME)
    return MultiSink(sinks)


def train_flops(cfg: ModelConfig, tokens: int, seq_len: int, targets: int) -> float:
    """Approximate training FLOPs (forward + backward = 3x forward) for one step.

    Per token: 2 x the block parameters (12 h^2 L) plus attention scores 2 x 2 L T h; per target
    row: the tied output layer, 2 V h. Embedding lookups are free.
    """
    h, L = cfg.hidden_size, cfg.num_layers
    per_token = 2 * 12 * h * h * L + 4 * L * seq_len * h
    return 3.0 * (per_token * tokens + 2 * cfg.vocab_size * h * targets)


def peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """Peak FLOP/s per device: the configured value, or the table for known GPUs, or 0."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_FLOPS.items():
            if key in name:
                return value
    return 0.0


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl merged per step; a key logged twice (a resumed run): the last wins.

    ``null`` (a non-finite value) is read as NaN. A malformed line (the half-written last line of
    a killed run) is skipped with a warning naming it.
    """
    rows: dict[int, dict] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                step = row["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: not a metrics row (JSON with a step); skipped", path, n)
                continue
            row = {k: math.nan if v is None else v for k, v in row.items()}
            rows.setdefault(step, {}).update(row)
    return [rows[k] for k in sorted(rows)]


__all__ = [
    "JsonlSink",
    "MetricSink",
    "NullSink",
    "default_sinks",
    "peak_flops",
    "read_metrics",
    "train_flops",
]
