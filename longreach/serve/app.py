"""The OpenAI-compatible app of ``longreach serve``: ``create_app(lm, config)`` -> FastAPI.

Routes: ``GET /v1/models`` (+ ``/v1/models/{id}``), ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /health``, ``GET /metrics``, and lm-eval's remote tokenizer at the root: ``GET /tokenizer_info``,
``POST /tokenize``, ``POST /detokenize``.

A request names its method with ``model`` = ``NAME@SPEC`` or the body field ``"method": "SPEC"``
(openai: ``extra_body``); the server's ``--method`` is the default. Everything a request asks for is
checked before any model work (model name, spec, sampling values, prompt length against the plan's
reach, the memory pre-check), so those are ordinary HTTP errors, streams included.

Model work runs in a thread pool of ``max_running`` threads, inside an admission slot (a bounded queue:
beyond it 429 + Retry-After). Each request has a :class:`~longreach.sampling.CancelToken` (in
``app.state.active``) that the engine checks between prefill chunks and decoding steps; it is cancelled
when the client disconnects (non-stream: polled while waiting; stream: the response generator is
closed), when ``request_timeout`` passes (504, or an ``error`` event on a stream) and at shutdown (503).

Reader methods (``infiniretri``) answer chat requests too: the last user message is the question and
the messages before it the document (a lone message, or a completions prompt, is split at its last
blank line). Readers decode greedily: ``temperature``, ``top_p`` and ``seed`` do not apply to them, they
have no logprobs, and they check for cancellation only before they start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..engine import Engine
from ..errors import LongreachError, MemoryBudgetError, SettingError, TooLongError
from ..models import LoadedModel
from ..prefix_cache import PrefixCache
from ..prompt import encode
from ..readers import Request as ReadRequest
from ..sampling import Cancelled, CancelToken, Sampling, Step
from ..spec import Plan, describe_methods
from ..units import shown_value
from .config import ServeConfig
from .errors import (
    APIError,
    ClientGone,
    bad_request,
    from_longreach,
    install_handlers,
    internal_error,
)
from .formatting import (
    TextStream,
    TokenText,
    chat_logprobs,
    chat_prompt,
    completion_logprobs,
    merge_completion_logprobs,
    new_id,
    now,
    reader_input,
    split_text,
    usage,
)
from .jobs import DISCONNECTED, SHUTDOWN, Generated, Job
from .schemas import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest

log = logging.getLogger("longreach.serve")

BIG_TEXT = 200_000  # characters: longer prompts are tokenized off the event loop (about 0.1 s of work)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def create_app(lm: LoadedModel, config: ServeConfig) -> FastAPI:
    """The server's FastAPI app for the loaded model ``lm`` (see the module docstring).

    ``app.state``: ``engine``, ``config``, ``metrics``, ``admission``, ``prefix_cache`` (None when
    ``kv_reuse_bytes`` is 0), ``active`` (the CancelTokens of the requests queued or running),
    ``executor`` (the model's thread pool) and ``service`` (the routes' logic)."""
    from .guard import Admission, install
    from .metrics import Metrics

    service = Service(lm, config)  # validates the default method against the model (one-line error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(title="longreach", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.router.route_class = _Route
    state = app.state
    state.service = service
    state.engine = service.engine
    state.config = config
    state.metrics = service.metrics = Metrics(service.served)
    state.admission = service.admission = Admission(config.max_running, config.max_queue)
    state.prefix_cache = service.prefix_cache
    state.active = service.active
    state.executor = service.executor
    service.metrics.set_kv_source(service.kv_bytes_held)
    install_handlers(app)
    app.add_exception_handler(ClientGone, _client_gone)
    install(app, config, service.metrics)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        plan = service.resolve(model_id, None)
        return service.model_card(plan)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await service.chat(body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await service.completions(body, request)

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        return service.tokenizer_info()

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        return service.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        return service.detokenize(body)

    return app


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nobody reads it; the guard records the status


class _Route(APIRoute):
    """Routes whose unexpected exceptions become the fixed 500 answer (traceback in the server log only),
    inside the middleware stack so that the guard records the status."""

    PASS = (APIError, ClientGone, RequestValidationError, StarletteHTTPException, LongreachError)

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                from .guard import Overloaded

                if isinstance(exc, (*self.PASS, Overloaded)):
                    raise
                log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
                raise internal_error() from None

        return guarded


# ----------------------------------------------------------------------------------------------- service
class Service:
    """The routes' logic for one loaded model (see the module docstring)."""

    def __init__(self, lm: LoadedModel, config: ServeConfig):
        self.lm = lm
        self.config = config
        self.info = lm.info
        self.tokenizer = lm.tokenizer
        self.engine = Engine.for_model(lm)
        self.served = config.served_name or lm.info.name
        self.default_plan = Plan.from_spec(config.method)
        self.default_plan.check(lm.info)
        self.prefix_cache = (PrefixCache(config.kv_reuse_bytes, config.kv_reuse_min_tokens)
                             if config.kv_reuse_bytes > 0 else None)
        self.executor = ThreadPoolExecutor(max_workers=config.max_running, thread_name_prefix="longreach-model")
        self.active: set[CancelToken] = set()
        self.inflight: dict[CancelToken, int] = {}  # token -> estimated KV bytes of the running request
        self.background: set[asyncio.Task[Any]] = set()
        self.created = int(time.time())
        self.metrics: Any = None  # set by create_app
        self.admission: Any = None
        digest = hashlib.sha256(f"{__version__}|{self.served}|{self.info.dtype}|{self.lm.device}".encode())
        self.fingerprint = f"longreach-{__version__}-{digest.hexdigest()[:8]}"

    def kv_bytes_held(self) -> int:
        held = self.prefix_cache.bytes_held if self.prefix_cache is not None else 0
        return held + sum(list(self.inflight.values()))

    async def shutdown(self) -> None:
        for token in list(self.active):
            token.cancel(SHUTDOWN)
        try:  # threads stop at their next step; a reader finishes what it reads
            await asyncio.wait_for(asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True),
                                   timeout=max(1.0, self.config.drain_seconds))
        except asyncio.TimeoutError:
            log.warning("shutdown: model work still running after %.0f s; leaving it", self.config.drain_seconds)

    # -- model and method
    def resolve(self, model: str, method: str | None) -> Plan:
        """The plan a request asks for: ``model`` = NAME or NAME@SPEC, or ``method`` (both: must agree)."""
        spec_in_model = None
        if model != self.served:
            if not model.startswith(self.served + "@"):
                raise APIError(404, f"The model {shown_value(model, 80)} does not exist; this server serves "
                                    f"'{self.served}' (or '{self.served}@SPEC' to choose a method, see GET /v1/models).",
                               param="model", code="model_not_found")
            spec_in_model = model[len(self.served) + 1:]
            if not spec_in_model.strip():
                raise APIError(400, f"model '{self.served}@' has no method spec after '@'; write "
                                    f"'{self.served}@SPEC' (e.g. {self.served}@yarn:factor=4) or just '{self.served}'",
                               param="model", code="invalid_method")
        by_model = self.plan(spec_in_model, "model") if spec_in_model is not None else None
        by_method = self.plan(method, "method") if method is not None else None
        if by_model is not None and by_method is not None and by_model.spec != by_method.spec:
            raise APIError(400, f"model asks for method {by_model.spec} but method asks for {by_method.spec}; "
                                f"give one of them", param="method", code="invalid_method")
        return by_model or by_method or self.default_plan

    def plan(self, spec: str, param: str) -> Plan:
        try:
            plan = Plan.from_spec(spec)
            plan.check(self.info)
        except LongreachError as exc:
            raise APIError(400, " ".join(str(exc).split()), param=param, code="invalid_method") from None
        return plan

    def label(self, plan: Plan) -> str:
        """The ``model`` field of a response: the served name, with the method that ran."""
        return f"{self.served}@{plan.spec}" if plan.methods else self.served

    def model_card(self, plan: Plan | None = None) -> dict[str, Any]:
        plan = plan or self.default_plan
        methods = [{k: row[k] for k in ("name", "slot", "summary", "paper", "extends")} for row in describe_methods()]
        return {"id": self.served, "object": "model", "created": self.created, "owned_by": "longreach",
                "root": self.info.name, "parent": None, "max_model_len": self.info.window,
                "method": plan.spec, "reach": plan.reach(self.info), "methods": methods}

    # -- checks
    def check_fits(self, plan: Plan, prompt_tokens: int, max_new: int, param: str) -> None:
        """Length (the plan's reach) and memory, before any model work."""
        try:
            self.engine.check_request(plan, prompt_tokens, max_new, self.config.chunk_size, self.config.memory_limit)
        except TooLongError as exc:
            raise APIError(400, self.too_long(plan, prompt_tokens, max_new, exc), param=param,
                           code="context_length_exceeded") from None
        except MemoryBudgetError as exc:
            raise from_longreach(exc, param) from None

    def too_long(self, plan: Plan, prompt_tokens: int, max_new: int, exc: TooLongError) -> str:
        needed = prompt_tokens + max_new
        head = (f"This model's maximum context length is {exc.reach:,} tokens ({self.served} with method "
                f"{plan.spec}); the request needs {needed:,} ({prompt_tokens:,} in the prompt + {max_new:,} to "
                f"generate) and is never truncated.")
        spec = exc.suggestion  # the engine's: a method checked to read it on this model
        if spec is None:
            return f"{head} {' '.join(str(exc).split())}"
        return (f"{head} Shorten it, or choose a method that reads it: model '{self.served}@{spec}' (or "
                f"\"method\": \"{spec}\"; GET /v1/models lists every method).")

    @staticmethod
    def check_n(n: int | None) -> None:
        if n not in (None, 1):
            raise bad_request(f"n={n}: this server returns one choice per prompt; send n=1 (or separate requests)",
                              param="n", code="unsupported_value")

    @staticmethod
    def sampling(temperature: float | None, top_p: float | None, seed: int | None, top_logprobs: int | None
                 ) -> Sampling:
        try:
            return Sampling(1.0 if temperature is None else temperature, 1.0 if top_p is None else top_p, seed,
                            top_logprobs)
        except SettingError as exc:
            raise bad_request(str(exc), param=str(exc).split(" ", 1)[0]) from None

    @staticmethod
    def stops(stop: str | list[str] | None) -> list[str]:
        return [stop] if isinstance(stop, str) else list(stop or [])

    def ids_of(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if add_special_tokens:
            return encode(self.tokenizer, text)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def check_ids(self, ids: list[int], param: str) -> None:
        if not ids:
            raise bad_request("the prompt is empty: give at least one token", param=param)
        bad = next((t for t in ids if not 0 <= t < self.info.vocab), None)
        if bad is not None:
            raise bad_request(f"token id {bad} is outside {self.served}'s vocabulary (0 to {self.info.vocab - 1})",
                              param=param)

    # -- model work (threads)
    def generate(self, job: Job, plan: Plan, ids: list[int], max_new: int, sampling: Sampling, stops: list[str],
                 prompt_logprobs: int | None = None, index: int = 0, stream: bool = False) -> Generated:
        text = TextStream(self.tokenizer, stops)
        logprobs = sampling.top_logprobs is not None

        def on_step(step: Step) -> bool:
            stopped = text.add(step.token_id)
            if stream:
                piece = text.take()
                if piece or logprobs:
                    job.emit("delta", (index, piece, [step]))
            return stopped

        c = self.engine.complete(plan, ids, max_new, sampling=sampling, prompt_logprobs=prompt_logprobs,
                                 on_step=on_step, cancel=job.token, prefix_cache=self.prefix_cache,
                                 chunk_size=self.config.chunk_size, memory_limit=self.config.memory_limit)
        text.finish()
        finish = "stop" if text.stopped else c.finish_reason
        return Generated(index, text.text, text.take(final=True), c.steps, finish, c.prompt_tokens, len(c.steps),
                         c.cached_tokens, c.prompt_steps)

    def read(self, job: Job, plan: Plan, document: str, question: str, max_new: int, stops: list[str],
             index: int = 0) -> Generated:
        job.token.check()  # a reader cannot stop half-way: it checks before it starts (each prompt of a batch)
        request = ReadRequest(document, question, max_new_tokens=max_new, chunk_size=self.config.chunk_size,
                              memory_limit=self.config.memory_limit)
        result = self.engine.run(plan, request)
        answer = result.answer
        cut = [i for i in (answer.find(s) for s in stops if s) if i >= 0]
        if cut:
            answer = answer[:min(cut)]
        finish = "stop" if cut or len(result.output_ids) < max_new else "length"
        return Generated(index, answer, answer, [], finish, result.input_tokens, len(result.output_ids))

    # -- /v1/chat/completions
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        plan = self.resolve(body.model, body.method)
        self.check_n(body.n)
        max_new = body.max_completion_tokens or body.max_tokens or self.config.default_max_tokens
        stops = self.stops(body.stop)
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
        k = (body.top_logprobs or 0) if body.logprobs else None
        reader = plan.get("reader")
        work: Callable[[Job], Generated]
        if reader is not None:
            if k is not None:
                raise bad_request(f"logprobs are not available with the reader method {reader.name} (it answers "
                                  f"from retrieved text); drop logprobs or choose another method", param="logprobs")
            try:
                document, question = reader_input(body.messages)
            except LongreachError as exc:
                raise from_longreach(exc, "messages") from None
            kv = plan.kv_cache_bytes(self.info, self.info.window)

            def work(job: Job) -> Generated:
                return self.read(job, plan, document, question, max_new, stops)
        else:
            try:
                ids = await _offload(sum(len(m.text) for m in body.messages),
                                     lambda: self.ids_of(chat_prompt(self.tokenizer, body.messages)))
            except LongreachError as exc:
                raise from_longreach(exc, "messages") from None
            self.check_ids(ids, "messages")
            self.check_fits(plan, len(ids), max_new, "messages")
            sampling = self.sampling(body.temperature, body.top_p, body.seed, k)
            kv = plan.kv_cache_bytes(self.info, len(ids) + max_new)
            stream = bool(body.stream)

            def work(job: Job) -> Generated:
                return self.generate(job, plan, ids, max_new, sampling, stops, stream=stream)

        job = Job(self, kv)
        await job.start(request, work)
        head = {"id": new_id("chatcmpl"), "created": now(), "model": self.label(plan),
                "system_fingerprint": self.fingerprint}
        if body.stream:
            return _sse(self.ended(job, self.chat_events(job, head, k, body.include_usage)))
        gen: Generated = await job.result(request)
        logprobs = chat_logprobs(TokenText(self.tokenizer), gen.steps, k) if k is not None else None
        choice = {"index": 0, "message": {"role": "assistant", "content": gen.text, "refusal": None},
                  "logprobs": logprobs, "finish_reason": gen.finish_reason}
        self.count(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice],
                             "usage": usage(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)})

    async def ended(self, job: Job, events: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """A stream's ``events`` then ``[DONE]``: a failure after the start becomes an ``error`` event (a bug
        while formatting included), a client that left cancels the job and gets nothing more."""
        try:
            async for event in events:
                yield event
        except _StreamFailed as failed:
            if failed.body is None:
                return
            yield _event(failed.body)
        except Exception as exc:  # a bug while formatting: the client still gets an error event and [DONE]
            yield _event(self.stream_error(exc))
        finally:
            if not job.finished:
                job.token.cancel(DISCONNECTED)
            await events.aclose()
        yield DONE

    async def chat_events(self, job: Job, head: dict[str, Any], k: int | None,
                          include_usage: bool) -> AsyncGenerator[bytes, None]:
        head = {**head, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include_usage else {}
        tt = TokenText(self.tokenizer)

        def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
            return _event({**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                                "finish_reason": finish}], **extra})

        yield chunk({"role": "assistant", "content": ""})
        async for _, piece, steps in self._deltas(job):
            logprobs = chat_logprobs(tt, steps, k) if k is not None else None
            yield chunk({"content": piece}, logprobs=logprobs)
        gen: Generated = job.fut.result()  # type: ignore[union-attr]
        yield chunk({"content": gen.tail} if gen.tail else {}, finish=gen.finish_reason)
        self.count(gen.prompt_tokens, gen.completion_tokens, gen.cached_tokens)
        if include_usage:
            yield _event({**head, "choices": [], "usage": usage(gen.prompt_tokens, gen.completion_tokens,
                                                                gen.cached_tokens)})

    async def _deltas(self, job: Job) -> AsyncIterator[tuple[int, str, list[Step]]]:
        """The stream events of ``job`` until it ends; raises :class:`_StreamFailed` with the error event
        to send (None: nobody to send it to)."""
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                yield payload
                continue
            if kind == "cancelled" and not (job.fut is not None and job.fut.done()):
                raise _StreamFailed(self.stream_error(job.cancel_error()))
            if job.fut is not None and job.fut.done():
                exc = job.fut.exception()
                if exc is None:
                    return
                if isinstance(exc, Cancelled):
                    raise _StreamFailed(self.stream_error(job.cancel_error()))
                raise _StreamFailed(self.stream_error(exc))

    def stream_error(self, exc: BaseException) -> dict[str, Any] | None:
        if isinstance(exc, ClientGone):
            return None
        if isinstance(exc, APIError):
            return exc.body()
        if isinstance(exc, LongreachError):
            return from_longreach(exc).body()
        log.error("internal error in a stream", exc_info=exc)
        return internal_error().body()

    def count(self, prompt: int, completion: int, cached: int) -> None:
        with contextlib.suppress(Exception):
            self.metrics.tokens(prompt, completion, cached)

    # -- /v1/completions
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        plan = self.resolve(body.model, body.method)
        self.check_n(body.n)
        if body.suffix:
            raise bad_request("suffix is not supported by this server; send the text after the insertion point "
                              "in the prompt instead", param="suffix", code="unsupported_value")
        prompts = self.prompts(body)
        max_new = 16 if body.max_tokens is None else body.max_tokens
        stops = self.stops(body.stop)
        k, echo = body.logprobs, bool(body.echo)
        reader = plan.get("reader")
        texts: list[str | None] = [text for text, _ in prompts]
        all_ids: list[list[int]] = []  # the token ids of each prompt (not for a reader)
        work: Callable[[Job], list[Generated]]
        if reader is not None:
            if k is not None or echo:
                raise bad_request(f"logprobs and echo are not available with the reader method {reader.name}; "
                                  f"drop them or choose another method", param="logprobs" if k is not None else "echo")
            if max_new < 1:
                raise bad_request("a reader method needs max_tokens >= 1", param="max_tokens")
            parts = [split_text(text if text is not None else self.tokenizer.decode(ids)) for text, ids in prompts]
            kv = plan.kv_cache_bytes(self.info, self.info.window)

            def work(job: Job) -> list[Generated]:
                return [self.read(job, plan, doc, question, max_new, stops, i) for i, (doc, question) in enumerate(parts)]
        else:
            for text, ids in prompts:
                if ids is None:
                    text = text or ""
                    ids = await _offload(len(text), functools.partial(self.ids_of, text,
                                                                      body.add_special_tokens is not False))
                self.check_ids(ids, "prompt")
                self.check_fits(plan, len(ids), max_new, "prompt")
                all_ids.append(ids)
            top = None if k is None else max(k, 1)  # the top-1 is always listed (lm-eval reads it)
            sampling = self.sampling(body.temperature, body.top_p, body.seed, top)
            prompt_logprobs = top if echo else None
            stream = bool(body.stream) and not (echo and k is not None)  # echoed logprobs: one chunk at the end
            kv = max(plan.kv_cache_bytes(self.info, len(ids) + max_new) for ids in all_ids)

            def work(job: Job) -> list[Generated]:
                return [self.generate(job, plan, ids, max_new, sampling, stops, prompt_logprobs, i, stream)
                        for i, ids in enumerate(all_ids)]

        job = Job(self, kv)
        await job.start(request, work)
        head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": self.label(plan),
                "system_fingerprint": self.fingerprint}
        echoes = [self.echo_text(t, ids) for t, ids in zip(texts, all_ids)] if echo else [""] * len(prompts)
        if body.stream:
            return _sse(self.ended(job, self.completion_events(job, head, echoes, all_ids, k, echo,
                                                               body.include_usage)))
        gens: list[Generated] = await job.result(request)
        tt = TokenText(self.tokenizer)
        choices = [self.completion_choice(tt, gen, echoes[gen.index], k, echo, all_ids[gen.index] if echo else [])
                   for gen in gens]
        prompt_tokens, completion_tokens, cached = self.totals(gens)
        self.count(prompt_tokens, completion_tokens, cached)
        return JSONResponse({**head, "choices": choices, "usage": usage(prompt_tokens, completion_tokens, cached)})

    @staticmethod
    def totals(gens: list[Generated]) -> tuple[int, int, int]:
        return (sum(g.prompt_tokens for g in gens), sum(g.completion_tokens for g in gens),
                sum(g.cached_tokens for g in gens))

    def prompts(self, body: CompletionRequest) -> list[tuple[str | None, list[int] | None]]:
        p = body.prompt
        if isinstance(p, str):
            return [(p, None)]
        if not p:
            raise bad_request("the prompt is empty: give a string, a list of strings or token ids", param="prompt")
        if isinstance(p[0], str):
            return [(s, None) for s in p]  # type: ignore[misc]
        if isinstance(p[0], int):
            return [(None, list(p))]  # type: ignore[arg-type]
        return [(None, list(x)) for x in p]  # type: ignore[union-attr]

    def echo_text(self, text: str | None, ids: list[int] | None) -> str:
        if text is not None:
            return text
        return self.tokenizer.decode(ids or [], skip_special_tokens=False)

    def completion_choice(self, tt: TokenText, gen: Generated, echoed: str, k: int | None, echo: bool,
                          ids: list[int]) -> dict[str, Any]:
        logprobs = None
        if k is not None:
            parts = []
            if echo:
                steps = gen.prompt_steps or [None] * len(ids)
                parts.append(completion_logprobs(tt, zip(ids, steps), k))
            parts.append(completion_logprobs(tt, ((s.token_id, s) for s in gen.steps), k, offset=len(echoed)))
            logprobs = merge_completion_logprobs(parts)
        return {"index": gen.index, "text": echoed + gen.text, "logprobs": logprobs,
                "finish_reason": gen.finish_reason}

    async def completion_events(self, job: Job, head: dict[str, Any], echoes: list[str], prompt_ids: list[list[int]],
                                k: int | None, echo: bool, include_usage: bool) -> AsyncGenerator[bytes, None]:
        extra = {"usage": None} if include_usage else {}
        tt = TokenText(self.tokenizer)
        sent = [0] * len(echoes)  # characters of each choice's text sent so far (text_offset)

        def chunk(index: int, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
            sent[index] += len(text)
            return _event({**head, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                "finish_reason": finish}], **extra})

        buffered = echo and k is not None  # prompt logprobs come with the result: one chunk per choice at the end
        started: set[int] = set()
        async for index, piece, steps in self._deltas(job):
            if index not in started and echoes[index]:
                yield chunk(index, echoes[index])
            started.add(index)
            lp = (completion_logprobs(tt, ((s.token_id, s) for s in steps), k, offset=sent[index])
                  if k is not None else None)
            yield chunk(index, piece, logprobs=lp)
        gens: list[Generated] = job.fut.result()  # type: ignore[union-attr]
        for gen in gens:
            if buffered:
                choice = self.completion_choice(tt, gen, echoes[gen.index], k, echo, prompt_ids[gen.index])
                yield chunk(gen.index, choice["text"], gen.finish_reason, choice["logprobs"])
                continue
            text = gen.tail if gen.index in started else echoes[gen.index] + gen.tail
            yield chunk(gen.index, text, gen.finish_reason)
        prompt_tokens, completion_tokens, cached = self.totals(gens)
        self.count(prompt_tokens, completion_tokens, cached)
        if include_usage:
            yield _event({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, cached)})

    # -- tokenizer endpoints
    def check_model(self, model: str | None) -> None:
        if model is not None:
            self.resolve(model, None)

    def tokenizer_info(self) -> dict[str, Any]:
        tok = self.tokenizer
        template = getattr(tok, "chat_template", None)
        return {"tokenizer_class": type(tok).__name__, "eos_token": getattr(tok, "eos_token", None),
                "bos_token": getattr(tok, "bos_token", None), "pad_token": getattr(tok, "pad_token", None),
                "unk_token": getattr(tok, "unk_token", None), "add_bos_token": bool(getattr(tok, "add_bos_token", False)),
                "chat_template": template if isinstance(template, str) else None,
                "model_max_length": self.info.window, "vocab_size": self.info.vocab}

    def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        self.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give either prompt (a string) or messages", param="prompt")
        add = body.add_special_tokens is not False
        try:
            if body.messages is not None:
                ids = self.ids_of(chat_prompt(self.tokenizer, body.messages), add)
            else:
                ids = self.ids_of(body.prompt or "", add)
        except LongreachError as exc:
            raise from_longreach(exc, "messages") from None
        tt = TokenText(self.tokenizer)
        return {"count": len(ids), "max_model_len": self.info.window, "tokens": ids,
                "token_strs": [tt.text(i) for i in ids]}

    def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        self.check_model(body.model)
        if body.tokens:
            self.check_ids(body.tokens, "tokens")
        return {"prompt": self.tokenizer.decode(body.tokens, skip_special_tokens=False)}


class _StreamFailed(Exception):
    def __init__(self, body: dict[str, Any] | None):
        super().__init__("stream failed")
        self.body = body


async def _offload(size: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` (tokenization): on the event loop for a small input, in a worker thread for a big one."""
    return fn() if size < BIG_TEXT else await asyncio.to_thread(fn)


def _event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n\n"


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


__all__ = ["Service", "create_app"]
