"""Model folders: ``config.json`` + ``model.safetensors`` (+ tokenizer files), read and written.

``load_pretrained`` reads our own config or the official hub fields (spec §1.10), and official
state-dict keys with or without the hub port's ``glm.`` prefix. Weights are read with safetensors
only here: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, read_model_config, to_dict
from .model import GLM

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, with a one-line error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "glm.") -> dict[str, torch.Tensor]:
    """Drop the hub port's ``glm.`` prefix where every model key carries it."""
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    return state


def load_weights(model: GLM, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load official-layout weights into ``model``, with clear errors for missing/misshaped keys.

    Unexpected keys (e.g. glm-2b's unused ``dense.*``/``out_proj.*`` head) are skipped with a warning.
    """
    state = strip_prefix(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ConfigError(
            f"{source}: missing {len(missing)} weight(s), first {missing[0]!r}; is this a GLM "
            "checkpoint of the same configuration?"
        )
    for key, want in expected.items():
        got = state[key].shape
        if tuple(got) != tuple(want.shape):
            raise ConfigError(
                f"{source}: tensor {key!r} has shape {tuple(got)} but the config needs "
                f"{tuple(want.shape)}; the checkpoint and config.json do not match"
            )
    extra = sorted(k for k in state if k not in expected)
    if extra:
        log.warning("%s: ignoring %d unused key(s): %s", source, len(extra), ", ".join(extra[:6]))
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def load_pretrained(path: str | Path, **overrides: Any) -> GLM:
    """Load a GLM from a folder with ``config.json`` and ``model.safetensors``.

    Args:
        path: the model folder.
        **overrides: config fields to replace, e.g. ``gelu="erf"`` to match the hub port.

    Returns:
        The model in eval mode, on the CPU, in float32.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"model folder not found: {path}")
    cfg = read_model_config(path / CONFIG_NAME, **overrides)
    model = GLM(cfg)
    load_weights(model, load_state_dict_file(path / WEIGHTS_NAME), source=str(path / WEIGHTS_NAME))
    return model.eval()


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_pretrained(model: GLM, path: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and the tokenizer, if given) to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / WEIGHTS_NAME)
    cfg = {"format": "blankfill", **to_dict(model.config)}
    atomic_write_text(path / CONFIG_NAME, json.dumps(cfg, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(path)
    return path
