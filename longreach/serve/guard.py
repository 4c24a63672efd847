"""What stands between the network and the model: the request guard (body size limit, bearer key,
per-request metrics and access log) and the admission queue (a bounded number of requests on the model
and waiting for it; beyond that a request is refused at once with :class:`Overloaded`).

The guard is one pure-ASGI middleware (no ``BaseHTTPMiddleware``: it does not buffer streams and sees
every request, including the ones it refuses). Its own refusals use the OpenAI error object:
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from ..units import format_bytes
from .config import ServeConfig
from .metrics import OTHER, Metrics

log = logging.getLogger("longreach.serve.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Paths answered without a key (a load balancer's or orchestrator's probe).
PUBLIC_PATHS = frozenset({"/health"})
#: Status recorded for a request whose client went away before any response started (nginx's convention).
CLIENT_CLOSED = 499
AUTH_MESSAGE = ("missing or invalid API key: send the header 'Authorization: Bearer KEY' with the key the server "
                "was started with (--api-key or $LONGREACH_API_KEY)")


def install(app: Any, config: ServeConfig, metrics: Metrics) -> None:
    """Add the guard to ``app`` (a FastAPI/Starlette app, before it starts) and connect an admission queue
    already at ``app.state.admission`` to ``metrics``."""
    app.add_middleware(Guard, config=config, metrics=metrics, router=app.router, state=app.state)
    admission = getattr(app.state, "admission", None)
    if isinstance(admission, Admission):
        admission.bind(metrics)


def _error_json(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """The OpenAI error object, as JSON bytes."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


class Guard:
    """Pure-ASGI middleware: bearer key, body size limit, metrics and access log for each HTTP request."""

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics, router: Any = None, state: Any = None):
        self.app = app
        self.metrics = metrics
        self.limit = config.max_body_bytes
        self._key = config.api_key.get_secret_value().encode() if config.api_key is not None else None
        self._router = router
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which no route serves)
            await self.app(scope, receive, send)
            return
        self._bind_admission()
        start = time.perf_counter()
        status: int | None = None
        too_large = False
        received = 0

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if too_large and status is None:  # the app's answer to a body refused mid-way: the 413 replaces it
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        async def guarded_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # stop here: the rest of the body is never read; to the app the
                    too_large = True         # client is gone (ClientDisconnect), and the 413 below answers
                    return {"type": "http.disconnect"}
            return message

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._send_error(guarded_send, *refusal)
                return
            try:
                await self.app(scope, guarded_receive, guarded_send)
            except Exception:
                if not too_large:
                    raise
                log.debug("after a body over the limit", exc_info=True)  # the app's reaction to it: the 413 answers
            if too_large and status is None:
                too_large = False  # let the 413 through guarded_send
                await self._send_error(guarded_send, *self._too_large(None))
        except BaseException as exc:
            if status is None:  # cancelled (uvicorn's drain deadline): nobody got an answer; else a bug -> 500
                status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500
            raise
        finally:
            seconds = time.perf_counter() - start
            final = status if status is not None else CLIENT_CLOSED
            self.metrics.request_done(self._endpoint(scope), final, seconds)
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                path = scope.get("path", "")
                shown = repr(path[:200] + ("..." if len(path) > 200 else ""))[1:-1]  # no query string, escaped
                log.info('%s "%s %s" %s %.3fs', client[0], scope.get("method", "-"), shown, final, seconds)

    # ------------------------------------------------------------------ checks
    def _refusal(self, scope: Scope) -> tuple[int, str, str, str, dict[str, str]] | None:
        """(status, message, type, code, headers) for a request refused before the app sees it."""
        headers = scope.get("headers") or []
        if self._key is not None and scope.get("path") not in PUBLIC_PATHS:
            given = next((v for k, v in headers if k == b"authorization"), None)
            if not self._key_matches(given):
                return 401, AUTH_MESSAGE, "authentication_error", "invalid_api_key", {"www-authenticate": "Bearer"}
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None:
            text = length.decode("latin-1").strip()
            if not text.isdigit() or not text.isascii():
                return 400, "invalid Content-Length header; send the body's size in bytes", \
                    "invalid_request_error", "invalid_request", {}
            if int(text) > self.limit:
                return self._too_large(int(text))
        return None

    def _key_matches(self, header: bytes | None) -> bool:
        scheme, _, token = (header or b"").strip().partition(b" ")  # a missing header: an empty (wrong) key
        ok_scheme = scheme.lower() == b"bearer"
        ok_key = hmac.compare_digest(token.strip(), self._key or b"")
        return ok_scheme and ok_key

    def _too_large(self, size: int | None) -> tuple[int, str, str, str, dict[str, str]]:
        what = f"request body of {size:,} bytes is" if size is not None else "request body is"
        return (413, f"{what} larger than this server's limit of {format_bytes(self.limit)} ({self.limit:,} bytes); "
                     "send less, or start the server with a larger --max-body-bytes",
                "invalid_request_error", "request_too_large", {"connection": "close"})

    @staticmethod
    async def _send_error(send: Send, status: int, message: str, type_: str, code: str,
                          headers: dict[str, str]) -> None:
        body = _error_json(message, type_, code)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ helpers
    def _endpoint(self, scope: Scope) -> str:
        """The route template that matches the request (``/v1/models/{model_id}``), else ``other``: a
        bounded set of label values whatever URLs clients send."""
        if self._router is None:
            return OTHER
        try:
            from starlette.routing import Match

            for route in self._router.routes:
                match, _ = route.matches(scope)
                if match != Match.NONE:
                    return str(getattr(route, "path", OTHER)) or OTHER
        except Exception:  # a route that cannot be matched out of context: the label only, never the request
            log.debug("endpoint label: route matching failed", exc_info=True)
        return OTHER

    def _bind_admission(self) -> None:
        admission = getattr(self._state, "admission", None) if self._state is not None else None
        if isinstance(admission, Admission) and admission.metrics is None:
            admission.bind(self.metrics)


