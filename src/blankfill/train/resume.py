"""Resuming and initialising a run: the checkpoint to resume, RNG states, ``train.init_from``,
and the SIGINT/SIGTERM flag the loop checks after each step."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from ..model import GLM
from ..pretrained import load_weights
from . import checkpoint as ckpt_io
from .distributed import DistInfo

log = logging.getLogger(__name__)


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def find_resume(run_dir: Path, resume: str | None, info: DistInfo):
    if not resume:
        return None
    if resume != "auto":
        return Path(resume), ckpt_io.load_checkpoint(resume, info)
    found = ckpt_io.load_latest(run_dir, info)
    if found is None:
        log.info("no checkpoint in %s: starting fresh", run_dir / ckpt_io.CHECKPOINTS)
    return found


def init_from(path: str | Path, model: GLM, tokenizer: Any = None) -> None:
    """Load the weights of a model folder (ours, the hub layout, model-parallel shards) into
    ``model`` for continued pretraining; the folder's tokenizer must be the run's."""
    from ..pretrained import load_folder_tokenizer, read_checkpoint

    src_cfg, state = read_checkpoint(path)
    diff = {k: (v, getattr(model.config, k)) for k, v in vars(src_cfg).items()
            if getattr(model.config, k, v) != v}  # fmt: skip
    shape_keys = ("vocab_size", "num_layers", "hidden_size", "num_attention_heads")
    if any(k in diff for k in shape_keys) or "max_sequence_length" in diff:
        shown = ", ".join(f"{k}={a} (run: {b})" for k, (a, b) in diff.items())
        raise ValueError(f"train.init_from={path} has {shown}; set the model section to match")
    if diff:
        log.warning("train.init_from=%s differs from the run's model config in %s", path, diff)
    if tokenizer is not None and hasattr(tokenizer, "fingerprint"):
        theirs = load_folder_tokenizer(path)
        if theirs is not None and theirs.fingerprint() != tokenizer.fingerprint():
            raise ValueError(
                f"train.init_from={path} was trained with another tokenizer than this run's "
                "(fingerprints differ); prepare the store with that folder's tokenizer "
                f"(blankfill prepare --tokenizer {path} ...)"
            )
    load_weights(model, state, source=str(path))
    log.info("initialised from %s", path)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step, saves and returns."""

    def __init__(self) -> None:
        self.stop = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop, self.signum = True, signum
        log.warning("received %s: saving a checkpoint, then stopping", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def pinned_choice(
    configured: str, loaded: dict[str, Any] | None, key: str, device: torch.device
) -> str:
    """``train.precision`` / ``train.cpu_linears``; "auto" on resume on the same kind of device:
    the checkpoint's choice (a new measurement may differ, and the resumed steps with it)."""
    meta = loaded["meta"] if loaded is not None else {}
    same = configured == "auto" and meta.get("device_type", "cpu") == device.type
    return str(meta.get(key, "auto")) if same else configured


__all__ = ["StopFlag", "find_resume", "init_from", "pinned_choice", "rng_state", "set_rng_state"]
