"""Checkpoints: written atomically, verified on resume, the last N kept.

Layout of ``RUN_DIR/checkpoints/step-00000100/``::

    config.json         the resolved run config (``load_pretrained`` reads its "model" section)
    model.safetensors   full model weights (official key names; a model folder by itself)
    tokenizer.json, special_tokens.json   when the run has a tokenizer
    optimizer.pt        full (unsharded) AdamW state, parameter names as keys
    rank00000.pt        per rank: data-loader state and RNG states
    trainer.json        step, tokens seen, world size, and the size and sha256 of every file
                        above; written last, so a folder without it is incomplete

A checkpoint whose files do not match the sizes or checksums in ``trainer.json`` (truncated, or
damaged in place) is skipped by ``--resume auto`` with a warning; if every checkpoint is damaged,
resume refuses (``NoUsableCheckpoint``) instead of starting over on top of them. A full disk while
writing removes the temporary folder and raises one ``DiskFullError``; the previous checkpoint is
untouched.

Everything ``.pt`` holds tensors and plain containers only, and is read with
``torch.load(weights_only=True)``: nothing is unpickled. A folder is written as ``.tmp-step-*`` and
renamed when complete; a kill mid-write leaves only a temporary folder that resume ignores.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..pretrained import CONFIG_NAME, WEIGHTS_NAME, load_state_dict_file, torch_load_tensors
from ..safeio import file_checksums, guard_write, save_safetensors, sha256_file, torch_save
from .distributed import DistInfo, barrier

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAINER_NAME = "trainer.json"
OPTIMIZER_NAME = "optimizer.pt"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint folder that is incomplete, truncated or does not fit this run."""


