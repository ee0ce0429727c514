"""Reading raw text corpora: ``.txt``, ``.jsonl`` and their ``.gz``, as files or folders.

A ``.txt`` file is one document (``txt_mode="file"``) or holds documents separated by blank lines
(``txt_mode="blank_lines"``). A ``.jsonl`` file holds one JSON object per line with the document in
``text_field``. Undecodable bytes are replaced with U+FFFD and counted; empty documents are skipped
and counted (``ReadStats``).

A file that cannot be read (a truncated or corrupt ``.gz``, a ``.gz`` that is not gzip, a read
error) stops the run with one ``ValueError`` naming the file: a silently shorter corpus is worse
than a clear stop (remove or repair the file and run again).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TxtMode = Literal["file", "blank_lines"]
SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # one or more blank (or blank-looking) lines
_REPLACEMENT = "\ufffd".encode()


@dataclass(kw_only=True)
class ReadStats:
    """Counters filled while reading (reported at the end of ``blankfill prepare``)."""

    files: int = 0
    documents: int = 0
    bytes: int = 0
    empty_skipped: int = 0
    replaced: int = 0  # undecodable byte sequences replaced by U+FFFD


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1]
    return None


def list_input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into the readable input files.

    Raises:
        OSError: a path does not exist.
        ValueError: a named file has an unsupported suffix, or nothing readable was found.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
            files.extend(found)
        elif path.is_file():
            if _kind(path) is None:
                raise ValueError(f"{path}: unsupported input type; use {', '.join(SUFFIXES)}")
            files.append(path)
        else:
            raise FileNotFoundError(f"input path {path} does not exist")
    if not files:
        raise ValueError(
            f"no {'/'.join(SUFFIXES)} files found in {', '.join(map(str, inputs)) or '(no inputs)'}"
        )
    return files


def _decode(raw: bytes, stats: ReadStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        stats.replaced += text.count("\ufffd") - raw.count(_REPLACEMENT)
        return text


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def iter_documents(
    path: Path, stats: ReadStats, *, txt_mode: TxtMode = "file", text_field: str = "text"
) -> Iterator[str]:
    """Yield the non-empty documents of one input file, updating ``stats``."""
    try:
        yield from _iter_documents(path, stats, txt_mode=txt_mode, text_field=text_field)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(
            f"{path}: truncated or corrupt gzip file ({type(e).__name__}: {e}); re-create or "
            "re-download it, or leave it out of --input"
        ) from None
    except OSError as e:
        if getattr(e, "filename", None):
            raise
        raise OSError(e.errno, f"{path}: cannot read ({e.strerror or e})") from None


def _iter_documents(path: Path, stats: ReadStats, *, txt_mode: TxtMode, text_field: str):
    kind = _kind(path)
    stats.files += 1
    with _open(path) as f:
        if kind == "txt":
            raw = f.read()
            stats.bytes += len(raw)
            text = _decode(raw, stats).replace("\r\n", "\n")
            docs = [text] if txt_mode == "file" else _BLANK_LINES.split(text.strip("\n"))
            for doc in docs:
                if doc.strip():
                    stats.documents += 1
                    yield doc.strip("\n")
                else:
                    stats.empty_skipped += 1
            return
        for lineno, line in enumerate(f, 1):
            stats.bytes += len(line)
            if not line.strip():
                continue
            try:
                obj = json.loads(_decode(line, stats))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or text_field not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(
                    f"{path}:{lineno}: no {text_field!r} field (found {keys}); "
                    "choose the field with --text-field"
                )
            doc = obj[text_field]
            if not isinstance(doc, str):
                raise ValueError(f"{path}:{lineno}: field {text_field!r} is not a string")
            if doc.strip():
                stats.documents += 1
                yield doc
            else:
                stats.empty_skipped += 1
