"""Running the app under uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def _server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
    return uvicorn.Server(config)


def run_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level="info") -> None:
    """Serve ``app`` until interrupted (binds ``host:port``; 127.0.0.1 by default)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")


class BackgroundServer:
    """``app`` served on 127.0.0.1 on a free port, in a thread: ``with BackgroundServer(app) as s:``.

    ``s.url`` is the base URL (``http://127.0.0.1:PORT``).
    """

    def __init__(self, app: Any, *, log_level: str = "warning", start_timeout: float = 30.0):
        self.app, self.log_level, self.start_timeout = app, log_level, start_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._server = _server(self.app, self.log_level)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(10)
