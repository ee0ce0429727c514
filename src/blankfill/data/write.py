"""Writing one shard of a token store: the folder of ``tokens.bin``, ``doc_offsets.npy`` and
``sentence_ends.npy`` (see ``store``), streamed to disk chunk by chunk; and the clean-up of the
temporary folders of killed ``prepare`` runs."""

from __future__ import annotations

import glob
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encode import chunks, encoded_chunks
from .sources import ReadStats, TxtMode, iter_documents

log = logging.getLogger(__name__)


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


def write_shard(
    files: Sequence[Path],
    folder: Path,
    tokenizer: Any,
    table: np.ndarray,
    dtype: np.dtype,
    stats: ReadStats,
    *,
    txt_mode: TxtMode,
    text_field: str,
    workers: int,
    chunk_chars: int,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """Tokenize ``files`` into the shard files in ``folder`` (which exists).

    Returns:
        ``num_tokens``, ``num_documents``, ``num_sentence_ends`` and ``sources`` (per file).
    """
    V = len(table)
    offsets = _Int64Column(folder / "doc_offsets.bin")
    ends = _Int64Column(folder / "sentence_ends.bin")
    offsets.write([0])
    file_docs, file_tokens = [0] * len(files), [0] * len(files)
    total = 0

    def documents() -> Iterable[tuple[int, str]]:
        for f, path in enumerate(files):
            for doc in iter_documents(path, stats, txt_mode=txt_mode, text_field=text_field):
                file_docs[f] += 1
                yield f, doc

    reported = 0
    with open(folder / "tokens.bin", "wb") as fout:
        encoded = encoded_chunks(
            chunks(documents(), chunk_chars), tokenizer, table, dtype, workers=workers
        )
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
    if total == 0:
        offsets.close()
        ends.close()
        raise ValueError(
            f"empty corpus: no non-empty documents in {len(files)} file(s) "
            f"({stats.empty_skipped} empty documents skipped)"
        )
    offsets.save(folder / "doc_offsets.npy")
    ends.save(folder / "sentence_ends.npy")
    sources = [
        {"path": str(path), "documents": file_docs[f], "tokens": file_tokens[f]}
        for f, path in enumerate(files)
    ]
    return {"num_tokens": total, "num_documents": offsets.count - 1,
            "num_sentence_ends": ends.count, "sources": sources}  # fmt: skip


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