# ---------------------------------------------------------------------------------------------- admission
class Overloaded(Exception):
    """Every slot on the model is taken and the queue is full: answer 429 with ``Retry-After: retry_after``."""

    def __init__(self, retry_after: int, message: str):
        super().__init__(message)
        self.retry_after = int(retry_after)


class Admission:
    """At most ``max_running`` requests on the model and ``max_queue`` waiting (first come, first served);
    a request beyond both is refused at once with :class:`Overloaded`. Used on the event loop only."""

    def __init__(self, max_running: int, max_queue: int, metrics: Metrics | None = None):
        if max_running < 1 or max_queue < 0:
            raise ValueError(f"Admission needs max_running >= 1 and max_queue >= 0, got {max_running}, {max_queue}")
        self.max_running = max_running
        self.max_queue = max_queue
        self.metrics = metrics
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._held: collections.deque[float] = collections.deque(maxlen=32)  # seconds recent requests ran

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def bind(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._changed()

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely to free: the mean time recent requests held a slot
        over the number of slots (a slot frees, a waiting request takes it, a queue place frees); >= 1."""
        mean = sum(self._held) / len(self._held) if self._held else 1.0
        return int(min(3600, max(1, math.ceil(mean / self.max_running))))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_running`` slots for the body of the ``async with``; wait in line for it when
        all are taken; :class:`Overloaded` at once when the line is full too."""
        waiting = self.waiting
        if self.running + waiting >= self.max_running + self.max_queue:
            after = self.retry_after()
            raise Overloaded(after, f"server busy: {self.running} requests running and {waiting} waiting "
                                    f"(--max-running {self.max_running}, --max-queue {self.max_queue}); "
                                    f"retry in {after} s")
        if self.running < self.max_running and waiting == 0:
            self.running += 1
            self._changed()
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            self._changed()
            try:
                await fut  # _release hands its slot over: ``running`` already counts this request
            except BaseException:  # cancelled while waiting (client gone, timeout, shutdown)
                if fut.done() and not fut.cancelled():
                    self._release()  # the slot arrived together with the cancellation: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(fut)
                    self._changed()
                raise
        start = time.monotonic()
        try:
            yield
        finally:
            self._held.append(time.monotonic() - start)
            self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot goes to the next in line; ``running`` is unchanged
                self._changed()
                return
        self.running -= 1
        self._changed()

    def _changed(self) -> None:
        if self.metrics is not None:
            self.metrics.set_queue(self.waiting, self.running)
