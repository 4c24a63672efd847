"""Backends: what answers a sample. ``local`` (default) runs the model in this process through its
:class:`~longreach.engine.Engine` (``engine.run(plan, request)``), exactly like ``longreach ask``;
``openai`` sends each prompt to an OpenAI-compatible HTTP server (vLLM, llama.cpp, SGLang, ...);
``oracle`` answers with the references (optionally wrong past a length) and checks the harness itself.

Backend specs use the method grammar, except that values may contain ``:`` and ``/`` (URLs):
``local``, ``oracle:delay=0.1,fail_above=4096``, ``openai:url=http://127.0.0.1:8000/v1,model=NAME,chat=1``.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from ..engine import Engine
from ..memory import PeakMemory, cache_bytes
from ..readers import Request
from ..registry import Registry
from ..spec import Plan
from . import client
from .task import TASK_NAME_RE, BenchError, Sample, Task

EVIDENCE_ITEMS, EVIDENCE_CHARS = 32, 300  # what a record keeps of a reader's evidence


def evidence_excerpts(evidence: list[str]) -> list[str]:
    """The first ``EVIDENCE_ITEMS`` pieces of a reader's evidence, each cut to ``EVIDENCE_CHARS`` characters
    (an agent's findings, alr2's verified quotes, rag's chunks): enough to trace a wrong answer to what the
    reader saw, without copying retrieved chunks whole into every record."""
    return [e if len(e) <= EVIDENCE_CHARS else e[:EVIDENCE_CHARS - 3] + "..." for e in evidence[:EVIDENCE_ITEMS]]


class BackendError(BenchError):
    """The backend cannot answer at all (server down, wrong URL, refused key): the sweep stops instead of
    recording every remaining sample as failed."""


class Backend:
    name = ""
    model_name = ""

    @property
    def tokenizer(self) -> Any:
        raise NotImplementedError

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        """A one-line reason when a cell of ``length`` tokens of ``task`` cannot run under ``plan``; else None."""
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        info = getattr(getattr(self, "lm", None), "info", None)
        return {"backend": self.name, "model": self.model_name, "dtype": getattr(info, "dtype", None),
                "window": getattr(info, "window", None), "prompt": getattr(self, "prompt", None)}


class LocalBackend(Backend):
    """The model in this process (a known model name, a folder, a .gguf, or an already loaded model)."""

    name = "local"

    def __init__(self, model: Any, dtype: str | None = None, chunk_size: int = 2048,
                 memory_limit: int | None = None, prompt: str = "auto", device: str | None = "auto"):
        from ..models import LoadedModel, load_model

        self.lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
        self.engine = Engine.for_model(self.lm)  # every request on the model goes through its engine
        self.model_name = self.lm.name
        self.chunk_size = chunk_size
        self.memory_limit = memory_limit
        self.prompt = prompt

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        return self.engine.refuse(plan, length, self.chunk_size, self.memory_limit)

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        request = Request(sample.context, sample.question, sample.max_new_tokens, sample.answer_prefix,
                          self.chunk_size, self.memory_limit, prompt=self.prompt, ignore_eos=sample.ignore_eos)
        with PeakMemory(self.engine.device) as peak:
            result = self.engine.run(plan, request, progress=False)
        return {"prediction": result.answer, "input_tokens": result.input_tokens,
                "output_tokens": len(result.output_ids), "prefill_seconds": round(result.prefill_seconds, 3),
                "decode_seconds": round(result.decode_seconds, 3), "peak_memory_bytes": peak.peak,
                "start_memory_bytes": peak.start, "kv_cache_bytes": result.kv_cache_bytes,
                **({"reader": result.extra} if result.extra else {}),  # e.g. rag's index / retrieval seconds
                **({"evidence": evidence_excerpts(result.evidence)} if result.evidence else {})}

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        """Summed NLL of every token of ``sample.context`` given its prefix (chunked, under ``plan``)."""
        from ..prompt import encode

        ids = encode(self.lm.tokenizer, sample.context)
        n = len(ids)
        chunk = min(self.chunk_size, 512)  # full logits per chunk: (chunk, vocab) floats
        t0 = time.perf_counter()
        with PeakMemory(self.engine.device) as peak, self.engine.session(plan, n) as s:
            cache = s.make_cache()
            nll = s.loglik(ids, chunk, cache=cache)  # (n-1,) float64
            held = cache_bytes(cache)  # what the plan's cache holds after the pass (compression shows here)
        tail = nll[-max(1, (n - 1) // 4):]
        return {"prediction": f"{float(nll.sum())} {n - 1}", "input_tokens": n, "output_tokens": 0,
                "prefill_seconds": round(time.perf_counter() - t0, 3), "decode_seconds": 0.0,
                "peak_memory_bytes": peak.peak, "start_memory_bytes": peak.start, "kv_cache_bytes": held,
                "ppl_tail": round(math.exp(float(tail.mean())), 4)}


class OracleBackend(Backend):
    """Answers with the references (``fail_above``: answer wrong past that many tokens; ``delay``: seconds
    per sample). Checks generators against scorers and lets tests run whole sweeps in milliseconds."""

    name = "oracle"

    def __init__(self, model: str = "oracle", delay: float = 0.0, fail_above: int = 0):
        self.model_name = f"oracle-{model}" if model != "oracle" else model
        self.delay = delay
        self.fail_above = fail_above
        self._tok = None

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = byte_tokenizer()
        return self._tok

    def _wrong(self, sample: Sample) -> bool:
        return bool(self.fail_above) and sample.meta["tokens"] > self.fail_above

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        time.sleep(self.delay)
        answer = "I do not know." if self._wrong(sample) else ", ".join(sample.references)
        return {"prediction": answer, "input_tokens": sample.meta["tokens"], "output_tokens": 1,
                "prefill_seconds": self.delay, "decode_seconds": 0.0, "peak_memory_bytes": 0,
                "kv_cache_bytes": 0}

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        time.sleep(self.delay)
        n = sample.meta["tokens"] - 1
        per = 3.0 if self._wrong(sample) else 1.0
        return {"prediction": f"{per * n} {n}", "input_tokens": n + 1, "output_tokens": 0,
                "prefill_seconds": self.delay, "decode_seconds": 0.0, "peak_memory_bytes": 0,
                "kv_cache_bytes": 0, "ppl_tail": round(math.exp(per), 4)}


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (one token per UTF-8 byte), for the oracle backend and tests."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for special in ("<s>", "</s>", "<pad>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


DEFAULT_OPENAI_URL = "http://127.0.0.1:8000/v1"
_MAX_COUNT = 2**53  # a token count a reply may report; larger (or not an int) falls back to the local count


class TransientBackendError(BenchError):
    """A sample's request failed for a reason that may pass (a timeout, 429, 5xx, a reset connection, a
    garbled or oversized reply), after its retries: recorded for the sample, ``retryable`` on the next run."""

    retryable = True


class OpenAIBackend(Backend):
    """An OpenAI-compatible server answers each generate sample (greedy: ``temperature=0``,
    ``max_tokens`` = the task's answer budget).

    Parameters: ``url`` (default ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``), ``model`` (the
    served name; default the only model ``GET {url}/models`` lists), ``chat`` (0: ``/completions`` with
    exactly the prompt text the local reader builds; 1: ``/chat/completions`` with the document and the
    question as one user message, the server applying its own template; the task's answer prefix is not
    sent), ``timeout`` (seconds per request, default 600), ``retries`` (default 2), ``insecure`` (1: send
    the key over plain http to another machine). ``$OPENAI_API_KEY`` is sent as a bearer token when set
    (local servers need none), only to the URL's own host (see :mod:`longreach.bench.client`), and never
    stored: it is read from the environment for each request and scrubbed from every message and answer.

    Prompts are sized with the tokenizer of ``--model`` (a known model, folder or .gguf: tokenizer only,
    no weights), which should be the served model's; ``input_tokens`` records the server's own count
    (``usage.prompt_tokens``) so that a mismatch shows. A method plan is sent as ``model = "NAME@SPEC"``
    (``longreach serve`` picks the method per request that way; the plan ``none`` sends the bare NAME) and
    the server validates it: a 404, or a 400 about the model / method (code ``invalid_method``), stops the
    sweep with a :class:`BackendError` saying the server does not serve that method. Servers with one fixed
    configuration (vLLM, llama.cpp) cannot serve methods per request (``longreach export vllm`` prints the
    vLLM flags of a position method: serve it that way and sweep ``none``); llama.cpp's server ignores the
    model name, so it would answer every method with its plain model: measure methods against
    ``longreach serve``. Log-likelihood tasks are refused (the backend only generates).
    A server that cannot be reached, a 401/403/404, a dead connection or a redirect that would carry the key
    to another host stops the sweep with a :class:`BackendError`; a timeout, 429, 5xx or a reply that is not
    JSON (or over 16 MiB) is retried and then recorded as that sample's error (:class:`TransientBackendError`);
    another 4xx (e.g. a prompt over the server's limit) or a reply without an answer is recorded at once.
    """

    name = "openai"
    backoff = 1.0  # seconds before the first retry, doubled for each next one (at most 30)

    def __init__(self, model: Any, url: str | None = None, served: str | None = None, chat: bool = False,
                 timeout: float = 600.0, retries: int = 2, prompt: str = "auto", insecure: bool = False):
        from ..models import LoadedModel

        self.url = (url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).rstrip("/")
        problem = client.check_url(self.url)
        if problem:
            raise BenchError(problem)
        from ..prompt import is_auto, parse_format

        if chat and not is_auto(prompt) and parse_format(prompt).base == "plain":
            raise BenchError("openai:chat=1 sends chat messages, which --prompt plain cannot size; "
                             "use --prompt auto or chat, or openai:chat=0")
        if not (0 < timeout <= 86400) or not (0 <= retries <= 100):  # also refuses nan
            raise BenchError(f"openai: timeout must be in (0, 86400] seconds and retries in 0..100, got "
                             f"timeout={timeout}, retries={retries}")
        self.chat, self.timeout, self.retries, self.prompt = chat, timeout, retries, prompt
        self.insecure = insecure
        self._loaded = model if isinstance(model, LoadedModel) else None
        self.tokenizer_name = self._loaded.name if self._loaded is not None else str(model)
        self._tok = None
        self._key()  # a key that must not go to this URL: refused before any request
        self.max_model_len: int | None = None
        self.model_name = self._served_model(served)

    # ----------------------------------------------------------------------------------------- HTTP
    def _key(self) -> str | None:
        """``$OPENAI_API_KEY`` (stripped), read for each request and never kept; a BackendError when it
        must not be sent to this URL."""
        key = (os.environ.get("OPENAI_API_KEY") or "").strip() or None
        if key is not None:
            problem = client.check_key(key, self.url, self.insecure)
            if problem:
                raise BackendError(problem)
        return key

    def _call(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        """One request; the reply's JSON (a :class:`client.ReplyError` when it is not JSON, too large or
        too deep). A redirect that would carry the key elsewhere is a BackendError."""
        key = self._key()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
        deadline = time.monotonic() + timeout
        try:
            with client.make_opener(self.url, key).open(req, timeout=timeout) as resp:
                return client.decode_json(client.read_reply(resp, deadline))
        except client.RedirectRefused as exc:
            if exc.fatal:
                raise BackendError(str(exc)) from None
            raise BenchError(str(exc)) from None

    def _text(self, text: Any) -> str:
        """Server text for a message: one line, short, without the key."""
        return client.server_text(text, (os.environ.get("OPENAI_API_KEY") or "").strip() or None)

    def _detail(self, exc: urllib.error.HTTPError) -> str:
        return client.error_detail(exc, (os.environ.get("OPENAI_API_KEY") or "").strip() or None)

    def _reason(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "no answer within the timeout (raise openai:timeout=SECONDS)"
        return self._text(str(reason) or type(reason).__name__)

    def _served_model(self, served: str | None) -> str:
        """Check that the server answers (``GET /models``) and pick / check the served model name."""
        where = f"{self.url}/models"
        if served is not None and not _usable_name(served):
            raise BenchError(f"openai:model={self._text(served)} is not a usable model name")
        try:
            listing = self._call("/models", None, min(self.timeout, 30.0))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise BackendError(f"{where}: HTTP {exc.code} {self._detail(exc)}; set OPENAI_API_KEY to a "
                                   f"valid key") from None
            if served:  # a server without /models: the first request will tell
                return served
            raise BackendError(f"{where}: HTTP {exc.code} {self._detail(exc)}; name the served model with "
                               f"openai:model=NAME (and check that the URL ends in /v1)") from None
        except client.ReplyError as exc:
            raise BackendError(f"{where}: {exc}; check that openai:url is an OpenAI-compatible API (usually "
                               f"ending in /v1)") from None
        except BackendError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError, BenchError) as exc:
            raise BackendError(f"cannot reach an OpenAI-compatible server at {self.url} ({self._reason(exc)}); "
                               f"start it or fix openai:url=...") from None
        entries = [m for m in (listing.get("data") or []) if isinstance(m, dict) and isinstance(m.get("id"), str)
                   and m["id"]] if isinstance(listing, dict) and isinstance(listing.get("data"), list) else []
        ids = [m["id"] for m in entries]
        shown = self._text(", ".join(ids[:8]) or "none")
        if served is None:
            if len(ids) != 1:
                raise BackendError(f"{where} lists {len(ids)} models ({shown}); choose one with openai:model=NAME")
            served = ids[0]
            if not _usable_name(served):
                raise BackendError(f"{where} lists a model id that is not a usable name ({self._text(served)}); "
                                   f"name the model with openai:model=NAME")
        elif ids and served not in ids:
            raise BackendError(f"{self.url} serves {shown}, not {served!r}; fix openai:model=...")
        for m in entries:
            n = m.get("max_model_len")  # vLLM reports it
            if m["id"] == served and _count(n) is not None and n > 0:
                self.max_model_len = n
        return served

    def _read_error(self, exc: urllib.error.HTTPError) -> tuple[str, dict[str, Any]]:
        """(the server's message as :meth:`_detail` gives it, its OpenAI ``error`` object or {}); the body is
        read once (up to client.MAX_ERROR_BYTES)."""
        try:
            raw = exc.read(client.MAX_ERROR_BYTES) if exc.fp is not None else b""
        except Exception:  # noqa: BLE001 - a broken error body: the reason alone
            raw = b""
        copy = urllib.error.HTTPError(exc.url, exc.code, exc.reason, exc.headers, io.BytesIO(raw))
        try:
            data = json.loads(raw.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            data = None
        err = data.get("error") if isinstance(data, dict) else None
        return self._detail(copy), err if isinstance(err, dict) else {}

    def _not_served(self, where: str, status: int, detail: str, spec: str) -> BackendError:
        return BackendError(f"{where}: HTTP {status} {detail}; the server does not serve method {spec} (sent as "
                            f"model {self.model_name}@{spec}): serve it with `longreach serve`, or run it with "
                            f"--backend local")

    def _post(self, path: str, body: dict[str, Any], spec: str | None = None) -> Any:
        """POST with retries of transient failures; a BenchError (recorded for the sample) after the last.
        ``spec``: the method plan the body's model asks for (its refusal stops the sweep)."""
        where = self.url + path
        last, transient = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            try:
                return self._call(path, body, self.timeout)
            except urllib.error.HTTPError as exc:
                detail, err = self._read_error(exc)
                if exc.code in (401, 403):
                    raise BackendError(f"{where}: HTTP {exc.code} {detail}; set OPENAI_API_KEY to a "
                                       f"valid key") from None
                if spec is not None and (exc.code == 404 or (exc.code == 400 and (
                        err.get("code") == "invalid_method" or err.get("param") in ("model", "method")))):
                    raise self._not_served(where, exc.code, detail, spec) from None
                if exc.code == 404:
                    hint = "use openai:chat=1" if path == "/completions" else "use openai:chat=0"
                    raise BackendError(f"{where}: HTTP 404 {detail}; check openai:url (usually ends "
                                       f"in /v1) and openai:model, or {hint}") from None
                last = f"HTTP {exc.code} {detail}".rstrip()
                transient = exc.code == 429 or exc.code >= 500
                if not transient:
                    break  # the request itself is refused (e.g. over the server's length): not retried
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError) and attempt == self.retries:
                    raise BackendError(f"{self.url} stopped answering (connection refused); restart the "
                                       f"server and re-run the same command to resume") from None
                last, transient = self._reason(exc), True
            except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts, resets, bad JSON
                last, transient = self._reason(exc), True
        error = TransientBackendError if transient else BenchError
        raise error(f"{where}: {last}" + (f" (after {attempt + 1} tries)" if attempt else ""))

    # ------------------------------------------------------------------------------------ backend
    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            from ..models import load_tokenizer

            self._tok = self._loaded.tokenizer if self._loaded is not None else load_tokenizer(self.tokenizer_name)
        return self._tok

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        if task is not None and task.kind != "generate":
            return f"{task.name} scores log-likelihoods; the openai backend only generates (use --backend local)"
        # a server's max_model_len is its plain model's; with a method the server checks the length itself
        if not plan.methods and self.max_model_len is not None and length > self.max_model_len:
            return f"{length:,} tokens is beyond the server's max_model_len ({self.max_model_len:,})"
        return None

    def served_model(self, plan: Plan) -> str:
        """The request's ``model``: the served name, ``NAME@SPEC`` for a method plan."""
        return f"{self.model_name}@{plan.spec}" if plan.methods else self.model_name

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        from ..prompt import build_prompt, user_turn

        model = self.served_model(plan)
        if self.chat:
            path = "/chat/completions"
            fmt = "chat" if self.prompt == "auto" else self.prompt
            content = user_turn(sample.context, sample.question, fmt)  # the reader's chat turn, modifiers included
            body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        else:
            path = "/completions"
            text = build_prompt(self.tokenizer, sample.context, sample.question, sample.answer_prefix, self.prompt)
            body = {"model": model, "prompt": text}
        body.update(max_tokens=sample.max_new_tokens, temperature=0.0)
        t0 = time.perf_counter()
        data = self._post(path, body, plan.spec if plan.methods else None)
        return self.parse_answer(data, path, sample.meta["tokens"], time.perf_counter() - t0)

    def parse_answer(self, data: Any, path: str, tokens: int, seconds: float) -> dict[str, Any]:
        """A sample's result from a reply's JSON ``data``; a BenchError (recorded) when it holds no answer.
        The answer is kept as sent except lone surrogates (U+FFFD) and the key (``***``); token counts
        that are not plausible integers fall back to the local count."""
        field = "message.content" if self.chat else "text"
        choices = data.get("choices") if isinstance(data, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        holder = choice.get("message") if self.chat and isinstance(choice, dict) else choice
        answer = holder.get("content" if self.chat else "text") if isinstance(holder, dict) else 0
        if answer is None:  # e.g. a chat reply with only tool calls: an empty answer
            answer = ""
        if not isinstance(answer, str):
            raise BenchError(f"{self.url}{path}: the answer has no choices[0].{field} string")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return {"prediction": client.clean_text(answer, (os.environ.get("OPENAI_API_KEY") or "").strip() or None
                                                ).strip(),
                "input_tokens": _count(usage.get("prompt_tokens")) or tokens,
                "output_tokens": _count(usage.get("completion_tokens")) or 0, "prefill_seconds": None,
                "decode_seconds": None, "request_seconds": round(seconds, 3), "peak_memory_bytes": 0,
                "kv_cache_bytes": 0}

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise BenchError("the openai backend only generates; run log-likelihood tasks with --backend local")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "url": self.url, "chat": self.chat,
                "tokenizer": self.tokenizer_name, "prompt": self.prompt, "max_model_len": self.max_model_len,
                "dtype": None, "window": None}


def _count(value: Any) -> int | None:
    """``value`` when it is a plausible token count (an int, not a bool, in 0..2**53), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_COUNT else None


def _usable_name(name: str) -> bool:
    """A served model name that can name a results folder and a request field."""
    return 0 < len(name) <= 256 and name.isprintable() and name.strip() == name and name not in (".", "..") \
        and not client._SURROGATE.search(name)


#: The backends by name (the same registry type as methods and tasks).
BACKENDS: Registry[Backend] = Registry("backend", TASK_NAME_RE, BenchError)
for _cls in (LocalBackend, OpenAIBackend, OracleBackend):
    BACKENDS.register(_cls)
_BACKEND_VALUE = re.compile(r"^[^\s,=]+$")


def parse_backend_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"openai:url=http://h:8000/v1,chat=1"`` -> ``("openai", {"url": "http://h:8000/v1", "chat": "1"})``:
    the task grammar, but values may contain ``:`` and ``/``."""
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if not TASK_NAME_RE.match(name):
        raise BenchError(f"bad backend name {name!r}; valid backends: {', '.join(BACKENDS)}")
    params: dict[str, str] = {}
    if colon:
        for item in rest.split(","):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or not key.isidentifier() or not _BACKEND_VALUE.match(value):
                raise BenchError(f"bad parameter {item.strip()!r} for backend {name!r}: write key=value")
            if key in params:
                raise BenchError(f"parameter {key!r} given twice for backend {name!r}")
            params[key] = value
    return name, params


def _flag(value: str, what: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise BenchError(f"{what} must be 0 or 1, got {value!r}")


def make_backend(spec: str, model: Any, dtype: str | None = None, chunk_size: int = 2048,
                 memory_limit: int | None = None, prompt: str = "auto", device: str | None = "auto") -> Backend:
    name, params = parse_backend_spec(spec)
    if name == "local":
        if params:
            raise BenchError("the local backend takes no parameters (use --dtype, --chunk-size)")
        return LocalBackend(model, dtype=dtype, chunk_size=chunk_size, memory_limit=memory_limit, prompt=prompt,
                            device=device)
    if name == "oracle":
        unknown = sorted(set(params) - {"delay", "fail_above"})
        if unknown:
            raise BenchError(f"oracle has no parameter {unknown[0]!r}; its parameters: delay, fail_above")
        try:
            delay, fail_above = float(params.get("delay", 0)), int(params.get("fail_above", 0))
        except ValueError as exc:
            raise BenchError(f"bad oracle parameter: {exc}") from None
        if not (0 <= delay <= 60 and 0 <= fail_above <= 1 << 24):  # nan fails too
            raise BenchError(f"oracle needs 0 <= delay <= 60 seconds and 0 <= fail_above <= 16M tokens; got "
                             f"delay={delay}, fail_above={fail_above}")
        return OracleBackend(str(model), delay, fail_above)
    if name == "openai":
        known = ("url", "model", "chat", "timeout", "retries", "insecure")
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise BenchError(f"openai has no parameter {unknown[0]!r}; its parameters: {', '.join(known)}")
        try:
            timeout, retries = float(params.get("timeout", 600)), int(params.get("retries", 2))
        except ValueError as exc:
            raise BenchError(f"bad openai parameter: {exc}") from None
        return OpenAIBackend(model, url=params.get("url"), served=params.get("model"),
                             chat=_flag(params.get("chat", "0"), "openai:chat"), timeout=timeout,
                             retries=retries, prompt=prompt,
                             insecure=_flag(params.get("insecure", "0"), "openai:insecure"))
    raise BenchError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