class NoUsableCheckpoint(CheckpointError):
    """Every checkpoint of a run folder is damaged: resuming would start over on top of them."""


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.pt"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders (named ``step-N``), newest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    info: DistInfo,
    model_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict[str, Any] | None,
    rank_state: dict[str, Any],
    config: dict[str, Any],
    meta: dict[str, Any],
    tokenizer: Any = None,
    keep_last: int = 3,
    write_shards: Callable[[Path], None] | None = None,
) -> Path:
    """Write one checkpoint atomically; collective (every rank calls it).

    Args:
        run_dir: the run folder.
        step: optimizer steps taken.
        info: this process; rank 0 writes the shared files, every rank its own ``rankNNNNN.pt``.
        model_state: full CPU state dict (rank 0; None elsewhere).
        optimizer_state: full optimizer state (rank 0; None elsewhere).
        rank_state: this rank's loader state and RNG states (tensors / plain containers).
        config: the resolved run config as a dict (written as ``config.json``).
        meta: extra trainer.json fields (tokens seen, ...).
        tokenizer: saved with ``tokenizer.save(folder)`` when given.
        keep_last: checkpoints kept after this one is written.
        write_shards: called on every rank with the temporary folder (sharded FSDP states via
            ``train/dcp.py``); then ``model_state``/``optimizer_state`` may be None.

    Returns:
        The checkpoint folder.
    """
    final = checkpoint_path(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    previous = next((p.name for p in list_checkpoints(run_dir) if p != final), None)
    hint = (
        f"{previous} is intact: free some space, then resume with --resume auto"
        if previous
        else "free some space and run again"
    )
    with guard_write(final, tmp, hint=hint):
        if info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier(info)
        torch_save(rank_state, tmp / rank_file(info.rank))
        if write_shards is not None:
            write_shards(tmp)
        barrier(info)
        if info.is_main:
            assert write_shards or model_state is not None, "rank 0 writes the model"
            if model_state is not None:
                save_safetensors(
                    {k: v.contiguous() for k, v in model_state.items()},
                    tmp / WEIGHTS_NAME,
                    metadata={"format": "pt"},
                )
            if optimizer_state is not None:
                torch_save(optimizer_state, tmp / OPTIMIZER_NAME)
            (tmp / CONFIG_NAME).write_text(json.dumps({"format": "blankfill", **config}, indent=2))
            if tokenizer is not None:
                tokenizer.save(tmp)
            files = {
                str(p.relative_to(tmp)): p.stat().st_size
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            trainer = {
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": info.world_size,
                **meta,
                "files": files,
                "sha256": file_checksums(tmp),
            }
            (tmp / TRAINER_NAME).write_text(json.dumps(trainer, indent=2))
            _fsync_dir(tmp)
    if info.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        prune(run_dir, keep_last)
    barrier(info)
    return final


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and stale temporary folders."""
    for old in list_checkpoints(run_dir)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
    root = Path(run_dir) / CHECKPOINTS
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def read_trainer_json(ckpt: Path, verify: bool = True, model_only: bool = False) -> dict[str, Any]:
    """``trainer.json`` after checking that every file it lists is present with its size and
    (``verify``; checkpoints written before checksums were recorded have none) its sha256.
    ``model_only``: check only what a model folder needs (not the optimizer and rank states)."""
    path = ckpt / TRAINER_NAME
    if not path.is_file():
        hint = "; it is a run folder: use --resume auto" if (ckpt / CHECKPOINTS).is_dir() else ""
        raise CheckpointError(f"{ckpt}: incomplete (no {TRAINER_NAME}){hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None

    def wanted(name: str) -> bool:
        return not model_only or not name.endswith(".pt")

    for name, size in meta.get("files", {}).items():
        if not wanted(name):
            continue
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"{ckpt}: missing {name}")
        if f.stat().st_size != size:
            raise CheckpointError(
                f"{ckpt}: {name} has {f.stat().st_size} bytes, expected {size} (truncated?)"
            )
    if verify:
        for name, digest in meta.get("sha256", {}).items():
            if wanted(name) and sha256_file(ckpt / name) != digest:
                raise CheckpointError(
                    f"{ckpt}: {name} does not match its recorded sha256 (damaged on disk?)"
                )
    return meta


def newest_good_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run folder whose model files verify (sizes and sha256);
    damaged ones are skipped with a warning.

    Raises:
        CheckpointError: the run folder has no checkpoint that verifies.
    """
    damaged = []
    for ckpt in list_checkpoints(run_dir):
        try:
            read_trainer_json(ckpt, model_only=True)
            return ckpt
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", ckpt.name, e)
            damaged.append(ckpt.name)
    found = f" ({', '.join(damaged)} damaged)" if damaged else ""
    raise CheckpointError(
        f"{run_dir} has no usable checkpoint{found}; train it with `blankfill pretrain` or "
        "pass a model folder"
    )


def model_folder(path: str | Path) -> Path:
    """``path`` itself, or for a pretraining run folder (one holding ``checkpoints/``) its newest
    good checkpoint (logged), so that ``--model RUN`` works where a model folder is expected."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir() and not (path / WEIGHTS_NAME).exists():
        ckpt = newest_good_checkpoint(path)
        log.info("%s is a run folder: using its newest checkpoint %s", path, ckpt.name)
        return ckpt
    return path


def _torch_load(path: Path) -> Any:
    """Tensors and plain containers only; a pickle that needs code is refused in one line."""
    try:
        return torch_load_tensors(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Full (unsharded, CPU) states keyed by parameter name: one format for 1 process, DDP and FSDP2
# --------------------------------------------------------------------------------------------


def _fsdp_options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(module: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The module's full CPU state dict (collective under FSDP2; rank 0 gets the data)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_fsdp_options(cpu_offload=True))
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def full_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool
) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (collective under FSDP2)."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(module, optimizer, options=_fsdp_options(cpu_offload=True))
    sd = optimizer.state_dict()
    index_to_name = {
        i: n for g in sd["param_groups"] for i, n in zip(g["params"], g["names"], strict=True)
    }
    state = {
        index_to_name[i]: {
            k: v.to("cpu", copy=True) if torch.is_tensor(v) else v for k, v in st.items()
        }
        for i, st in sd["state"].items()
    }
    groups = [{**g, "params": list(g["names"])} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded: bool
) -> None:
    """Load a name-keyed optimizer state from ``full_optimizer_state``."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(module, optimizer, state, options=_fsdp_options())
        return
    current = optimizer.state_dict()
    name_to_index = {
        n: i for g in current["param_groups"] for i, n in zip(g["params"], g["names"], strict=True)
    }
    missing = [n for n in name_to_index if n not in state["state"]] if state["state"] else []
    if missing or len(state["param_groups"]) != len(current["param_groups"]):
        raise CheckpointError(
            f"optimizer state does not fit this model (missing {missing[:3]}); was the checkpoint "
            "written for another model config?"
        )
    groups = [
        {**saved, "params": cur["params"]}
        for saved, cur in zip(state["param_groups"], current["param_groups"], strict=True)
    ]
    optimizer.load_state_dict(
        {
            "state": {name_to_index[n]: st for n, st in state["state"].items()},
            "param_groups": groups,
        }
    )


def load_checkpoint(ckpt: str | Path, info: DistInfo) -> dict[str, Any]:
    """Read and verify a checkpoint: ``{"meta", "model", "optimizer", "rank"}`` for this rank."""
    ckpt = Path(ckpt)
    meta = read_trainer_json(ckpt)
    if meta.get("format") == "dcp":  # sharded (train/dcp.py): any world size, loaded after
        own = ckpt / rank_file(info.rank)  # wrapping; a rank the checkpoint lacks takes rank 0's
        return {"meta": meta, "dcp": ckpt, "rank": _torch_load(own if own.is_file() else
                                                               ckpt / rank_file(0))}  # fmt: skip
    if meta.get("world_size", 1) != info.world_size:
        raise CheckpointError(
            f"{ckpt} was written by {meta.get('world_size')} process(es), this run has "
            f"{info.world_size}; resume with the same number of processes"
        )
    try:
        model = load_state_dict_file(ckpt / WEIGHTS_NAME)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return {"meta": meta, "model": model, "optimizer": _torch_load(ckpt / OPTIMIZER_NAME),
            "rank": _torch_load(ckpt / rank_file(info.rank))}  # fmt: skip


def load_latest(
    run_dir: str | Path, info: DistInfo, warn: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies and loads; broken ones are skipped with a warning.

    Returns None when the run has no checkpoint folder at all (a fresh start).

    Raises:
        NoUsableCheckpoint: there are checkpoints and none of them loads.
    """
    warn = warn or log.warning
    damaged: list[str] = []
    for ckpt in list_checkpoints(run_dir):
        try:
            return ckpt, load_checkpoint(ckpt, info)
        except CheckpointError as e:
            if "process(es)" in str(e):
                raise
            warn(f"skipping checkpoint {ckpt.name}: {e}")
            damaged.append(ckpt.name)
    if damaged:
        root = Path(run_dir) / CHECKPOINTS
        raise NoUsableCheckpoint(
            f"no usable checkpoint in {root}: {', '.join(damaged)} "
            f"{'is' if len(damaged) == 1 else 'are all'} damaged (see the warnings above); "
            f"to start over, move {root} and {Path(run_dir) / 'metrics.jsonl'} away or set "
            "train.out_dir to a new folder"
        )
    return None


__all__ = ["CheckpointError", "NoUsableCheckpoint", "checkpoint_path", "full_model_state",
           "full_optimizer_state", "list_checkpoints", "load_checkpoint", "load_latest",
           "load_optimizer_state", "model_folder", "newest_good_checkpoint", "prune",
           "read_trainer_json", "save_checkpoint"]  # fmt: skip
