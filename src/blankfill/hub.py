"""A model folder's ``config.json``, both directions: ours and the official hub format (spec §1.10).

Reading: ``read_model_config(path)`` accepts ours (``{"format": "blankfill", ...}`` or a run's
``{"model": {...}}``) and the hub's (``model_type == "glm"``). Writing: ``hub_config(cfg)`` gives
the hub's fields, with ours that have no hub name kept under ``"blankfill"`` so a round trip is
exact. The only module that knows the hub format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .configtools import ConfigError, field_types, from_dict, nearest, to_dict

# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

#: Hub ``config.json`` keys (spec §1.10) that carry no information for us, or must hold one value.
HUB_IGNORED_KEYS = frozenset(
    {
        "model_type",
        "architectures",
        "auto_map",
        "checkpoint_activations",
        "checkpoint_num_layers",
        "parallel_output",
        "pool_token",
        "spell_func",
        "spell_length",
        "torch_dtype",
        "transformers_version",
        "bad_words_id",
        "_name_or_path",
        "tokenizer_class",
    }
)
#: Our ModelConfig fields that have no hub name, kept in a hub config.json under this key.
HUB_OURS_KEY = "blankfill"
HUB_REQUIRED_VALUES = {"attention_scale": 1.0, "relative_encoding": False, "output_predict": True}


def model_config_from_hub(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Read the official hub ``config.json`` fields (spec §1.10) into a ModelConfig."""
    ours: dict[str, Any] = {}
    ours_fields = field_types(ModelConfig)
    for key, value in data.items():
        if key in HUB_REQUIRED_VALUES:
            if value != HUB_REQUIRED_VALUES[key]:
                raise ConfigError(
                    f"{source}: {key}={value!r} is not supported (GLM releases use "
                    f"{HUB_REQUIRED_VALUES[key]!r})"
                )
        elif key in ours_fields:
            ours[key] = value
        elif key == HUB_OURS_KEY and isinstance(value, dict):  # gelu etc., absent from the hub
            ours.update(value)
        elif key not in HUB_IGNORED_KEYS:
            raise ConfigError(
                f"{source}: unknown hub config key {key!r}{nearest(key, ours_fields)}"
            )
    return from_dict(ModelConfig, ours)


def is_hub_config(data: dict[str, Any]) -> bool:
    return data.get("model_type") == "glm"


def read_model_config(path: str | Path, **overrides: Any) -> ModelConfig:
    """Read ``config.json`` (ours or the official hub format) and apply field overrides."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"missing {path}: a model folder needs config.json") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    if is_hub_config(data):
        cfg = model_config_from_hub(data, source=str(path))
    else:
        data = dict(data.get("model", data))
        data.pop("format", None)
        try:
            cfg = from_dict(ModelConfig, data, prefix="model.")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return cfg.replace(**overrides) if overrides else cfg


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

#: Fields every hub repo carries with one value (P-tuning and Megatron leftovers included).
HUB_FIXED: dict[str, Any] = {
    "architectures": ["GLMModel"],
    "attention_scale": 1.0,
    "auto_map": {
        "AutoConfig": "configuration_glm.GLMConfig",
        "AutoModel": "modeling_glm.GLMModel",
        "AutoModelForMultipleChoice": "modeling_glm.GLMForMultipleChoice",
        "AutoModelForSeq2SeqLM": "modeling_glm.GLMForConditionalGeneration",
    },
    "checkpoint_activations": False,
    "checkpoint_num_layers": 1,
    "model_type": "glm",
    "output_predict": True,
    "parallel_output": True,
    "pool_token": "cls",
    "relative_encoding": False,
    "spell_func": "lstm",
    "spell_length": None,
    "torch_dtype": "float32",
    "transformers_version": "4.23.1",
}
#: ModelConfig fields that are hub fields under the same name.
HUB_FIELDS = (
    "attention_dropout_prob",
    "block_position_encoding",
    "embedding_dropout_prob",
    "hidden_size",
    "initializer_range",
    "max_sequence_length",
    "num_attention_heads",
    "num_layers",
    "output_dropout_prob",
    "vocab_size",
)


def hub_config(cfg: ModelConfig, dtype: Any = "float32") -> dict[str, Any]:
    """The official hub ``config.json`` for ``cfg``; our extra fields go under ``"blankfill"``.

    ``dtype``: the weights' dtype (``torch.float16`` or ``"float16"``), recorded as ``torch_dtype``.

    The hub port ignores the ``blankfill`` entry; ``read_model_config`` reads it back, so the
    round trip keeps e.g. ``gelu``.
    """
    ours = to_dict(cfg)
    fixed = {**HUB_FIXED, "torch_dtype": str(dtype).removeprefix("torch.")}
    extra = {k: v for k, v in ours.items() if k not in HUB_FIELDS}
    return dict(sorted({**fixed, **{k: ours[k] for k in HUB_FIELDS}, HUB_OURS_KEY: extra}.items()))
