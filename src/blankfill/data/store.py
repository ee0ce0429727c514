"""The token store written by ``blankfill prepare`` and read by the loader.

A store is a folder:

- ``tokens.bin``: every document's token ids back to back, a flat memmap (``uint16`` when the
  vocabulary fits, else ``uint32``); no specials are inserted (the sampler adds ``[CLS]``/eos);
- ``doc_offsets.npy``: int64 [D + 1], document d is ``tokens[offsets[d]:offsets[d + 1]]``;
- ``sentence_ends.npy``: int64, sorted indices into ``tokens`` of tokens that end a sentence (their
  text holds one of ``. ? ! ; : 。 ？ ！ ； …`` or a newline, spec §3.1);
- ``tokenizer/``: the tokenizer that made it (``tokenizer.save``);
- ``manifest.json``: format, dtype, counts, special ids, tokenizer fingerprint, sources and the
  bad-input counters. It is written last, and the folder is built under a temporary name and
  renamed at the end, so an interrupted run never leaves a store that looks complete.

``prepare(..., append=True)`` adds later documents as a shard ``shards/NNNNN/`` (the same three
files, offsets and sentence ends local to the shard), built under a temporary name, then listed
in ``manifest["shards"]`` (format ``/2``) by replacing ``manifest.json`` atomically: a killed
append leaves the store as it was. The folder's own files are shard 0; ``TokenStore`` reads the
shards as one store (global token indices and document numbers, shards in order).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..safeio import guard_write
from .encode import CHUNK_CHARS
from .sources import ReadStats, TxtMode, list_input_files
from .write import remove_stale_partials, write_shard

log = logging.getLogger(__name__)

FORMAT = "blankfill-token-store/1"
FORMAT_SHARDED = "blankfill-token-store/2"  # /1 plus appended shards (``manifest["shards"]``)
SENTENCE_END_CHARS = (".", "?", "!", ";", ":", "。", "？", "！", "；", "…", "\n")
SPECIAL_FIELDS = ("pad", "eos", "cls", "mask", "smask", "gmask", "sop", "eop", "sep", "unk")


def special_to_dict(special: Any) -> dict[str, int | None]:
    """The special ids of a ``SpecialTokens`` (or any object with those attributes) as a dict."""
    return {k: getattr(special, k, None) for k in SPECIAL_FIELDS}


def special_from_dict(d: dict[str, int | None]) -> Any:
    """A ``SpecialTokens`` when the tokenizer module provides it, else a namespace."""
    try:
        from ..tokenizer import SpecialTokens  # type: ignore[attr-defined]

        return SpecialTokens(**d)
    except (ImportError, TypeError):
        return types.SimpleNamespace(**d)


def sentence_end_table(
    token_strings: Sequence[str], special_ids: Iterable[int | None]
) -> np.ndarray:
    """bool [V]: True for token ids whose text ends a sentence (specials never do)."""
    table = np.array([any(c in s for c in SENTENCE_END_CHARS) for s in token_strings], dtype=bool)
    for i in special_ids:
        if i is not None and i < len(table):
            table[i] = False
    return table


class ShardedTokens:
    """The ids of a sharded store as one read-only sequence: ``x[a:b]`` within one shard is a view
    of that shard's memmap (every document lies in one shard); across shards it is a copy."""

    def __init__(self, maps: list[np.ndarray], starts: np.ndarray) -> None:
        self.maps, self.starts = maps, starts
        self.dtype = maps[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key: int | slice) -> Any:
        n = len(self)
        if isinstance(key, slice):
            a, b, step = key.indices(n)
            assert step == 1, "ShardedTokens supports contiguous slices only"
            if a >= b:
                return self.maps[0][:0]
            s = int(np.searchsorted(self.starts, a, side="right")) - 1
            if b <= self.starts[s + 1]:
                return self.maps[s][a - self.starts[s] : b - self.starts[s]]
            return np.concatenate(
                [self[a : int(self.starts[s + 1])], self[int(self.starts[s + 1]) : b]]
            )
        i = int(key) + (n if int(key) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.maps[s][i - self.starts[s]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.concatenate(self.maps)
        return a if dtype is None else a.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()


class TokenStore:
    """A prepared token store, opened read-only (memmaps are opened lazily, per process).

    Args:
        path: the folder written by ``prepare``.

    Raises:
        ValueError: the folder is not a (complete) token store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            hint = " (an interrupted prepare?)" if self.path.is_dir() else ""
            raise ValueError(
                f"{self.path} is not a token store: no manifest.json{hint}; "
                "create one with `blankfill prepare --input ... --out DIR`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{manifest}: not valid JSON ({e}); re-run `blankfill prepare`"
            ) from None
        if self.manifest.get("format") not in (FORMAT, FORMAT_SHARDED):
            raise ValueError(
                f"{self.path}: unsupported store format {self.manifest.get('format')!r} "
                f"(expected {FORMAT!r}); re-run `blankfill prepare`"
            )
        counts = ("num_tokens", "num_documents", "num_sentence_ends")
        self.shards: list[dict[str, Any]] = self.manifest.get("shards") or [
            {"path": ".", **{k: self.manifest[k] for k in counts}}
        ]
        #: int64 [S + 1]: shard s holds global tokens ``starts[s]:starts[s + 1]``
        self.shard_starts = np.cumsum([0] + [int(sh["num_tokens"]) for sh in self.shards])
        offsets = [np.load(self._shard(0) / "doc_offsets.npy")]
        for s in range(1, len(self.shards)):
            offsets.append(np.load(self._shard(s) / "doc_offsets.npy")[1:] + self.shard_starts[s])
        self.doc_offsets = np.concatenate(offsets) if len(offsets) > 1 else offsets[0]
        self._tokens: Any = None
        self._sentence_ends: list[np.ndarray] | None = None

    def _shard(self, s: int) -> Path:
        return self.path / self.shards[s]["path"]

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the memmaps themselves
        return {**self.__dict__, "_tokens": None, "_sentence_ends": None}

    @property
    def tokens(self) -> Any:
        """[num_tokens] the ids (an ndarray for a one-shard store, else a ``ShardedTokens``)."""
        if self._tokens is None:
            # a plain ndarray view of the mapping: slicing a np.memmap costs microseconds of
            # Python per call (subclass bookkeeping), paid several times per sample
            maps = [
                np.asarray(
                    np.memmap(
                        self._shard(s) / "tokens.bin",
                        dtype=self.manifest["dtype"],
                        mode="r",
                        shape=(int(sh["num_tokens"]),),
                    )
                )  # fmt: skip
                for s, sh in enumerate(self.shards)
            ]
            self._tokens = maps[0] if len(maps) == 1 else ShardedTokens(maps, self.shard_starts)
        return self._tokens

    def _shard_ends(self) -> list[np.ndarray]:
        if self._sentence_ends is None:
            self._sentence_ends = [  # plain views, as ``tokens``
                np.asarray(np.load(self._shard(s) / "sentence_ends.npy", mmap_mode="r"))
                for s in range(len(self.shards))
            ]
        return self._sentence_ends

    @property
    def sentence_ends(self) -> np.ndarray:
        """int64: sorted global indices of sentence-ending tokens (a copy for a sharded store)."""
        ends = self._shard_ends()
        if len(ends) == 1:
            return ends[0]
        return np.concatenate([e + self.shard_starts[s] for s, e in enumerate(ends)])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.manifest["num_documents"])

    @property
    def special(self) -> Any:
        """The special ids the store was tokenized with (``SpecialTokens``)."""
        return special_from_dict(self.manifest["special"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.manifest["tokenizer_fingerprint"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def document(self, d: int) -> np.ndarray:
        """int64 [len]: the tokens of document d."""
        return np.asarray(self.tokens[self.doc_offsets[d] : self.doc_offsets[d + 1]], np.int64)

    def sentence_end_mask(self, start: int, stop: int) -> np.ndarray:
        """bool [stop - start]: which tokens in ``tokens[start:stop]`` end a sentence."""
        out = np.zeros(stop - start, dtype=bool)
        first = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        for s in range(max(first, 0), len(self.shards)):
            base = int(self.shard_starts[s])
            if base >= stop:
                break
            ends = self._shard_ends()[s]
            lo, hi = np.searchsorted(ends, [start - base, stop - base])
            out[np.asarray(ends[lo:hi]) + base - start] = True
        return out

    def check_tokenizer(self, tokenizer: Any, key: str = "train.tokenizer") -> None:
        """Raise a one-line ValueError unless ``tokenizer`` is the one this store was made with
        (same fingerprint): token ids from another tokenizer train a model on the wrong text."""
        if str(tokenizer.fingerprint()) != self.tokenizer_fingerprint:
            raise ValueError(
                f"{key} is not the tokenizer {self.path} was prepared with (fingerprints "
                f"{str(tokenizer.fingerprint())[:12]} vs {self.tokenizer_fingerprint[:12]}); "
                f"leave {key} unset to use {self.path / 'tokenizer'}, or re-run `blankfill "
                "prepare` with this tokenizer"
            )

    def load_tokenizer(self) -> Any:
        from ..tokenizer import load_tokenizer  # type: ignore[attr-defined]

        return load_tokenizer(self.path / "tokenizer")

    def __repr__(self) -> str:
        return (
            f"TokenStore({str(self.path)!r}, documents={self.num_documents}, "
            f"tokens={self.num_tokens}, dtype={self.manifest['dtype']})"
        )


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: Any,
    *,
    txt_mode: TxtMode = "file",
    text_field: str = "text",
    overwrite: bool = False,
    append: bool = False,
    workers: int = 1,
    chunk_chars: int = CHUNK_CHARS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize a corpus into a token store, or into a new shard of an existing one.

    Args:
        inputs: files and folders (``.txt``, ``.jsonl``, ``.gz`` of either).
        out_dir: the store folder to create (or, with ``append``, to add a shard to).
        tokenizer: a ``blankfill.tokenizer.Tokenizer`` (``encode_batch``, ``token_strings``,
            ``special``, ``vocab_size``, ``fingerprint``, ``save``).
        txt_mode: ``"file"``: one document per ``.txt``; ``"blank_lines"``: split at blank lines.
        text_field: the ``.jsonl`` field holding the text.
        overwrite: replace an existing store at ``out_dir``.
        append: add the documents as shard ``shards/NNNNN`` of the store at ``out_dir`` (made
            with the same tokenizer); the store reads as one, documents in order of appending.
        workers: 1 tokenizes in this process (the tokenizer's threads use every core); N > 1 in
            N forked processes (``encode.encoded_chunks``). The store is the same for every N.
        chunk_chars: characters of text per ``encode_batch`` call (memory holds a few chunks).
        progress: called with the number of input bytes read since the last call.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if append and overwrite:
        raise ValueError("--append adds to a store and --overwrite replaces it: choose one")
    if append:
        store = TokenStore(out)  # a one-line ValueError when there is no store
        if str(tokenizer.fingerprint()) != store.tokenizer_fingerprint:
            raise ValueError(
                f"--tokenizer is not the tokenizer {out} was prepared with (fingerprints "
                f"{str(tokenizer.fingerprint())[:12]} vs {store.tokenizer_fingerprint[:12]}); "
                f"append with --tokenizer {out / 'tokenizer'}"
            )
    elif out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass --overwrite, --append, or choose another --out"
        )
    files = list_input_files(inputs)
    V = int(tokenizer.vocab_size)
    dtype = np.dtype(np.uint16 if V <= 2**16 else np.uint32)
    special = special_to_dict(tokenizer.special)
    table = sentence_end_table(tokenizer.token_strings(), special.values())
    if append:
        shards = store.shards
        name = f"shards/{len(shards):05d}"
        final = out / name
        final.parent.mkdir(exist_ok=True)
    else:
        final = out
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with guard_write(out, tmp):
        stats = ReadStats()
        shard = write_shard(
            files, tmp, tokenizer, table, dtype, stats, txt_mode=txt_mode,
            text_field=text_field, workers=workers, chunk_chars=chunk_chars, progress=progress,
        )  # fmt: skip
        counters = {
            "txt_mode": txt_mode,
            "text_field": text_field,
            "input_bytes": stats.bytes,
            "files": stats.files,
            "empty_documents_skipped": stats.empty_skipped,
            "undecodable_replaced": stats.replaced,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if append:
            manifest = _appended(store.manifest, shards, {"path": name, **shard, **counters})
            shutil.rmtree(final, ignore_errors=True)  # a killed append's shard, never listed
            tmp.rename(final)
            _replace_text(out / "manifest.json", json.dumps(manifest, indent=1))
            return manifest
        tokenizer.save(tmp / "tokenizer")
        manifest = {
            "format": FORMAT,
            "dtype": dtype.name,
            **{k: shard[k] for k in ("num_tokens", "num_documents", "num_sentence_ends")},
            "vocab_size": V,
            "special": special,
            "tokenizer_fingerprint": str(tokenizer.fingerprint()),
            **counters,
            "sources": shard["sources"],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    return manifest


def _appended(manifest: dict[str, Any], shards: list[dict[str, Any]], new: dict[str, Any]):
    """The manifest of a store after appending shard ``new`` (totals summed, sources joined)."""
    m = {**manifest, "format": FORMAT_SHARDED, "shards": [*shards, new]}
    for k in ("num_tokens", "num_documents", "num_sentence_ends", "input_bytes", "files",
              "empty_documents_skipped", "undecodable_replaced"):  # fmt: skip
        m[k] = int(manifest.get(k, 0)) + int(new[k])
    m["sources"] = [*manifest.get("sources", []), *new["sources"]]
    return m


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` atomically: a reader sees the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
