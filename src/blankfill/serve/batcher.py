"""Dynamic batching of fill requests: one worker thread owns the model.

``FillService.submit`` checks a request (so a bad one fails alone, before it can spoil a batch)
and queues it; the worker takes the oldest request, waits up to ``wait_ms`` for more requests
with the same decoding settings (at most ``max_batch``), and fills them as one padded batch with
:func:`blankfill.filling.fill`. Results come back as ``concurrent.futures.Future`` objects, and
streamed tokens through each request's ``on_token`` callback, called from the worker thread.

Running the model in its own thread keeps the HTTP event loop free (``/healthz`` answers while a
long generation runs): torch releases the GIL inside its kernels. Sampled requests with a seed are
never batched with others, so a seed gives the same fill whatever else is queued.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..config import DecodingConfig
from ..filling import BlankFiller, FillResult, _segments, build_prompt
from ..generate import DEFAULT_MAX_NEW_TOKENS, decoding_config

log = logging.getLogger(__name__)

TokenCallback = Callable[[int, list[int]], None]  # (blank index, new token ids)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may ask for (``None``: the model's own limit)."""

    max_new_tokens: int | None = 256  # per blank; also capped by the model's positions
    max_num_beams: int = 8  # beam search width
    max_text_chars: int = 20_000  # the prompt text, before tokenizing


@dataclass(frozen=True, kw_only=True)
class Checked:
    """A request that passed ``FillService.check``: safe to queue."""

    text: str
    decoding: DecodingConfig  # max_new_tokens resolved
    prompt_len: int  # tokens in Part A
    around: tuple[str, ...]  # the text around the blanks
    absorbed: tuple[str, ...]  # the whitespace each blank replaces


@dataclass(eq=False)
class _Job:
    req: Checked
    future: Future
    on_token: TokenCallback | None
    key: Any  # jobs with equal keys may share a batch
    queued: float = field(default_factory=time.monotonic)


@dataclass
class Stats:
    """Counters of the worker (read them while it runs; ints are updated atomically)."""

    requests: int = 0
    batches: int = 0
    failed: int = 0
    largest_batch: int = 0


