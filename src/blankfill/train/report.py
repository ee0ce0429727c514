"""What the loop reports: a step still on the device, the log line, small iterable helpers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from .engine import StepResult

T = TypeVar("T")


@dataclass
class Pending:
    """A step whose results are still on the device."""

    step: int  # steps taken, this one included
    lr: float
    result: StepResult
    tokens: int  # this rank's input tokens
    flops: float  # this rank's FLOPs without the output layer (host-known shapes)
    samples: torch.Tensor  # CPU: sample indices, named when the step is not finite


def take(it: Iterable[T], n: int) -> Iterator[T]:
    """The first ``n`` items of ``it``."""
    for i, b in enumerate(it):
        if i >= n:
            return
        yield b


def log_line(step: int, total: int, m: dict[str, float]) -> str:
    parts = [f"step {step}/{total}"]
    for k, v in m.items():
        if k == "skipped":
            continue
        fmt = ".2e" if k == "lr" else (".1%" if k == "mfu" else (".0f" if "per_s" in k else ".4f"))
        parts.append(f"{k} {v:{fmt}}")
    return " | ".join(parts)


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "glm.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


__all__ = ["Pending", "log_line", "strip_prefix", "take"]
