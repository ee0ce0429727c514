"""Model folders read and written: ours, the official hub layout, and original MP checkpoints.

A folder ``load_pretrained`` reads holds ``config.json`` (ours, or the official hub fields of spec
§1.10) and weights, found in this order:

- ``model.safetensors`` or ``model.safetensors.index.json`` (shards);
- ``pytorch_model.bin`` or ``pytorch_model.bin.index.json`` (shards);
- ``mp_rank_XX_model_states.pt``: an original training checkpoint (the model under ``module``,
  possibly model-parallel; also inside the iteration folder named by ``latest``). These carry no
  config: ``config.json`` is optional there and otherwise inferred from the shapes.

Keys may carry the hub port's ``glm.`` prefix. Pickled files are read with
``torch.load(weights_only=True)`` only: a file that needs code to unpickle is refused.
Tokenizers: ours (``tokenizer.json`` + ``special_tokens.json``) or the official files (BERT
``vocab.txt``, GPT-2/RoBERTa ``vocab.json`` + ``merges.txt``, the Chinese SentencePiece model).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import convert
from .config import ConfigError, ModelConfig, to_dict
from .hub import hub_config, read_model_config
from .model import GLM
from .safeio import follow_umask, guard_write, save_safetensors, torch_save

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
HUB_BIN_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
INDEX_SUFFIX = ".index.json"
MP_PATTERN = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
#: Our tokenizer files (written by ``Tokenizer.save``).
OUR_TOKENIZER_FILES = ("tokenizer.json", "special_tokens.json")
#: Official tokenizer and hub-code files, copied verbatim by ``convert_folder``.
OFFICIAL_TOKENIZER_FILES = (
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "cog-pretrain.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
HUB_CODE_FILES = ("configuration_glm.py", "modeling_glm.py", "tokenization_glm.py")


# --------------------------------------------------------------------------------------------
# Reading tensors
# --------------------------------------------------------------------------------------------


def _numpy_rng_globals() -> list[Any]:
    """numpy array/dtype reconstruction: data only; training checkpoints pickle numpy RNG state."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    rebuild = multiarray._reconstruct
    return [
        np.ndarray,
        np.dtype,
        type(np.dtype("uint32")),
        (rebuild, "numpy.core.multiarray._reconstruct"),
        (rebuild, "numpy._core.multiarray._reconstruct"),
    ]


def torch_load_tensors(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors; code-needing pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing weights file {path}")
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise ConfigError(
                f"{path}: refused: unpickling it needs code ({found.group(1)}), and blankfill only "
                "loads tensors (weights_only=True); re-save just the state dict with the code "
                "that wrote it if you trust the file"
            ) from None
        raise ConfigError(
            f"{path}: not a readable torch checkpoint (corrupt or truncated?)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: not a readable torch checkpoint ({reason})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one weights file (safetensors, or a pickled tensor dict read tensors-only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing weights file {path}")
    if path.suffix != ".safetensors":
        state = torch_load_tensors(path)
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ConfigError(f"{path}: expected a dict of tensors (a state dict)")
        return state
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{index}: not a shard index with a 'weight_map' ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        state.update(load_state_dict_file(index.parent / name))
    return state


def mp_shard_files(path: Path) -> list[Path]:
    """The ``mp_rank_XX_model_states.pt`` files of a training checkpoint, in rank order."""
    for marker in ("latest_checkpointed_iteration.txt", "latest"):
        if (path / marker).is_file():
            sub = path / (path / marker).read_text().strip()
            if sub.is_dir():
                path = sub
                break
    files = sorted(
        (int(m.group(1)), p)
        for p in path.glob("mp_rank_*_model_states.pt")
        if (m := MP_PATTERN.search(p.name))
    )
    ranks = [r for r, _ in files]
    if ranks and ranks != list(range(len(ranks))):
        raise ConfigError(f"{path}: model-parallel ranks {ranks} are not 0..{len(ranks) - 1}")
    return [p for _, p in files]


def _load_mp(files: list[Path]) -> dict[str, torch.Tensor]:
    shards = []
    for f in files:
        ckpt = torch_load_tensors(f)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("module"), dict):
            raise ConfigError(f"{f}: expected a training checkpoint with the model under 'module'")
        shards.append(ckpt["module"])
    if len(shards) > 1:
        log.info("merging %d model-parallel ranks", len(shards))
    return convert.merge_model_parallel(shards)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a model folder (official keys as stored) and a description of its source."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"model folder not found: {path}")
    for name in (WEIGHTS_NAME, HUB_BIN_NAME):
        if (path / name).is_file():
            return load_state_dict_file(path / name), str(path / name)
        if (path / (name + INDEX_SUFFIX)).is_file():
            return _load_sharded(path / (name + INDEX_SUFFIX)), str(path / (name + INDEX_SUFFIX))
    files = mp_shard_files(path)
    if files:
        return _load_mp(files), f"{files[0].parent} (MP={len(files)})"
    if (path / "dcp").is_dir():  # a sharded FSDP training checkpoint (train/dcp.py)
        raise ConfigError(
            f"{path} is a sharded (FSDP) checkpoint; write a model folder from it with: "
            f"blankfill convert --from {path} --to DIR"
        )
    raise ConfigError(
        f"no weights in {path}: expected {WEIGHTS_NAME}, {HUB_BIN_NAME}, a shard index "
        "(*.index.json) or mp_rank_00_model_states.pt"
    )


