"""Appendable stores: ``prepare(..., append=True)`` adds shards that read as one store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blankfill import cli
from blankfill.config import CorruptConfig, DataConfig
from blankfill.data.loader import PretrainLoader
from blankfill.data.store import FORMAT, FORMAT_SHARDED, TokenStore, prepare
from blankfill.tokenizer import SpecialTokens

SP = SpecialTokens(pad=0, eos=1, cls=2, mask=3, smask=4, gmask=5, sop=6, eop=7, sep=8, unk=9)


@pytest.fixture
def stores(tmp_path, tokenizer, make_corpus):
    """The same three corpora (different documents) as one store and as three shards."""
    parts = [make_corpus(tmp_path / f"p{i}", n_docs=7 + 3 * i, seed=i) for i in range(3)]
    prepare(parts, tmp_path / "one", tokenizer)
    prepare([parts[0]], tmp_path / "sharded", tokenizer)
    for i, part in enumerate(parts[1:]):
        prepare([part], tmp_path / "sharded", tokenizer, append=True, workers=1 + i)
    return TokenStore(tmp_path / "one"), TokenStore(tmp_path / "sharded")


def test_a_sharded_store_reads_as_one(stores):
    one, sharded = stores
    assert one.manifest["format"] == FORMAT and sharded.manifest["format"] == FORMAT_SHARDED
    assert len(sharded.shards) == 3 and len(one.shards) == 1
    for k in ("num_tokens", "num_documents", "num_sentence_ends", "empty_documents_skipped"):
        assert one.manifest[k] == sharded.manifest[k], k
    assert [s["documents"] for s in one.manifest["sources"]] == [
        s["documents"] for s in sharded.manifest["sources"]
    ]
    assert np.array_equal(one.doc_offsets, sharded.doc_offsets)
    assert one.tokens.tolist() == sharded.tokens.tolist()
    assert np.array_equal(one.sentence_ends, sharded.sentence_ends)
    n = one.num_tokens
    for d in range(one.num_documents):
        assert one.document(d).tolist() == sharded.document(d).tolist()
        a, b = one.doc_offsets[d], one.doc_offsets[d + 1]
        assert np.array_equal(one.tokens[a:b], sharded.tokens[a:b])
    rng = np.random.default_rng(0)
    bounds = [0, n, *sharded.shard_starts.tolist()]
    for a, b in [sorted(rng.integers(0, n + 1, 2)) for _ in range(300)] + [
        (x, y) for x in bounds for y in bounds if x <= y
    ]:
        assert np.array_equal(one.sentence_end_mask(a, b), sharded.sentence_end_mask(a, b))
        assert np.array_equal(one.tokens[a:b], sharded.tokens[a:b])
    assert one.tokens[n - 1] == sharded.tokens[-1] and one.tokens[7] == sharded.tokens[7]


def test_the_loader_streams_a_sharded_store_identically(stores):
    dcfg = DataConfig(seq_len=96, batch_size=4, num_workers=0, seed=5)
    ccfg = CorruptConfig(token_prob=0.5, sentence_prob=0.25, document_prob=0.25)
    batches = []
    for store in stores:
        it = iter(PretrainLoader(store.path, dcfg, ccfg, SP, rank=0, world_size=1))
        batches.append([next(it) for _ in range(6)])
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.position_ids, b.position_ids)
        assert torch.equal(a.objective, b.objective)


def test_append_refuses_another_tokenizer_and_keeps_the_store(tmp_path, tokenizer, make_corpus):
    corpus = make_corpus(tmp_path, n_docs=4)
    prepare([corpus], tmp_path / "s", tokenizer)
    before = (tmp_path / "s" / "manifest.json").read_text()

    class Other(type(tokenizer)):
        def fingerprint(self):
            return "another-tokenizer"

    with pytest.raises(ValueError, match=r"--tokenizer is not the tokenizer .*s was prepared"):
        prepare([corpus], tmp_path / "s", Other(), append=True)

    class Boom(type(tokenizer)):
        def encode_batch(self, texts):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([corpus], tmp_path / "s", Boom(), append=True)
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert not list((tmp_path / "s").rglob(".*partial*"))
    assert not (tmp_path / "s" / "shards").exists() or not any(
        (tmp_path / "s" / "shards").iterdir()
    )
    with pytest.raises(ValueError, match="not a token store"):
        prepare([corpus], tmp_path / "nope", tokenizer, append=True)
    m = prepare([corpus], tmp_path / "s", tokenizer, append=True)
    assert m["num_documents"] == 8 == TokenStore(tmp_path / "s").num_documents


def test_cli_append(tmp_path, make_corpus, capsys):
    corpus = make_corpus(tmp_path, n_docs=6)
    out = tmp_path / "s"
    args = ["prepare", "--input", str(corpus), "--out", str(out), "--no-progress"]
    assert cli.main([*args, "--train-tokenizer", "--vocab-size", "300"]) == 0
    assert cli.main([*args, "--train-tokenizer", "--append"]) == 2
    assert "--append keeps the store's tokenizer" in capsys.readouterr().err
    assert cli.main([*args, "--tokenizer", str(out / "tokenizer"), "--append",
                     "--workers", "2"]) == 0  # fmt: skip
    assert "in 2 shards: 12 documents" in capsys.readouterr().out
    store = TokenStore(out)
    assert np.array_equal(store.document(0), store.document(6))
