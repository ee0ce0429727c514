"""LoRA fine-tuning (``finetune.lora_rank = r``) with ``peft``, the optional ``lora`` extra.

``add_lora`` injects rank-r adapters into every linear layer of the blocks (``query_key_value``,
``attention.dense``, ``dense_h_to_4h``, ``dense_4h_to_h``) with ``lora_alpha = 2 r`` and freezes
every other GLM weight; a classifier head stays fully trained. The saved model folder is a plain
GLM folder either way: with ``finetune.lora_merge = true`` the adapters are merged,
``W + (alpha / r) B A``; with ``false`` the base weights are saved unchanged and the adapters go
to ``adapter.safetensors`` + ``adapter.json`` beside them (``load_adapter`` puts them back).
Merging works on the gathered state dict, so it is the same under DDP and FSDP.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
ADAPTER_NAME = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
_A, _B, _BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer."


def add_lora(model: nn.Module, rank: int) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place (peft); only the adapters stay trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ValueError(
            "finetune.lora_rank needs the peft package: pip install 'blankfill[lora]'"
        ) from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(TARGETS))
    return inject_adapter_in_model(config, model)


def split_state(
    state: dict[str, torch.Tensor], rank: int, merge: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(GLM state with the plain keys, adapter state) of a LoRA model's state dict.

    ``merge``: the adapters are added into the base weights and the adapter state is empty."""
    scale = 2.0  # lora_alpha / r
    base: dict[str, torch.Tensor] = {}
    adapters = {k: v for k, v in state.items() if _A in k or _B in k}
    for key, value in state.items():
        if key in adapters:
            continue
        plain = key.replace(_BASE, ".")
        if merge and key.endswith(_BASE + "weight"):
            stem = key[: -len(_BASE + "weight")]
            a, b = state[stem + _A].float(), state[stem + _B].float()  # [r, in], [out, r]
            value = (value.float() + scale * b @ a).to(value.dtype)
        base[plain] = value
    return base, ({} if merge else adapters)


def save_adapter(folder: Path, adapters: dict[str, torch.Tensor], rank: int) -> None:
    from ..safeio import save_safetensors

    save_safetensors({k: v.contiguous() for k, v in adapters.items()}, folder / ADAPTER_NAME)
    info = {"rank": rank, "alpha": 2 * rank, "targets": list(TARGETS)}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(info, indent=2) + "\n")


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put a folder's unmerged adapters back on ``model`` (a GLM loaded from that folder)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / ADAPTER_CONFIG).read_text())
    model = add_lora(model, int(info["rank"]))
    missing = model.load_state_dict(load_file(str(folder / ADAPTER_NAME)), strict=False)
    assert not missing.unexpected_keys, f"adapter keys not in the model: {missing.unexpected_keys}"
    return model


__all__ = ["ADAPTER_NAME", "TARGETS", "add_lora", "load_adapter", "save_adapter", "split_state"]
