"""Config machinery: TOML + dotted overrides, unknown keys named with the nearest valid ones."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blankfill.config import (
    ConfigError,
    CorruptConfig,
    DecodingConfig,
    FinetuneRunConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    apply_overrides,
    from_dict,
    load_config,
    to_dict,
)
from blankfill.hub import read_model_config


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
    with pytest.raises(ConfigError, match=r"^--hiden_size: unknown key; did you mean hidden_size"):
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


def test_partial_table_keeps_the_commands_own_defaults(tmp_path):
    """[optim] lr only: fine-tuning keeps its own schedule/betas/eps, not pretraining's."""
    toml = tmp_path / "ft.toml"
    toml.write_text("[optim]\nlr = 2e-5\n[finetune]\nepochs = 3\n")
    cfg = load_config(FinetuneRunConfig, toml, ["finetune.batch_size=8"])
    own = FinetuneRunConfig().optim
    assert cfg.optim.lr == 2e-5 and cfg.optim != OptimConfig(lr=2e-5)
    assert (cfg.optim.schedule, cfg.optim.beta2, cfg.optim.eps) == (own.schedule, 0.999, 1e-8)
    assert (cfg.finetune.epochs, cfg.finetune.batch_size) == (3, 8)


def test_errors_name_the_override_or_the_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[train]\nmax_steps = 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, toml, ["train.max_stepz=2"])
    assert str(e.value).startswith("--train.max_stepz: unknown key; did you mean train.max_steps?")
    assert str(toml) not in str(e.value)
    with pytest.raises(ConfigError, match=r"^--train.max_steps=x: train.max_steps must be an int"):
        load_config(RunConfig, toml, ["train.max_steps=x"])
    with pytest.raises(ConfigError, match=r"^train.max_steps must be >= 1"):  # the override's
        load_config(RunConfig, toml, ["train.max_steps=0"])
    toml.write_text("[train]\nmax_stepz = 5\n")
    with pytest.raises(ConfigError, match=r"run.toml: unknown config key 'train.max_stepz'"):
        load_config(RunConfig, toml)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Fill:
        decoding: DecodingConfig = dataclasses.field(default_factory=DecodingConfig)

    with pytest.raises(
        ConfigError, match=r"^--decoding.num_beam: .*did you mean decoding.num_beams"
    ):
        apply_overrides({}, ["decoding.num_beam=4"], Fill)
    assert load_config(Fill, None, ["decoding.num_beams=4"]).decoding.num_beams == 4


def test_one_source_of_truth_for_1d_or_2d_positions():
    with pytest.raises(ValueError, match="corrupt.block_positions=False but model.block_position"):
        load_config(RunConfig, None, ["corrupt.block_positions=false"])
    cfg = load_config(
        RunConfig, None, ["corrupt.block_positions=false", "model.block_position_encoding=false"]
    )
    assert not cfg.model.block_position_encoding and not cfg.corrupt.block_positions
