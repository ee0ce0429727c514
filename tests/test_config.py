"""Config machinery: TOML + dotted overrides, unknown keys named with the nearest valid ones."""

from __future__ import annotations

import json

import pytest

from blankfill.config import (
    ConfigError,
    CorruptConfig,
    ModelConfig,
    apply_overrides,
    from_dict,
    load_config,
    read_model_config,
    to_dict,
)


def test_round_trip_and_overrides(tmp_path):
    cfg = from_dict(ModelConfig, {"num_layers": 3, "gelu": "erf"})
    assert cfg.num_layers == 3 and cfg.gelu == "erf"
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    toml = tmp_path / "m.toml"
    toml.write_text("num_layers = 4\nhidden_size = 128\nnum_attention_heads = 4\n")
    cfg = load_config(ModelConfig, toml, ["hidden_size=256", "--block_position_encoding=false"])
    assert (cfg.num_layers, cfg.hidden_size, cfg.block_position_encoding) == (4, 256, False)


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'num_layer'.*'num_layers'"):
        from_dict(ModelConfig, {"num_layer": 2})
    with pytest.raises(ConfigError, match="'hiden_size'.*'hidden_size'"):
        apply_overrides({}, ["hiden_size=3"], ModelConfig)
    with pytest.raises(ConfigError, match="must be an integer"):
        apply_overrides({}, ["num_layers=two"], ModelConfig)
    with pytest.raises(ConfigError, match="must be one of 'tanh', 'erf'"):
        from_dict(ModelConfig, {"gelu": "relu"})


def test_validation_names_the_dotted_key():
    with pytest.raises(ConfigError, match=r"model.hidden_size \(100\) must be divisible"):
        from_dict(ModelConfig, {"hidden_size": 100, "num_attention_heads": 3})
    with pytest.raises(ValueError, match="corrupt.token_prob"):
        CorruptConfig(token_prob=0.5)


def test_hub_config_fields(tmp_path):
    hub = {
        "model_type": "glm",
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "vocab_size": 128,
        "max_sequence_length": 32,
        "attention_scale": 1.0,
        "relative_encoding": False,
        "output_predict": True,
        "block_position_encoding": True,
        "attention_dropout_prob": 0.1,
        "embedding_dropout_prob": 0.1,
        "output_dropout_prob": 0.1,
        "checkpoint_activations": False,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    }
    (tmp_path / "config.json").write_text(json.dumps(hub))
    cfg = read_model_config(tmp_path / "config.json", gelu="erf")
    assert (cfg.num_layers, cfg.vocab_size, cfg.gelu) == (2, 128, "erf")
    (tmp_path / "config.json").write_text(json.dumps({**hub, "attention_scale": 2.0}))
    with pytest.raises(ConfigError, match="attention_scale=2.0 is not supported"):
        read_model_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_model_config(tmp_path / "config.json")
