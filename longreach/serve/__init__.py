"""``longreach serve``: an OpenAI-compatible server for one loaded model.

::

    from longreach.serve import ServeConfig, create_app, serve
    app = create_app(lm, ServeConfig(method="yarn:factor=4"))   # a FastAPI app (tests, ASGI servers)
    serve(lm, ServeConfig(port=8000))                            # uvicorn until SIGTERM / SIGINT

``create_app`` and ``serve`` are imported on first use: ``longreach.serve.config`` (and the CLI's
``--help``) work without the ``serve`` extra (FastAPI, uvicorn, prometheus-client) installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ServeConfig, is_loopback_host

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .launch import serve

__all__ = ["ServeConfig", "create_app", "is_loopback_host", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .launch import serve

        return serve
    raise AttributeError(f"module 'longreach.serve' has no attribute {name!r}")
