"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): no rank gathers the state.

Under FSDP2 (``dist.checkpoint = "auto"`` with several processes, or ``"sharded"``) every rank
writes only its own shards of the model and of the AdamW state, keyed by parameter name, into
``step-N/dcp/``; the rest of the folder is as usual (config.json, tokenizer, ``rankNNNNN.pt``,
``trainer.json`` with ``"format": "dcp"``, written last, atomically by the same
``save_checkpoint``). DCP stores global shapes, so a checkpoint saved by N processes loads on M
(1, 2, 4 ...): each rank reads the pieces of its own new shards. The data-loader state a rank
resumes from is its own file, or rank 0's when the world grew (``checkpoint.load_checkpoint``) (``PretrainLoader`` keeps a global
sample count, so the stream continues where it stopped).

A DCP checkpoint is not a model folder; ``blankfill convert --from RUN/checkpoints/step-N --to
DIR`` (``sharded_to_folder``) writes one, reading the weights only, in one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import DistInfo

log = logging.getLogger(__name__)

DCP_DIR = "dcp"
FORMAT = "dcp"


@contextlib.contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns on every single-process save/load, even when asked for one: quiet that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled", category=UserWarning
        )
        yield


def use_sharded(checkpoint: str, strategy: str, info: DistInfo) -> bool:
    """Whether a run writes DCP checkpoints (``dist.checkpoint``: auto | sharded | full)."""
    if checkpoint == "auto":
        return info.distributed and strategy == "fsdp"
    return checkpoint == "sharded"


def is_sharded(ckpt: str | Path) -> bool:
    """Whether a checkpoint folder holds DCP shards (its trainer.json says so)."""
    path = Path(ckpt) / "trainer.json"
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def shard_writer(module: nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[Path], None]:
    """A ``save_checkpoint(write_shards=...)`` callback: every rank saves its shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    def write(folder: Path) -> None:
        model_sd, optim_sd = get_state_dict(module, optimizer)  # sharded: DTensors, no gather
        with _single_process_ok():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=folder / DCP_DIR,
                     no_dist=not torch.distributed.is_initialized())  # fmt: skip

    return write


def save_states(
    module: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool, sharded: bool
) -> dict[str, Any]:
    """The state arguments of ``save_checkpoint``: DCP shards, or full states (gathered on
    rank 0 under FSDP, model keys without the ``glm.`` prefix)."""
    from .checkpoint import full_model_state, full_optimizer_state
    from .report import strip_prefix

    if sharded:
        return {"model_state": None, "optimizer_state": None,
                "write_shards": shard_writer(module, optimizer)}  # fmt: skip
    return {"model_state": strip_prefix(full_model_state(module, fsdp)),
            "optimizer_state": full_optimizer_state(module, optimizer, fsdp)}  # fmt: skip


def load_sharded(ckpt: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint into an already wrapped module and its optimizer (any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _single_process_ok():
        dcp.load(state, checkpoint_id=Path(ckpt) / DCP_DIR,
                 no_dist=not torch.distributed.is_initialized())  # fmt: skip
    set_state_dict(module, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])  # fmt: skip


def read_sharded_model(ckpt: str | Path) -> tuple[Any, dict[str, torch.Tensor]]:
    """(model config, full state dict with our keys) of a DCP checkpoint, in one process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    from ..model import GLM
    from ..pretrained import CONFIG_NAME, read_model_config

    ckpt = Path(ckpt)
    cfg = read_model_config(ckpt / CONFIG_NAME)
    template = {f"glm.{k}": v for k, v in GLM(cfg).state_dict().items()}
    state = {"model": template}
    with _single_process_ok():  # the weights only, not the optimizer state
        planner = DefaultLoadPlanner(allow_partial_load=True)
        dcp.load(state, checkpoint_id=ckpt / DCP_DIR, no_dist=True, planner=planner)
    return cfg, {k[len("glm.") :]: v for k, v in state["model"].items()}


def sharded_to_folder(ckpt: str | Path, dst: str | Path) -> Path:
    """Write a plain model folder (config.json, model.safetensors, tokenizer) from a DCP
    checkpoint."""
    from ..pretrained import OUR_TOKENIZER_FILES, save_state

    ckpt, dst = Path(ckpt), Path(dst)
    cfg, state = read_sharded_model(ckpt)
    save_state(state, cfg, dst)
    for name in OUR_TOKENIZER_FILES:
        if (ckpt / name).is_file():
            shutil.copyfile(ckpt / name, dst / name)
    log.info("wrote %s from the sharded checkpoint %s", dst, ckpt)
    return dst


__all__ = [
    "DCP_DIR",
    "is_sharded",
    "load_sharded",
    "read_sharded_model",
    "save_states",
    "shard_writer",
    "sharded_to_folder",
    "use_sharded",
]