def read_checkpoint(
    path: str | Path, **overrides: Any
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and checked state dict (our keys) of any folder ``load_pretrained`` accepts.

    Tensors keep their stored dtype. Raises a one-line ConfigError for a missing file, a corrupt or
    refused file, or a tensor whose shape does not fit the config.
    """
    path = Path(path)
    state, source = read_weights(path)
    state = convert.from_theirs(state, source)
    if (path / CONFIG_NAME).is_file() or not mp_shard_files(path):
        cfg = read_model_config(path / CONFIG_NAME, **overrides)
    else:
        cfg = convert.infer_config(state, **overrides)
    convert.check_state(state, cfg, source)
    return cfg, state


def load_weights(model: GLM, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load official-layout weights into ``model``, with clear errors for missing/misshaped keys.

    glm-2b's unused ``dense.*``/``out_proj.*`` head and any other unknown keys are skipped with a
    warning.
    """
    state = convert.from_theirs(state, source)
    convert.check_state(state, model.config, source)
    expected = model.state_dict()
    extra = sorted(k for k in state if k not in expected)
    if extra:
        log.warning("%s: ignoring %d unused key(s): %s", source, len(extra), ", ".join(extra[:6]))
    model.load_state_dict({k: state[k] for k in expected}, strict=True)


def load_pretrained(path: str | Path, **overrides: Any) -> GLM:
    """Load a GLM from a folder: ours, the official hub layout, or an original MP checkpoint.

    Args:
        path: the model folder (see the module docstring for what it may hold).
        **overrides: config fields to replace, e.g. ``gelu="erf"`` to match the hub port.

    Returns:
        The model in eval mode, on the CPU, in float32.
    """
    cfg, state = read_checkpoint(path, **overrides)
    model = GLM(cfg)
    load_weights(model, state, source=str(path))
    return model.eval()


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------


def load_folder_tokenizer(path: str | Path) -> Any | None:
    """The tokenizer of a model folder, or None if it has no tokenizer files.

    Ours and the official BERT / GPT-2 / RoBERTa files are read by ``tokenizer.load_tokenizer``;
    the Chinese SentencePiece model (``*.model``) needs the optional ``sentencepiece`` package.
    """
    path = Path(path)
    names = OUR_TOKENIZER_FILES + ("vocab.txt", "vocab.json")
    if any((path / name).is_file() for name in names):
        from .tokenizer import load_tokenizer

        return load_tokenizer(path)
    spm = sorted(path.glob("*.model"))
    return _sentencepiece_tokenizer(spm[0], path) if spm else None


def _sentencepiece_tokenizer(model_file: Path, path: Path) -> Any:
    from .tokenizer import Tokenizer  # spm names the missing sentencepiece package itself

    config = json.loads((path / CONFIG_NAME).read_text()) if (path / CONFIG_NAME).is_file() else {}
    if config.get("bad_words_id") == [50009]:
        # glm-10b-chinese (spec §2): trained with [gMASK] = 50007 = eop; the hub converter copied
        # row 50007 to 50009, which the hub tokenizer uses for [gMASK]; never generate 50009.
        log.warning("%s: glm-10b-chinese: [gMASK] is 50009 (a copy of eop's row 50007)", path)
    return Tokenizer.from_sentencepiece(model_file)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with guard_write(path, tmp), os.fdopen(fd, "w") as f:
        f.write(text)
    follow_umask(tmp)
    os.replace(tmp, path)


def _dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next(iter(state.values())).dtype if state else torch.float32


def save_state(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    path: str | Path,
    to_format: Literal["blankfill", "hub"] = "blankfill",
    weights: Literal["safetensors", "bin"] = "safetensors",
) -> Path:
    """Write a config and a state dict (our keys) as our folder or the official hub layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if to_format == "blankfill":
        config, weights = {"format": "blankfill", **to_dict(cfg)}, "safetensors"
    else:
        config, state = hub_config(cfg, _dtype(state)), convert.to_theirs(state)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    name = WEIGHTS_NAME if weights == "safetensors" else HUB_BIN_NAME
    tmp = path / f".{name}.tmp"
    with guard_write(path / name, tmp):
        if weights == "safetensors":
            save_safetensors(state, tmp, metadata={"format": "pt"})
        else:
            torch_save({k: v.clone() for k, v in state.items()}, tmp)
    os.replace(tmp, path / name)
    for stale in {WEIGHTS_NAME, HUB_BIN_NAME} - {name}:  # never leave two weight files behind
        (path / stale).unlink(missing_ok=True)
    atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return path


def save_pretrained(model: GLM, path: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (and the tokenizer, if given) to ``path``."""
    path = save_state(model.state_dict(), model.config, path)
    if tokenizer is not None:
        tokenizer.save(path)
    return path


def convert_folder(
    src: str | Path,
    dst: str | Path,
    to_format: Literal["blankfill", "hub"] = "blankfill",
    weights: Literal["safetensors", "bin"] = "safetensors",
    copy_gmask_row: bool = False,
    **overrides: Any,
) -> Path:
    """Convert any folder ``load_pretrained`` reads into ours or the hub layout; dtypes are kept.

    Tokenizer files are copied; official ones are also written as ours (blankfill format) when the
    tokenizer can be built here. ``copy_gmask_row``: see ``convert.copy_gmask_row``.
    """
    src, dst = Path(src), Path(dst)
    cfg, state = read_checkpoint(src, **overrides)
    if dst.resolve() == src.resolve():
        raise ConfigError(f"--to {dst} is the source folder; choose a new folder")
    if copy_gmask_row:
        state = convert.copy_gmask_row(state)
    final, dst = dst, dst.parent / f".{dst.name}.tmp-{os.getpid()}"  # renamed when complete
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dst, ignore_errors=True)
    with guard_write(final, dst):
        _write_converted(src, dst, state, cfg, to_format, weights)
        if final.exists():
            shutil.rmtree(final)
        os.replace(dst, final)
    log.info("wrote %s (%s format) from %s", final, to_format, src)
    return final


def _write_converted(src: Path, dst: Path, state, cfg, to_format, weights) -> None:
    save_state(state, cfg, dst, to_format, weights)
    names = OUR_TOKENIZER_FILES + OFFICIAL_TOKENIZER_FILES
    names += HUB_CODE_FILES if to_format == "hub" else ()
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            follow_umask(dst / name)
    if to_format == "blankfill" and not (src / OUR_TOKENIZER_FILES[0]).is_file():
        try:
            tokenizer = load_folder_tokenizer(src)
        except (ImportError, ValueError, OSError) as e:
            log.warning("tokenizer not converted: %s", e)
        else:
            if tokenizer is not None:
                if tokenizer.vocab_size > cfg.vocab_size:
                    log.warning(
                        "the tokenizer has %d tokens but the model only %d embedding rows",
                        tokenizer.vocab_size,
                        cfg.vocab_size,
                    )
                tokenizer.save(dst)
