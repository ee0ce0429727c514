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
"""

from __future__ import annotations

import glob
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
from .encode import CHUNK_CHARS, chunks, encoded_chunks
from .sources import ReadStats, TxtMode, iter_documents, list_input_files

log = logging.getLogger(__name__)

FORMAT = "blankfill-token-store/1"
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
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{self.path}: unsupported store format {self.manifest.get('format')!r} "
                f"(expected {FORMAT!r}); re-run `blankfill prepare`"
            )
        self.doc_offsets = np.load(self.path / "doc_offsets.npy")
        self._tokens: np.ndarray | None = None
        self._sentence_ends: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the memmaps themselves
        return {**self.__dict__, "_tokens": None, "_sentence_ends": None}

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            # a plain ndarray view of the mapping: slicing a np.memmap costs microseconds of
            # Python per call (subclass bookkeeping), paid several times per sample
            self._tokens = np.asarray(np.memmap(
                self.path / "tokens.bin", dtype=self.manifest["dtype"], mode="r",
                shape=(self.num_tokens,),
            ))  # fmt: skip
        return self._tokens

    @property
    def sentence_ends(self) -> np.ndarray:
        if self._sentence_ends is None:
            self._sentence_ends = np.asarray(
                np.load(self.path / "sentence_ends.npy", mmap_mode="r")
            )  # a plain view, as ``tokens``
        return self._sentence_ends

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
        ends = self.sentence_ends
        lo, hi = np.searchsorted(ends, [start, stop])
        out = np.zeros(stop - start, dtype=bool)
        out[np.asarray(ends[lo:hi]) - start] = True
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


class _Int64Column:
    """An int64 column appended to a raw file, then saved as ``.npy``: memory stays bounded by a
    chunk, whatever the corpus size (sentence ends and document offsets of a 5 GB corpus do not
    fit comfortably in memory as Python lists)."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self._f = open(path, "wb")

    def write(self, values: np.ndarray | list[int]) -> None:
        a = np.asarray(values, dtype=np.int64)
        self._f.write(a.tobytes())
        self.count += len(a)

    def save(self, npy: Path, block: int = 1 << 22) -> None:
        """Write ``npy`` (the column, in blocks) and remove the raw file."""
        self._f.close()
        raw = np.memmap(self.path, dtype=np.int64, mode="r", shape=(self.count,))
        out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.int64, shape=(self.count,))
        for i in range(0, self.count, block):
            out[i : i + block] = raw[i : i + block]
        out.flush()
        del out, raw
        self.path.unlink()

    def close(self) -> None:
        self._f.close()


def prepare(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    tokenizer: Any,
    *,
    txt_mode: TxtMode = "file",
    text_field: str = "text",
    overwrite: bool = False,
    workers: int = 1,
    chunk_chars: int = CHUNK_CHARS,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize a corpus into a token store.

    Args:
        inputs: files and folders (``.txt``, ``.jsonl``, ``.gz`` of either).
        out_dir: the store folder to create.
        tokenizer: a ``blankfill.tokenizer.Tokenizer`` (``encode_batch``, ``token_strings``,
            ``special``, ``vocab_size``, ``fingerprint``, ``save``).
        txt_mode: ``"file"``: one document per ``.txt``; ``"blank_lines"``: split at blank lines.
        text_field: the ``.jsonl`` field holding the text.
        overwrite: replace an existing store at ``out_dir``.
        workers: 1 tokenizes in this process (the tokenizer's threads use every core); N > 1 in
            N forked processes (``encode.encoded_chunks``). The store is the same for every N.
        chunk_chars: characters of text per ``encode_batch`` call (memory holds a few chunks).
        progress: called with the number of input bytes read since the last call.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite or choose another --out")
    files = list_input_files(inputs)
    V = int(tokenizer.vocab_size)
    dtype = np.uint16 if V <= 2**16 else np.uint32
    special = special_to_dict(tokenizer.special)
    table = sentence_end_table(tokenizer.token_strings(), special.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with guard_write(out, tmp):
        stats = ReadStats()
        offsets = _Int64Column(tmp / "doc_offsets.bin")
        ends = _Int64Column(tmp / "sentence_ends.bin")
        offsets.write([0])
        file_docs, file_tokens = [0] * len(files), [0] * len(files)
        total = 0

        def documents() -> Iterable[tuple[int, str]]:
            for f, path in enumerate(files):
                for doc in iter_documents(path, stats, txt_mode=txt_mode, text_field=text_field):
                    file_docs[f] += 1
                    yield f, doc

        reported = 0
        with open(tmp / "tokens.bin", "wb") as fout:
            encoded = encoded_chunks(
                chunks(documents(), chunk_chars), tokenizer, table, np.dtype(dtype),
                workers=workers,
            )  # fmt: skip
            for chunk, enc in encoded:
                if enc.bad_doc >= 0:
                    f = chunk[enc.bad_doc][0]
                    raise ValueError(f"{files[f]}: tokenizer produced ids outside [0, {V})")
                for (f, _), n in zip(chunk, enc.lengths.tolist(), strict=True):
                    file_tokens[f] += n
                    if n == 0:
                        stats.documents -= 1
                        stats.empty_skipped += 1
                        file_docs[f] -= 1
                kept = enc.lengths[enc.lengths > 0]
                ends.write(enc.sentence_ends + total)
                fout.write(enc.ids.tobytes())
                offsets.write(np.cumsum(kept) + total)
                total += len(enc.ids)
                if progress is not None:
                    progress(stats.bytes - reported)
                    reported = stats.bytes
        sources = [
            {"path": str(path), "documents": file_docs[f], "tokens": file_tokens[f]}
            for f, path in enumerate(files)
        ]
        if total == 0:
            raise ValueError(
                f"empty corpus: no non-empty documents in {len(files)} file(s) "
                f"({stats.empty_skipped} empty documents skipped)"
            )
        offsets.save(tmp / "doc_offsets.npy")
        ends.save(tmp / "sentence_ends.npy")
        tokenizer.save(tmp / "tokenizer")
        manifest = {
            "format": FORMAT,
            "dtype": np.dtype(dtype).name,
            "num_tokens": total,
            "num_documents": offsets.count - 1,
            "num_sentence_ends": ends.count,
            "vocab_size": V,
            "special": special,
            "tokenizer_fingerprint": str(tokenizer.fingerprint()),
            "txt_mode": txt_mode,
            "text_field": text_field,
            "input_bytes": stats.bytes,
            "files": stats.files,
            "empty_documents_skipped": stats.empty_skipped,
            "undecodable_replaced": stats.replaced,
            "seconds": round(time.perf_counter() - t0, 3),
            "sources": sources,
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


def remove_stale_partials(out: str | Path) -> list[Path]:
    """Remove the ``.OUT.partial-PID`` / ``.OUT.old-PID`` folders of ``prepare`` runs that were
    killed (their process is gone); returns what was removed."""
    out = Path(out)
    removed = []
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2 :].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists():  # killed between the two renames: keep it
            log.warning("%s is missing; %s holds the previous store (rename it back)", out, p)
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if removed:
        log.info("removed %d folder(s) left by killed prepare runs: %s", len(removed),
                 ", ".join(p.name for p in removed))  # fmt: skip
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
