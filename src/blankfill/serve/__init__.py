"""``blankfill serve``: blank filling over HTTP, with dynamic batching and a playground page.

The queue and worker (:mod:`.batcher`) need only torch; the HTTP layer (:mod:`.app`,
:mod:`.server`) needs the ``serve`` extra (FastAPI + uvicorn), imported when first used.
"""

from __future__ import annotations

from typing import Any

from .batcher import Checked, FillService, Limits, result_json


def create_app(service: FillService, **kw: Any) -> Any:
    """The FastAPI application around a started service (see :mod:`blankfill.serve.app`)."""
    try:
        from .app import create_app as _create_app
    except ImportError as e:
        raise ImportError(
            f"blankfill serve needs the serve extra ({e.name} is missing): "
            "pip install 'blankfill[serve]'"
        ) from e
    return _create_app(service, **kw)


__all__ = ["Checked", "FillService", "Limits", "create_app", "result_json"]
