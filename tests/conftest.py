"""Shared fixtures: seeded, deterministic, offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture
def golden_dir() -> Path:
    path = SHARED_DATA / "golden"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"golden vectors not found at {path} (../shared is absent)")
    return path


@pytest.fixture
def benchmarks_dir() -> Path:
    path = SHARED_DATA / "benchmarks"
    if not path.is_dir():
        pytest.skip(f"benchmark data not found at {path} (../shared is absent)")
    return path


@pytest.fixture
def corpus_dir() -> Path:
    path = SHARED_DATA / "corpus"
    if not (path / "manifest.jsonl").is_file():
        pytest.skip(f"corpus not found at {path} (../shared is absent)")
    return path
