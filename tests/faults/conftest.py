"""Fixtures for the fault tests: a tiny run config, a small real store, a CLI runner, a small disk.

``small_disk``: a folder on a tmpfs of a few MiB when the tests run as root and ``mount`` works
(a real full disk); elsewhere a folder whose writers are patched to fail with ENOSPC the way the
real ones do (safetensors' ``SafetensorError``, the ``OSError`` under torch's ``RuntimeError``,
numpy's ``OSError``). Which one ran is printed in the test report (``-rA`` shows it), never skipped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from blankfill import cli
from blankfill.config import RunConfig, from_dict, to_dict
from blankfill.model import GLM
from blankfill.pretrained import save_pretrained
from blankfill.testing import tiny_config
from blankfill.tokenizer import load_tokenizer

TEXTS = [
    "The cat sat on the mat. Why is the sky blue? It rains; the ground is wet. "
    "A list: one, two, three. " * (3 + d % 5)
    for d in range(16)
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_config(out_dir, **sections) -> RunConfig:
    """The tiny model on ``SyntheticBatches``: steps take milliseconds."""
    data = {
        "model": to_dict(tiny_config()),
        "data": {"seq_len": 64},
        "optim": {"lr": 3e-3, "warmup": 0.05},
        "train": {"out_dir": str(out_dir), "max_steps": 4, "save_every": 2},
        "log": {"progress": False, "tensorboard": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (exit code, stdout, stderr)`` of ``blankfill ARGV`` in this process."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse: usage line + "blankfill VERB: error: ..."
            rc = e.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def error_line(err: str) -> str:
    """The one ``blankfill VERB: error: ...`` line of stderr (asserting there is exactly one and
    no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(TEXTS):
        (root / f"doc{i:02d}.txt").write_text(text + "\n")
    return root


@pytest.fixture(scope="session")
def store(tmp_path_factory, corpus) -> Path:
    """A real token store (byte-level BPE, 300 tokens) made by ``blankfill prepare``."""
    out = tmp_path_factory.mktemp("store") / "store"
    rc = cli.main(["prepare", "--input", str(corpus), "--out", str(out), "--train-tokenizer",
                   "--vocab-size", "300", "--no-progress"])  # fmt: skip
    assert rc == 0
    return out


class SmallDisk:
    """A folder that ``fill()`` makes full (tmpfs: a filler file; else: ENOSPC-raising writers)."""

    def __init__(self, path: Path, mounted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.mounted, self._mp = path, mounted, monkeypatch
        self.kind = "tmpfs" if mounted else "simulated ENOSPC"

    def fill(self, leave: int = 64 * 1024) -> None:
        """Leave ``leave`` bytes free (room for a metrics line, not for a checkpoint)."""
        if self.mounted:
            free = shutil.disk_usage(self.path).free
            with open(self.path / ".filler", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, max(free - leave, 1))
            return
        from safetensors import SafetensorError

        def no_space(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        def st_no_space(*a, **k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")  # fmt: skip

        import safetensors.torch

        from blankfill import safeio

        self._mp.setattr(safetensors.torch, "save_file", st_no_space)
        self._mp.setattr(safeio._RecordingWriter, "write", lambda self, b: no_space())
        self._mp.setattr(np, "save", no_space)

    def free_up(self) -> None:
        if self.mounted:
            (self.path / ".filler").unlink()
        else:
            self._mp.undo()

    def temporaries(self) -> list[str]:
        """Hidden temporary files/folders left anywhere under the disk."""
        return sorted(
            str(p.relative_to(self.path))
            for p in self.path.rglob(".*")
            if p.name not in (".filler", ".lock")
        )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, store) -> Path:
    """A tiny random model folder with the store's tokenizer."""
    tok = load_tokenizer(store / "tokenizer")
    path = tmp_path_factory.mktemp("model") / "m"
    save_pretrained(GLM(tiny_config(vocab_size=tok.padded_vocab_size)), path, tok)
    return path


@pytest.fixture
def small_disk(tmp_path, monkeypatch, request):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = False
    simulate = os.environ.get("BLANKFILL_TEST_SIMULATE_ENOSPC") == "1"  # to test the fallback
    if not simulate and os.geteuid() == 0 and shutil.which("mount"):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                           capture_output=True)  # fmt: skip
        mounted = r.returncode == 0
    disk = SmallDisk(path, mounted, monkeypatch)
    if not mounted:
        warnings.warn("no tmpfs (not root or mount refused): disk-full simulated", stacklevel=1)
    request.node.user_properties.append(("disk", disk.kind))
    yield disk
    if mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
