"""A request's model work in ``longreach serve``: an admission slot, a thread of the model's pool, a
:class:`~longreach.sampling.CancelToken` that a disconnect, the request timeout or shutdown cancels, and
the events a stream reads (see :mod:`longreach.serve.app`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..errors import LongreachError
from ..memory import release_free_memory
from ..sampling import Cancelled, CancelToken, Step
from .errors import ClientGone, shutting_down, timed_out

if TYPE_CHECKING:
    from .app import Service

log = logging.getLogger("longreach.serve")

POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
DISCONNECTED = "client disconnected"
SHUTDOWN = "server shutting down"  # also what the launcher gives the tokens it cancels
TIMEOUT = "request timed out"


# --------------------------------------------------------------------------------------------- results
@dataclasses.dataclass
class Generated:
    """One choice's outcome (thread side -> response)."""

    index: int
    text: str  # the whole generated text (cut before a stop string)
    tail: str  # what a stream has not sent yet
    steps: list[Step]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    prompt_steps: list[Step | None] | None = None


# ------------------------------------------------------------------------------------------------ jobs
class _Token(CancelToken):
    """A request's CancelToken that also wakes the request's coroutine on the event loop (a reader, which
    cannot stop half-way, is then answered at once while it finishes in the background)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]):
        super().__init__()
        self._loop = loop
        self._wake = wake

    def cancel(self, reason: str) -> None:
        first = not self.cancelled
        super().cancel(reason)
        if first:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(self._wake)


class Job:
    """One request's model work: wait for an admission slot, run ``fn(job)`` in the model's thread pool,
    release the slot when the thread ends (not when the client stops listening)."""

    def __init__(self, service: Service, kv_bytes: int):
        self.service = service
        self.loop = asyncio.get_running_loop()
        self.token = _Token(self.loop, self._woken)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.kv_bytes = kv_bytes
        self.fut: asyncio.Future[Any] | None = None
        self._slot: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self.finished = False

    # -- event loop side
    async def start(self, request: Request, fn: Callable[[Job], Any]) -> None:
        """Queue for a slot (Overloaded at once when the queue is full), then start ``fn`` on a thread."""
        svc = self.service
        svc.active.add(self.token)
        svc.inflight[self.token] = self.kv_bytes
        self._timer = self.loop.call_later(svc.config.request_timeout, self.token.cancel, TIMEOUT)
        acquire = asyncio.ensure_future(self._acquire())
        try:
            while not acquire.done():
                await asyncio.wait({acquire}, timeout=POLL_SECONDS)
                if acquire.done():
                    break
                if not self.token.cancelled and await request.is_disconnected():
                    self.token.cancel(DISCONNECTED)
                if self.token.cancelled:
                    raise self.cancel_error()
            acquire.result()  # Overloaded
            self.fut = self.loop.run_in_executor(svc.executor, self._run, fn)
        except BaseException:
            if not acquire.done():
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
            await self._release()
            self._finish()
            raise
        self.fut.add_done_callback(self._ended)

    async def _acquire(self) -> None:
        slot = self.service.admission.slot()
        await slot.__aenter__()
        self._slot = slot

    async def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            await slot.__aexit__(None, None, None)

    def _ended(self, fut: asyncio.Future[Any]) -> None:
        exc = None if fut.cancelled() else fut.exception()  # read here: a client that left never reads it
        if exc is not None and self.token.cancelled and not isinstance(exc, LongreachError):
            log.error("internal error in a request already answered (%s)", self.token.reason, exc_info=exc)
        if self._timer is not None:  # the work is over: a timeout can no longer cancel it
            self._timer.cancel()
        task = self.loop.create_task(self._close())
        self.service.background.add(task)
        task.add_done_callback(self.service.background.discard)

    async def _close(self) -> None:
        """Free the slot, then leave ``active`` and wake the stream: a request that is no longer active
        holds no slot (shutdown, the idle check and /metrics never see a slot without its request)."""
        await self._release()
        self._finish()
        self.events.put_nowait(("end", None))
        if not self.service.active:  # idle: give a long prefill's freed activations back to the OS
            self.loop.run_in_executor(None, release_free_memory)

    def _finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.service.active.discard(self.token)
        self.service.inflight.pop(self.token, None)
        self.finished = True

    def _woken(self) -> None:
        self.events.put_nowait(("cancelled", None))

    def cancel_error(self) -> Exception:
        """What a request cancelled for ``token.reason`` answers."""
        reason = self.token.reason
        if reason == TIMEOUT:
            return timed_out(self.service.config.request_timeout)
        if reason == DISCONNECTED:
            return ClientGone()
        return shutting_down()

    async def result(self, request: Request) -> Any:
        """The thread's result (non-stream), or the answer to a disconnect / timeout / shutdown."""
        assert self.fut is not None
        try:
            while not self.fut.done() and not self.token.cancelled:
                await asyncio.wait({self.fut}, timeout=POLL_SECONDS)
                if not self.fut.done() and not self.token.cancelled and await request.is_disconnected():
                    self.token.cancel(DISCONNECTED)
        except asyncio.CancelledError:  # the server cancelled the handler (shutdown past its drain time)
            self.token.cancel(SHUTDOWN)
            raise
        if not self.fut.done():
            raise self.cancel_error()
        try:
            return self.fut.result()
        except Cancelled:
            raise self.cancel_error() from None

    def emit(self, *item: Any) -> None:
        """Thread side: hand a stream event to the event loop."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    # -- thread side
    def _run(self, fn: Callable[[Job], Any]) -> Any:
        self.token.check()
        return fn(self)
