"""``longreach serve``: check the exposure, build the app and run it under uvicorn until SIGTERM / SIGINT.

On a signal uvicorn stops accepting connections and waits up to ``drain_seconds`` for the responses in
flight; a little before that runs out the requests still on the model are cancelled (their clients get an
error: a 503, or an ``error`` event then ``[DONE]`` on a stream) so that they end cleanly, and the app's
lifespan shutdown cancels whatever is left. The process then exits 0.

Logs hold no key and no query string: uvicorn's access log is off, the guard writes one line per request
(client, method, path, status, seconds) to the ``longreach.serve.access`` logger (stdout).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from ..errors import SettingError
from ..models import LoadedModel
from .app import create_app
from .config import ServeConfig, is_loopback_host
from .jobs import SHUTDOWN

log = logging.getLogger(__name__)



def serve(lm: LoadedModel, config: ServeConfig, sock: socket.socket | None = None) -> None:
    """Serve ``lm`` until a signal stops the server (blocking). ``sock``: bound by :func:`listen` already
    (the CLI binds before it loads the model, so a port in use fails fast). A bad setting or an address that
    cannot be listened on is a one-line :class:`~longreach.errors.SettingError` before anything is served."""
    config.check_exposure()
    sock = sock if sock is not None else listen(config.host, config.port)
    app = create_app(lm, config)
    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="info", log_config=log_config(),
        access_log=False,  # the guard logs each request without its query string
        timeout_graceful_shutdown=config.drain_seconds,  # type: ignore[arg-type]  (a float works)
        limit_concurrency=None, proxy_headers=False, ws="none", lifespan="on",
    ), app=app, lines=lambda port: banner(lm, config, port))
    with sock, _signals_end_cleanly():
        server.run(sockets=[sock])


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it); a one-line error when that fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise SettingError(f"--host {host}: not an address this machine can listen on ({exc}); use e.g. "
                           f"127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SettingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                           f"(0 = any free one) or --host") from None
    return sock


def banner(lm: LoadedModel, config: ServeConfig, port: int | None = None) -> list[str]:
    """The lines printed once the server listens (never the key)."""
    from ..spec import Plan

    name = config.served_name or lm.info.name
    try:
        spec = Plan.from_spec(config.method).spec
    except Exception:  # the app validates the spec; the banner only shows it
        spec = config.method
    host = f"[{config.host}]" if ":" in config.host else config.host
    lines = [f"serving {name} (default method {spec}) on http://{host}:{config.port if port is None else port}/v1"]
    if config.api_key is not None:
        where = "reachable from other machines" if not is_loopback_host(config.host) else "local"
        lines.append(f"an API key is required ({where}): clients send 'Authorization: Bearer KEY' "
                     "(openai: api_key=KEY)")
    return lines


def log_config() -> dict[str, Any]:
    """uvicorn's logging setup plus the guard's access logger (stdout, INFO)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["handlers"]["longreach_access"] = {"formatter": "default", "class": "logging.StreamHandler",
                                           "stream": "ext://sys.stdout"}
    cfg["loggers"]["longreach.serve.access"] = {"handlers": ["longreach_access"], "level": "INFO",
                                                "propagate": False}
    return cfg


class _Server(uvicorn.Server):
    """uvicorn's server that prints the banner once it listens and cancels the work still running on the
    model shortly before the drain time runs out."""

    def __init__(self, config: uvicorn.Config, app: Any, lines: Callable[[int], list[str]]):
        super().__init__(config)
        self._app, self._lines = app, lines

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            port = self.config.port
            with _quiet():
                port = self.servers[0].sockets[0].getsockname()[1]  # the real one when --port 0
            print(*self._lines(port), sep="\n", flush=True)

    async def shutdown(self, sockets: Any = None) -> None:
        # uvicorn waits drain_seconds for responses in flight, then cancels their tasks (the client of a
        # stream would see it cut). A little earlier, cancel the work on the model instead: the app then
        # answers those requests with an error of its own and they end before the deadline.
        drain = float(self.config.timeout_graceful_shutdown or 0.0)
        grace = max(0.0, drain - min(2.0, 0.5 * drain))
        timer = asyncio.get_running_loop().call_later(grace, self._cancel_active)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _cancel_active(self) -> None:
        active = list(getattr(self._app.state, "active", ()) or ())
        if active:
            log.warning("drain time almost over: cancelling %d request(s) still running", len(active))
        for token in active:
            with _quiet():
                token.cancel(SHUTDOWN)


class _quiet:
    """``with _quiet():`` ignores an exception in a best-effort step (logged at debug level)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if kind is not None and issubclass(kind, Exception):
            log.debug("ignored", exc_info=(kind, exc, tb))
            return True
        return False


class _signals_end_cleanly:
    """uvicorn re-raises the SIGTERM / SIGINT that stopped it once it has drained, so that the default
    action (death by signal) follows. A drained server has ended as asked: make that re-raise a no-op so
    the process exits 0 (main thread only; previous handlers come back afterwards)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> None:
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._stopped)

    def __exit__(self, *exc: Any) -> bool:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    @staticmethod
    def _stopped(sig: int, frame: Any) -> None:
        print(f"longreach: server stopped ({signal.Signals(sig).name})", file=sys.stderr, flush=True)
