"""Tokenizing a document stream into store-ready arrays, in this process or in worker processes.

``prepare`` reads documents in one process (a ``.gz`` stream cannot be split), groups them into
chunks of about ``CHUNK_CHARS`` characters, and turns each chunk into an ``EncodedChunk`` with
``encode_chunk``: the ids in the store's dtype, one length per document and the chunk-relative
sentence ends. With ``workers > 1`` the chunks go to a pool of forked processes, each running
``encode_chunk`` with the tokenizer's own threads off (one thread per process, so the processes
do not oversubscribe the cores); results come back in input order and at most ``2 * workers``
chunks are in flight, so memory stays bounded by a few chunks whatever the corpus size. The same
function runs on the same chunks either way, so the store is identical for every worker count.
A worker that dies (the OOM killer, a signal) is a ``WorkerDied`` error naming the fix, not a
hang: the pool is ``concurrent.futures.ProcessPoolExecutor``, which notices a lost process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

CHUNK_CHARS = 4_000_000  # characters per encode_batch call (parallel over the chunk's documents)
_PARALLELISM = "TOKENIZERS_PARALLELISM"


class WorkerDied(OSError):
    """A ``prepare --workers N`` process ended without returning its chunk."""


@dataclass(frozen=True)
class EncodedChunk:
    """One chunk of documents, tokenized.

    Attributes:
        ids: [sum(lengths)] the documents' ids back to back, in the store's dtype.
        lengths: int64 [n_docs] tokens per document (0 for a document that encodes to nothing).
        sentence_ends: int64 indices into ``ids`` of tokens that end a sentence.
        bad_doc: index of the first document with an id outside the vocabulary, or -1.
    """

    ids: np.ndarray
    lengths: np.ndarray
    sentence_ends: np.ndarray
    bad_doc: int


def encode_chunk(
    tokenizer: Any, texts: list[str], table: np.ndarray, dtype: np.dtype
) -> EncodedChunk:
    """Tokenize ``texts`` (``tokenizer.encode_batch``) into an ``EncodedChunk``.

    Args:
        tokenizer: anything with ``encode_batch(texts) -> list[list[int]]``.
        texts: the chunk's documents.
        table: bool [V], True for ids whose text ends a sentence.
        dtype: the store's id dtype.
    """
    encoded = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
    bad_doc = -1
    V = len(table)
    if len(flat) and (flat.max() >= V or flat.min() < 0):
        bad = np.flatnonzero((flat >= V) | (flat < 0))[0]
        bad_doc = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        flat = np.zeros(0, np.int64)
    return EncodedChunk(flat.astype(dtype), lengths, np.flatnonzero(table[flat]), bad_doc)


def chunks(docs: Iterable[tuple[int, str]], max_chars: int) -> Iterator[list[tuple[int, str]]]:
    """(file index, text) pairs in groups of about ``max_chars`` characters, across files: a
    corpus of one document per file still gives ``encode_batch`` many documents to parallelise."""
    chunk: list[tuple[int, str]] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc[1])
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


_worker_args: tuple[Any, np.ndarray, np.dtype] | None = None  # per worker process, set once


def _init_worker(tokenizer: Any, table: np.ndarray, dtype: np.dtype) -> None:
    global _worker_args  # the worker process's own copy (forked), never the parent's
    os.environ[_PARALLELISM] = "false"  # one thread per process: the pool is the parallelism
    _worker_args = (tokenizer, table, dtype)


def _encode_in_worker(texts: list[str]) -> EncodedChunk:
    assert _worker_args is not None, "worker used before its initializer ran"
    return encode_chunk(_worker_args[0], texts, *_worker_args[1:])


def encoded_chunks(
    doc_chunks: Iterable[list[tuple[int, str]]],
    tokenizer: Any,
    table: np.ndarray,
    dtype: np.dtype,
    *,
    workers: int = 1,
) -> Iterator[tuple[list[tuple[int, str]], EncodedChunk]]:
    """``(chunk, encode_chunk(chunk))`` for every chunk, in order.

    Args:
        doc_chunks: chunks of (file index, text) pairs (``chunks``).
        tokenizer: as ``encode_chunk``; with ``workers > 1`` it is inherited by forked processes.
        table: as ``encode_chunk``.
        dtype: as ``encode_chunk``.
        workers: 1 encodes in one thread of this process (the tokenizer's own threads use every
            core) while this one reads ahead, 2 chunks in flight; N > 1 uses N worker
            processes, at most ``2 * N`` chunks in flight.
    """
    if workers <= 1:
        # one encoding thread (the tokenizer's Rust threads, without the GIL) while this thread
        # reads and parses the next chunk: reading no longer waits for encoding, or vice versa
        with ThreadPoolExecutor(1) as pool:
            yield from _in_order(
                doc_chunks, lambda c: pool.submit(encode_chunk, tokenizer, c, table, dtype), 2
            )
        return
    ctx = multiprocessing.get_context("fork")
    old = os.environ.get(_PARALLELISM)
    os.environ[_PARALLELISM] = "false"  # set while forking: no "forked after parallelism" warning
    try:
        procs = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer, table, dtype)
        )
    finally:
        if old is None:
            del os.environ[_PARALLELISM]
        else:
            os.environ[_PARALLELISM] = old
    try:
        yield from _in_order(doc_chunks, lambda c: procs.submit(_encode_in_worker, c), 2 * workers)
    except BrokenProcessPool:
        raise WorkerDied(
            f"a prepare worker process died (killed for memory?) with --workers {workers}; "
            "the store at --out is unchanged: rerun with fewer --workers or more memory"
        ) from None
    finally:
        procs.shutdown(wait=True, cancel_futures=True)


def _in_order(
    doc_chunks: Iterable[list[tuple[int, str]]], submit: Callable[[list[str]], Any], depth: int
) -> Iterator[tuple[list[tuple[int, str]], EncodedChunk]]:
    """Submit each chunk's texts, keep at most ``depth`` in flight, yield results in order."""
    pending: deque[tuple[list[tuple[int, str]], Any]] = deque()
    for chunk in doc_chunks:
        pending.append((chunk, submit([t for _, t in chunk])))
        if len(pending) >= depth:
            done, result = pending.popleft()
            yield done, _result(result)
    while pending:
        done, result = pending.popleft()
        yield done, _result(result)


def _result(handle: Any) -> EncodedChunk:
    return handle.result()
