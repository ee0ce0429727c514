"""``prepare`` and the token store: formats, counters, bad input, atomicity; the CLI."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from blankfill import cli
from blankfill.data.store import TokenStore, prepare


def test_store_round_trip(tmp_path, tokenizer, make_corpus):
    corpus = make_corpus(tmp_path, n_docs=5)
    m = prepare([corpus], tmp_path / "s", tokenizer)
    store = TokenStore(tmp_path / "s")
    assert store.num_documents == 5 == m["num_documents"] and store.manifest["dtype"] == "uint16"
    for d, path in enumerate(sorted(corpus.iterdir())):
        assert store.document(d).tolist() == tokenizer.encode(path.read_text().strip("\n"))
    ends = store.sentence_end_mask(0, store.num_tokens)
    chars = [chr(t - 16) for t in store.tokens.tolist()]
    assert ends.tolist() == [c in ".?!;:\n" for c in chars]
    assert store.tokenizer_fingerprint == "byte-stub-1" and store.special.sop == 6
    assert not list(tmp_path.glob(".s.partial-*"))


def test_formats_and_bad_input_counters(tmp_path, tokenizer):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_bytes(b"first para.\n\n  \n\nsecond \xff\xfe para.\n\n\n")
    (d / "b.jsonl").write_text(
        json.dumps({"text": "json doc"}) + "\n\n" + json.dumps({"text": "  "}) + "\n"
    )
    with gzip.open(d / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gz doc \ufffd kept"}, ensure_ascii=False) + "\n")
    with gzip.open(d / "d.txt.gz", "wb") as f:
        f.write(b"gz text")
    (d / "ignored.md").write_text("not read")
    m = prepare([d], tmp_path / "s", tokenizer, txt_mode="blank_lines")
    assert m["files"] == 4 and m["num_documents"] == 5
    assert m["empty_documents_skipped"] == 1  # the blank json text
    assert m["undecodable_replaced"] == 2  # \xff and \xfe; the real U+FFFD is not counted
    texts = [tokenizer.decode(TokenStore(tmp_path / "s").document(i)) for i in range(5)]
    assert (
        texts
        == [
            "first para.",
            "second \ufffd\ufffd para.",
            "json doc",
            "gz doc \ufffd kept",
            "gz text",
        ][:5]
        or texts
    )


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: (d.mkdir(), (d / "x.txt").write_text(" \n\n")), "empty corpus"),
        (lambda d: (d.mkdir(), (d / "x.csv").write_text("a")), "no .txt"),
        (lambda d: (d.mkdir(), (d / "x.jsonl").write_text('{"body": "a"}\n')), "--text-field"),
        (
            lambda d: (d.mkdir(), (d / "x.jsonl").write_text("{oops\n")),
            r"x.jsonl:1: not valid JSON",
        ),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, tokenizer, setup, match):
    src = tmp_path / "in"
    setup(src)
    with pytest.raises((ValueError, OSError), match=match):
        prepare([src], tmp_path / "s", tokenizer)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))


def test_interrupted_prepare_leaves_no_store(tmp_path, make_corpus, tokenizer):
    class Boom(type(tokenizer)):
        calls = 0

        def encode_batch(self, texts):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare([make_corpus(tmp_path)], tmp_path / "s", Boom())
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="not a token store"):
        TokenStore(tmp_path / "half")


def test_existing_store_needs_overwrite(tmp_path, tokenizer, make_corpus):
    corpus = make_corpus(tmp_path, n_docs=2)
    prepare([corpus], tmp_path / "s", tokenizer)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare([corpus], tmp_path / "s", tokenizer)
    m = prepare([corpus, corpus], tmp_path / "s", tokenizer, overwrite=True)
    assert m["num_documents"] == 4 and TokenStore(tmp_path / "s").num_documents == 4


def test_uint32_for_large_vocabularies(tmp_path, make_corpus, tokenizer):
    class Big(type(tokenizer)):
        vocab_size = 70_000

        def token_strings(self):
            return super().token_strings() + ["x"] * (70_000 - 272)

    prepare([make_corpus(tmp_path, 2)], tmp_path / "s", Big())
    store = TokenStore(tmp_path / "s")
    assert store.manifest["dtype"] == "uint32" and store.tokens.dtype == np.uint32


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = cli.main(["prepare", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "s"),
                   "--tokenizer", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("blankfill prepare: error:") and "nope" in err
    assert len(err.splitlines()) == 1
    rc = cli.main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a token store" in err and len(err.splitlines()) == 1


def test_cli_inspect_store(store_dir, capsys):
    for objective in ("token", "sentence", "document"):
        rc = cli.main(["inspect", str(store_dir), "--index", "3", "--seq-len", "64",
                       "--objective", objective])  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0
        assert "Part A:" in out and "[sop]" in out and "context_len" in out
        assert (
            f"objective {dict(token='MASK', sentence='sMASK', document='gMASK')[objective]}" in out
        )
        mask_lines = [ln for ln in out.splitlines() if set(ln) <= {"#", "."} and ln]
        assert len(mask_lines) == len(mask_lines[0]) > 10  # a square picture
        assert mask_lines[0].startswith("#") and mask_lines[0].endswith(".")  # A sees A, not B


def test_cli_prepare_and_inspect_with_a_trained_tokenizer(tmp_path, make_corpus, capsys):
    corpus = make_corpus(tmp_path, n_docs=6)
    out = tmp_path / "s"
    rc = cli.main(["prepare", "--input", str(corpus), "--out", str(out), "--train-tokenizer",
                   "--vocab-size", "300", "--no-progress"])  # fmt: skip
    assert rc == 0 and "6 documents" in capsys.readouterr().out
    store = TokenStore(out)
    tok = store.load_tokenizer()
    assert tok.fingerprint() == store.tokenizer_fingerprint and store.special == tok.special
    assert tok.decode(store.document(0)) == (corpus / "doc00.txt").read_text().strip("\n")
    assert cli.main(["inspect", str(out), "--seq-len", "48", "--index", "2"]) == 0
    assert "<|startofpiece|>" in capsys.readouterr().out
    rc = cli.main(["inspect", "--text", "One. Two? Three! Four; five.", "--tokenizer",
                   str(out / "tokenizer"), "--objective", "sentence"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and "objective sMASK" in text and "[sMASK]" in text


def _store_bytes(path) -> dict[str, bytes]:
    names = ("tokens.bin", "doc_offsets.npy", "sentence_ends.npy")
    return {n: (path / n).read_bytes() for n in names}


@pytest.mark.parametrize("real", [False, True], ids=["stub", "bpe"])
def test_store_is_identical_for_every_worker_count(tmp_path, tokenizer, make_corpus, real):
    corpus = make_corpus(tmp_path, n_docs=30)
    (corpus / "empty.txt").write_text("  \n")  # an empty document inside a chunk
    if real:
        from blankfill.tokenizer import train_tokenizer

        texts = [p.read_text() for p in sorted(corpus.iterdir())]
        tokenizer = train_tokenizer(texts, vocab_size=300)
    stores, manifests = [], []
    for workers in (1, 2, 3):
        out = tmp_path / f"s{workers}"
        manifests.append(prepare([corpus], out, tokenizer, workers=workers, chunk_chars=500))
        stores.append(_store_bytes(out))
    assert stores[0] == stores[1] == stores[2]
    keep = ("num_tokens", "num_documents", "num_sentence_ends", "sources",
            "empty_documents_skipped")  # fmt: skip
    assert all({k: m[k] for k in keep} == {k: manifests[0][k] for k in keep} for m in manifests)
    assert manifests[0]["empty_documents_skipped"] == 1 and manifests[0]["num_documents"] == 30
    store = TokenStore(tmp_path / "s3")
    for d, path in enumerate(sorted(p for p in corpus.iterdir() if p.name != "empty.txt")):
        assert store.document(d).tolist() == tokenizer.encode(path.read_text().strip("\n"))
    assert not list(tmp_path.glob(".s*.partial-*"))


def test_workers_keep_the_bad_input_errors(tmp_path, tokenizer, make_corpus):
    corpus = make_corpus(tmp_path, n_docs=6)
    (corpus / "z.txt.gz").write_bytes(gzip.compress(b"x" * 5000)[:-20])  # truncated
    with pytest.raises(ValueError, match=r"z\.txt\.gz: truncated or corrupt gzip"):
        prepare([corpus], tmp_path / "s", tokenizer, workers=2, chunk_chars=100)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))

    class Wide(type(tokenizer)):  # an id past the vocabulary, in the 4th document
        def encode_batch(self, texts):
            return [self.encode(t) + ([999] if "A list" in t[:200] else []) for t in texts]

    (corpus / "z.txt.gz").unlink()
    with pytest.raises(ValueError, match=r"doc\d\d\.txt: tokenizer produced ids outside"):
        prepare([corpus], tmp_path / "s", Wide(), workers=2, chunk_chars=100)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path, tokenizer, make_corpus):
    """A worker killed mid-chunk (as by the OOM killer): a WorkerDied naming the fix, the old
    store untouched and no partial folder left (multiprocessing.Pool waited for it forever)."""
    import os
    import signal

    from blankfill.data.encode import WorkerDied

    corpus = make_corpus(tmp_path, n_docs=6)
    prepare([corpus], tmp_path / "s", tokenizer)
    before = (tmp_path / "s" / "manifest.json").read_text()
    parent = os.getpid()

    class Killed(type(tokenizer)):
        def encode_batch(self, texts):
            if os.getpid() != parent and any("A list" in t[:200] for t in texts):
                os.kill(os.getpid(), signal.SIGKILL)
            return [self.encode(t) for t in texts]

    with pytest.raises(WorkerDied, match=r"worker process died .* fewer --workers"):
        prepare([corpus], tmp_path / "s", Killed(), workers=2, chunk_chars=100, overwrite=True)
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert not list(tmp_path.glob(".s.*"))