class FillService:
    """A :class:`BlankFiller` behind a request queue and one worker thread.

    Args:
        filler: the model and tokenizer.
        max_batch: most requests decoded together (1: no server-side batching).
        wait_ms: how long the oldest request waits for others to join its batch.
        limits: caps on what one request may ask for.

    Use as a context manager, or call ``start()`` and ``close()``.
    """

    def __init__(
        self,
        filler: BlankFiller,
        *,
        max_batch: int = 8,
        wait_ms: float = 5.0,
        limits: Limits | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0, got {wait_ms}")
        self.filler, self.max_batch, self.wait = filler, max_batch, wait_ms / 1000.0
        self.limits = limits or Limits()
        self.stats = Stats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._serial = 0

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FillService:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="blankfill-fill", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued requests, then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> FillService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Requests waiting for the worker (approximate)."""
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- requests ------------------------------------------------------------------------------

    def check(self, text: Any, decoding: Any = None) -> Checked:
        """Validate one request; a ValueError names what is wrong and how to fix it."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("'text' must be a non-empty string, e.g. \"Paris is the [MASK].\"")
        if len(text) > self.limits.max_text_chars:
            raise ValueError(
                f"'text' is {len(text)} characters; this server accepts at most "
                f"{self.limits.max_text_chars}"
            )
        if decoding is None:
            decoding = {}
        if not isinstance(decoding, dict):
            raise ValueError("'decoding' must be a JSON object such as {\"max_new_tokens\": 16}")
        cfg = decoding_config(**decoding)
        mc = self.filler.model.config
        cap = mc.max_sequence_length - 1
        if self.limits.max_new_tokens is not None:
            cap = min(cap, self.limits.max_new_tokens)
        if cfg.max_new_tokens is None:
            cfg = dataclasses.replace(cfg, max_new_tokens=min(DEFAULT_MAX_NEW_TOKENS, cap))
        if cfg.max_new_tokens > cap:
            raise ValueError(
                f"decoding.max_new_tokens={cfg.max_new_tokens} is above this server's limit; "
                f"use at most {cap}"
            )
        if cfg.strategy == "beam" and cfg.num_beams > self.limits.max_num_beams:
            raise ValueError(
                f"decoding.num_beams={cfg.num_beams} is above this server's limit; use at most "
                f"{self.limits.max_num_beams}"
            )
        tok = self.filler.tokenizer
        prompt = build_prompt(tok, text)
        limit = mc.max_sequence_length
        if len(prompt) > limit:
            raise ValueError(
                f"the prompt is {len(prompt)} tokens, {len(prompt) - limit} more than the model's "
                f"max_sequence_length {limit}; shorten it"
            )
        n_blanks = sum(t in tok.mask_ids for t in prompt)
        around, absorbed = _segments(tok, text, n_blanks)
        return Checked(
            text=text,
            decoding=cfg,
            prompt_len=len(prompt),
            around=tuple(around),
            absorbed=tuple(absorbed),
        )

    def submit(self, request: Checked, on_token: TokenCallback | None = None) -> Future:
        """Queue a checked request; the future's result is a :class:`FillResult`."""
        if not self.alive:
            raise RuntimeError("the fill service is not running (call start())")
        cfg = request.decoding
        if cfg.strategy == "sample" and cfg.seed is not None:
            self._serial += 1
            key: Any = ("alone", self._serial)  # a seeded sample decodes by itself
        else:
            key = cfg
        future: Future = Future()
        self._queue.put(_Job(request, future, on_token, key))
        return future

    # ---- the worker ----------------------------------------------------------------------------

    def _take_batch(self, held: list[_Job], stopped: bool) -> tuple[list[_Job], bool]:
        """The oldest job and up to ``max_batch - 1`` later ones with its key; True at shutdown.

        ``held`` keeps the jobs read from the queue that did not fit this batch.
        """
        if not held:
            if stopped:
                return [], True
            job = self._queue.get()
            if job is None:
                return [], True
            held.append(job)
        first = held[0]
        deadline = first.queued + self.wait
        while not stopped and sum(j.key == first.key for j in held) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stopped = True
                break
            held.append(job)
        batch = [j for j in held if j.key == first.key][: self.max_batch]
        for j in batch:
            held.remove(j)
        return batch, stopped

    def _work(self) -> None:
        held: list[_Job] = []
        stopped = False
        while True:
            batch, stopped = self._take_batch(held, stopped)
            if not batch and stopped:
                return
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        s = self.stats
        s.batches += 1
        s.requests += len(batch)
        s.largest_batch = max(s.largest_batch, len(batch))

        def on_token(b: int, blank: int, ids: list[int]) -> None:
            cb = batch[b].on_token
            if cb is not None:
                cb(blank, ids)

        try:
            results = self.filler.fill(
                [j.req.text for j in batch], batch[0].req.decoding, on_token=on_token
            )
        except Exception as e:  # every request of the batch gets the error
            s.failed += len(batch)
            log.exception("fill failed for a batch of %d", len(batch))
            for j in batch:
                j.future.set_exception(e)
            return
        for j, r in zip(batch, results, strict=True):
            j.future.set_result(r)


def result_json(result: FillResult) -> dict[str, Any]:
    """The JSON body of a filled request."""
    return {
        "text": result.text,
        "marked": result.marked(),
        "fills": [
            {
                "text": f.text,
                "token_ids": list(f.token_ids),
                "logprobs": list(f.logprobs),
                "logprob": f.logprob,
                "ended": f.ended,
            }
            for f in result.fills
        ],
        "around": list(result.around),
        "prompt_tokens": len(result.prompt_ids),
    }
