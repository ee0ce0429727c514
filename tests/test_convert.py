"""Official checkpoints in and out: golden parity, MP merge, hub round trip, refusals and errors."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from blankfill import GLM, cli
from blankfill.config import ConfigError
from blankfill.convert import (
    KEY_TABLE,
    expected_shapes,
    merge_model_parallel,
    rule_for,
    split_model_parallel,
)
from blankfill.pretrained import convert_folder, load_pretrained, read_checkpoint, save_pretrained
from blankfill.testing import tiny_config

ATOL = 1e-5


def _golden_logits(model, golden_dir, ref_file):
    inp = load_file(str(golden_dir / "inputs_logits.safetensors"))
    ref = load_file(str(golden_dir / ref_file))
    with torch.no_grad():
        out = model(inp["input_ids"], inp["position_ids"], context_len=inp["attention_mask"])
        causal = model(inp["causal.input_ids"])
    return (out, ref["logits"]), (causal, ref["causal.logits"])


def _random_model(**overrides) -> GLM:
    model = GLM(tiny_config(**overrides)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # nothing 0 or 1, so a skipped LayerNorm/bias shows up
        for p in model.parameters():
            p.copy_(torch.empty(p.shape).normal_(0, 0.2, generator=g))
    return model


# ------------------------------------------------------------------------------------------
# Golden checkpoint: hub folder -> blankfill (and -> hub -> blankfill), official logits
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gelu,ref_file", [("erf", "inputs_logits.safetensors"), ("tanh", "logits_orig.safetensors")]
)
def test_golden_converts_and_matches_official_logits(golden_dir, tmp_path, gelu, ref_file):
    ours = convert_folder(golden_dir, tmp_path / "ours", gelu=gelu)
    assert json.loads((ours / "config.json").read_text())["format"] == "blankfill"
    hub = convert_folder(ours, tmp_path / "hub", "hub")
    for folder in (ours, hub):
        model = load_pretrained(folder)
        assert model.config.gelu == gelu  # kept through the hub layout
        for out, ref in _golden_logits(model, golden_dir, ref_file):
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    # the exported hub weights are the golden tensors, bitwise
    src, back = (
        load_file(str(golden_dir / "model.safetensors")),
        load_file(str(hub / "model.safetensors")),
    )
    assert src.keys() == back.keys() and all(torch.equal(src[k], back[k]) for k in src)


def test_hub_bin_with_prefix_head_keys_and_shards(golden_dir, tmp_path, caplog):
    state = load_file(str(golden_dir / "model.safetensors"))
    cfg = json.loads((golden_dir / "config.json").read_text())
    want = load_pretrained(golden_dir, gelu="erf")

    # pytorch_model.bin with the hub port's glm. prefix and glm-2b's unused head (issue #178)
    binned = tmp_path / "bin"
    binned.mkdir()
    (binned / "config.json").write_text(json.dumps(cfg))
    head = {"dense.weight": torch.ones(2, 2), "out_proj.bias": torch.ones(2)}
    torch.save({**{"glm." + k: v for k, v in state.items()}, **head}, binned / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING):
        got = load_pretrained(binned, gelu="erf")
    assert "dense.weight" in caplog.text and "out_proj.bias" in caplog.text

    # sharded safetensors with an index
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(cfg))
    keys = sorted(state)
    weight_map = {}
    for i, part in enumerate((keys[::2], keys[1::2])):
        save_file({k: state[k] for k in part}, str(sharded / f"model-{i}.safetensors"))
        weight_map.update({k: f"model-{i}.safetensors" for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    got2 = load_pretrained(sharded, gelu="erf")

    for model in (got, got2):
        for k, v in want.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------
# Original training checkpoints, model-parallel
# ------------------------------------------------------------------------------------------


def _official_split(state, ways):
    """The official mpu layout, written out independently of blankfill.convert.

    ColumnParallelLinear(stride s): the master weight is cut into s*ways row blocks and rank r
    takes blocks r, r+ways, ... (qkv: s=3); VocabParallelEmbedding and h_to_4h (s=1): row block r;
    RowParallelLinear: column block r, bias whole; everything else whole.
    """
    shards = [{} for _ in range(ways)]
    for key, t in state.items():
        for r in range(ways):
            if "query_key_value" in key:
                blocks = torch.split(t, t.shape[0] // (3 * ways), 0)
                piece = torch.cat(blocks[r::ways], 0)
            elif "word_embeddings" in key or "dense_h_to_4h" in key:
                piece = torch.split(t, t.shape[0] // ways, 0)[r]
            elif key.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
                piece = torch.split(t, t.shape[1] // ways, 1)[r]
            else:
                piece = t
            shards[r][key] = piece.clone()
    return shards


def _mp_attention_mlp(x, shards, layer, heads):
    """One layer's attention (causal) and MLP computed the model-parallel way: per-rank partial
    products summed (the all-reduce), then the replicated row-parallel bias."""
    p = f"transformer.layers.{layer}."
    T = x.shape[0]
    att = (
        sum(
            _rank_attention(
                x,
                s[p + "attention.query_key_value.weight"],
                s[p + "attention.query_key_value.bias"],
                heads // len(shards),
                T,
            )
            @ s[p + "attention.dense.weight"].T
            for s in shards
        )
        + shards[0][p + "attention.dense.bias"]
    )
    mlp = (
        sum(
            torch.nn.functional.gelu(
                x @ s[p + "mlp.dense_h_to_4h.weight"].T + s[p + "mlp.dense_h_to_4h.bias"]
            )
            @ s[p + "mlp.dense_4h_to_h.weight"].T
            for s in shards
        )
        + shards[0][p + "mlp.dense_4h_to_h.bias"]
    )
    return att, mlp


def _rank_attention(x, w, b, heads, T):
    q, k, v = (x @ w.T + b).chunk(3, -1)  # each [T, D/ways]: the rank's heads, contiguous
    q, k, v = (t.view(T, heads, -1).transpose(0, 1) for t in (q, k, v))  # [h, T, Dh]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return ctx.transpose(0, 1).reshape(T, -1)


def test_official_mp_layout_is_model_parallel_and_matches_split():
    model = _random_model()
    state = model.state_dict()
    shards = _official_split(state, 2)
    # our split equals the official one, bitwise, and merging undoes it
    ours = split_model_parallel(state, 2)
    for a, b in zip(shards, ours, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    merged = merge_model_parallel(shards)
    assert all(torch.equal(merged[k], state[k]) for k in state)
    # the layout really is the MP computation: 2 ranks' partial sums == 1 rank
    x = torch.randn(5, model.config.hidden_size)
    heads = model.config.num_attention_heads
    for got, want in zip(
        _mp_attention_mlp(x, shards, 1, heads), _mp_attention_mlp(x, [state], 1, heads), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ways", [2, 4])
def test_mp_training_checkpoint_merges_to_the_same_logits(tmp_path, ways):
    model = _random_model()
    it = tmp_path / "ckpt" / "1000"
    it.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("1000\n")
    for r, shard in enumerate(_official_split(model.state_dict(), ways)):
        ckpt = {
            "module": shard,
            "mp_world_size": ways,
            "iteration": 1000,
            "np_rng_state": np.random.get_state(),  # numpy arrays: data, allowed
            "random_rng_state": random.getstate(),
            "torch_rng_state": torch.get_rng_state(),
        }
        torch.save(ckpt, it / f"mp_rank_{r:02d}_model_states.pt")
    # no config.json: inferred from the shapes, heads given (the tiny model has 16-dim heads)
    loaded = load_pretrained(tmp_path / "ckpt", num_attention_heads=4)
    cfg = loaded.config
    assert (cfg.vocab_size, cfg.num_layers, cfg.max_sequence_length) == (384, 2, 64)
    ids = torch.randint(0, 384, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, context_len=5), model(ids, context_len=5), atol=0, rtol=0
        )
    # and through the CLI into a hub folder
    assert (
        cli.main(
            [
                "convert",
                "--from",
                str(tmp_path / "ckpt"),
                "--to",
                str(tmp_path / "hub"),
                "--to-format",
                "hub",
                "--set",
                "num_attention_heads=4",
            ]
        )
        == 0
    )
    hub_cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert hub_cfg["model_type"] == "glm" and hub_cfg["num_attention_heads"] == 4


# ------------------------------------------------------------------------------------------
# Round trip and the table
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_round_trip_blankfill_hub_blankfill_is_identity(tmp_path, weights):
    model = _random_model(gelu="erf", block_position_encoding=False)
    a = save_pretrained(model, tmp_path / "a")
    hub = convert_folder(a, tmp_path / "hub", "hub", weights=weights)
    assert (
        hub / ("model.safetensors" if weights == "safetensors" else "pytorch_model.bin")
    ).is_file()
    b = convert_folder(hub, tmp_path / "b")
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_fp16_is_kept_and_table_covers_the_model(tmp_path):
    model = _random_model()
    state = {k: v.half() for k, v in model.state_dict().items()}
    assert set(expected_shapes(model.config)) == set(state)
    assert all(rule_for(k) is not None for k in state)
    assert len({r.key for r in KEY_TABLE}) == len(KEY_TABLE)
    (tmp_path / "h").mkdir()
    save_file(state, str(tmp_path / "h" / "model.safetensors"))
    save_pretrained(model, tmp_path / "cfg")
    (tmp_path / "h" / "config.json").write_text((tmp_path / "cfg" / "config.json").read_text())
    hub = convert_folder(tmp_path / "h", tmp_path / "hub", "hub")
    assert json.loads((hub / "config.json").read_text())["torch_dtype"] == "float16"
    assert (
        load_file(str(hub / "model.safetensors"))["word_embeddings.weight"].dtype == torch.float16
    )


# ------------------------------------------------------------------------------------------
# Errors: one line each
# ------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would run code (it would create the sentinel file)."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_pickle_that_needs_code_is_refused(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    save_pretrained(_random_model(), tmp_path / "good")
    (folder / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    sentinel = tmp_path / "pwned"
    state = dict(_random_model().state_dict(), extra=_Payload(sentinel))
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"refused: unpickling it needs code \(.*open"):
        load_pretrained(folder)
    assert not sentinel.exists()
    # a custom class (no __reduce__ trick) is refused too, and the CLI prints one line
    torch.save({"module": {"w": torch.zeros(1)}, "x": _Custom()}, folder / "pytorch_model.bin")
    assert cli.main(["convert", "--from", str(folder), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "_Custom" in err
    assert not (tmp_path / "out").exists()


def test_cli_model_overrides_replace_the_source_config(tmp_path, capsys):
    save_pretrained(_random_model(), tmp_path / "src")
    argv = ["convert", "--from", str(tmp_path / "src"), "--to", str(tmp_path / "erf")]
    assert cli.main([*argv, "--model.gelu=erf", "--set", "attention=eager"]) == 0
    cfg = json.loads((tmp_path / "erf" / "config.json").read_text())
    assert (cfg["gelu"], cfg["attention"], cfg["num_layers"]) == ("erf", "eager", 2)
    capsys.readouterr()
    assert cli.main([*argv[:-1], str(tmp_path / "x"), "--model.gelu=relu"]) == 2
    assert "--model.gelu=relu: model.gelu must be one of 'tanh', 'erf'" in capsys.readouterr().err


class _Custom:
    pass


def test_missing_corrupt_and_misshaped(tmp_path):
    with pytest.raises(ConfigError, match="model folder not found"):
        load_pretrained(tmp_path / "nope")
    good = save_pretrained(_random_model(), tmp_path / "good")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "config.json").write_text((good / "config.json").read_text())
    with pytest.raises(ConfigError, match="no weights in"):
        load_pretrained(folder)

    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes((good / "model.safetensors").read_bytes()[:500])
    with pytest.raises(ConfigError, match="not a readable torch checkpoint"):
        load_pretrained(folder)
    (folder / "pytorch_model.bin").unlink()

    state = load_file(str(good / "model.safetensors"))
    state["transformer.layers.1.mlp.dense_4h_to_h.weight"] = torch.zeros(64, 128)
    save_file(state, str(folder / "model.safetensors"))
    msg = r"'transformer.layers.1.mlp.dense_4h_to_h.weight' has shape \(64, 128\) but the config needs \(64, 256\)"
    with pytest.raises(ConfigError, match=msg):
        read_checkpoint(folder)

    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json"):
        load_pretrained(folder)


def test_missing_mp_rank_and_sentencepiece(tmp_path):
    shards = split_model_parallel(_random_model().state_dict(), 2)
    torch.save({"module": shards[1]}, tmp_path / "mp_rank_01_model_states.pt")
    with pytest.raises(ConfigError, match=r"ranks \[1\] are not 0..0"):
        load_pretrained(tmp_path)
    from blankfill.folder import load_folder_tokenizer

    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "cog-pretrain.model").write_bytes(b"not really")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install sentencepiece"):
            load_folder_tokenizer(spm)
    assert load_folder_tokenizer(tmp_path) is None


# ------------------------------------------------------------------------------------------
# Official tokenizer files
# ------------------------------------------------------------------------------------------


def test_official_bert_vocab_converts_to_our_tokenizer(tmp_path):
    tokenizer = pytest.importorskip("blankfill.tokenizer")
    src = save_pretrained(_random_model(), tmp_path / "src")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"]
    (src / "vocab.txt").write_text("\n".join(words) + "\n")
    (src / "tokenizer_config.json").write_text('{"tokenizer_class": "GLMBertTokenizer"}')
    out = convert_folder(src, tmp_path / "out")
    assert (out / "vocab.txt").is_file() and (out / "tokenizer_config.json").is_file()
    ours = tokenizer.load_tokenizer(out)  # our tokenizer.json + special_tokens.json were written
    assert (out / "tokenizer.json").is_file()
    assert ours.special.sop == len(words) and ours.special.eos == 0  # spec §2: BERT eos = [PAD]
    assert ours.encode("the cats [MASK]") == [5, 6, 10, 4]
    hub = convert_folder(out, tmp_path / "hub", "hub")
    assert (hub / "vocab.txt").read_bytes() == (src / "vocab.txt").read_bytes()


def test_copy_gmask_row_for_glm_10b_chinese():
    from blankfill.convert import copy_gmask_row

    emb = torch.randn(50048, 2)
    out = copy_gmask_row({"word_embeddings.weight": emb})["word_embeddings.weight"]
    assert torch.equal(out[50009], emb[50007]) and not torch.equal(emb[50009], emb[50007])
    assert torch.equal(out[:50009], emb[:50009]) and torch.equal(out[50010:], emb[50010:])
    with pytest.raises(ConfigError, match="only 384 rows"):
        copy_gmask_row(_random_model().state_dict())
