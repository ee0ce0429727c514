"""The HTTP fill service: ``create_app(service)`` is a FastAPI (ASGI) application.

Routes:
    POST /v1/fill   ``{"text": "... [MASK] ...", "decoding": {...}, "stream": false}`` -> the filled
                    text and each fill (text, token ids, log-probs). With ``"stream": true`` the
                    answer is server-sent events: ``start`` (the text around the blanks), one
                    ``token`` per decoded token (``blank``, ``ids``, ``text``: the new characters;
                    a character split over tokens comes with its last one, and whatever is held
                    back at the end in a last ``token`` with no ids), then ``done`` (the same body
                    as without streaming) or ``error``.
    GET  /healthz   ``{"status": "ok", ...}`` (503 once the worker has stopped); answers while
                    the model is busy.
    GET  /          the playground: one self-contained HTML page (no external resources).

Every error is JSON, ``{"error": {"code": 4xx, "message": "..."}}``: invalid JSON (400), a body
over ``max_body_bytes`` (413), a bad field, a prompt too long or a decoding value out of range
(422). FastAPI is imported here only, so ``import blankfill`` never needs it.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Checked, FillService, result_json

MAX_BODY_BYTES = 64 * 1024


class RequestError(Exception):
    """A request the server refuses: HTTP ``code`` and a message naming the problem."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=code)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"the request body is over the limit of {limit} bytes")
    return bytes(body)


class _Increments:
    """Decoded text per blank as tokens arrive; holds back a half multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.ids: dict[int, list[int]] = {}
        self.shown: dict[int, str] = {}

    def add(self, blank: int, ids: list[int], final: bool = False) -> str:
        """The new characters of ``blank`` (``final``: also a trailing incomplete character)."""
        self.ids.setdefault(blank, []).extend(ids)
        text = self.tok.decode(self.ids[blank], skip_special_tokens=True)
        old = self.shown.get(blank, "")
        if (text.endswith("\ufffd") and not final) or not text.startswith(old):
            return ""
        self.shown[blank] = text
        return text[len(old) :]

    def rest(self) -> list[tuple[int, str]]:
        """(blank, characters held back) once decoding is over."""
        return [(b, t) for b in sorted(self.ids) if (t := self.add(b, [], final=True))]


def create_app(service: FillService, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI application around a started :class:`FillService`."""
    app = FastAPI(title="blankfill", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = service.filler.tokenizer
    page = resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        s = service.stats
        body = {
            "status": "ok" if service.alive else "stopped",
            "pending": service.pending,
            "requests": s.requests,
            "batches": s.batches,
            "largest_batch": s.largest_batch,
            "max_batch": service.max_batch,
        }
        return JSONResponse(body, status_code=200 if service.alive else 503)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/v1/fill")
    async def fill(request: Request):
        body = await _read_body(request, max_body_bytes)
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON ({e})") from None
        if not isinstance(payload, dict):
            raise RequestError(400, 'the body must be a JSON object: {"text": "..."}')
        unknown = sorted(set(payload) - {"text", "decoding", "stream"})
        if unknown:
            raise RequestError(
                422, f"unknown field(s) {', '.join(unknown)}; use text, decoding, stream"
            )
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(422, "'stream' must be true or false")
        try:
            checked = service.check(payload.get("text"), payload.get("decoding"))
        except ValueError as e:
            raise RequestError(422, str(e)) from None
        if not stream:
            result = await asyncio.wrap_future(service.submit(checked))
            return JSONResponse(result_json(result))
        return StreamingResponse(
            _events(service, checked, tokenizer),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


async def _events(service: FillService, checked: Checked, tokenizer: Any):
    """Server-sent events of one streamed request (see the module docstring)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, list[int]] | None] = asyncio.Queue()

    def on_token(blank: int, ids: list[int]) -> None:  # called on the worker thread
        loop.call_soon_threadsafe(events.put_nowait, (blank, list(ids)))

    yield _sse("start", {"around": list(checked.around), "absorbed": list(checked.absorbed)})
    future = service.submit(checked, on_token)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
    text = _Increments(tokenizer)
    while (item := await events.get()) is not None:
        blank, ids = item
        yield _sse("token", {"blank": blank, "ids": ids, "text": text.add(blank, ids)})
    for blank, rest in text.rest():  # so the token texts always add up to each fill's text
        yield _sse("token", {"blank": blank, "ids": [], "text": rest})
    try:
        yield _sse("done", result_json(future.result()))
    except Exception as e:
        yield _sse("error", {"code": 500, "message": f"{type(e).__name__}: {e}"})
