"""Backends: what answers a sample. ``local`` (default) runs the model in this process through the
reader path (``Plan.from_spec(spec).make_reader().read(...)``), exactly like ``longreach ask``;
``openai`` sends each prompt to an OpenAI-compatible HTTP server (vLLM, llama.cpp, SGLang, ...);
``oracle`` answers with the references (optionally wrong past a length) and checks the harness itself.

Backend specs use the method grammar, except that values may contain ``:`` and ``/`` (URLs):
``local``, ``oracle:delay=0.1,fail_above=4096``, ``openai:url=http://127.0.0.1:8000/v1,model=NAME,chat=1``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import torch

from ..memory import PeakMemory, available_bytes, estimate_request
from ..readers import Request
from ..spec import Plan
from ..units import format_bytes
from .task import TASK_NAME_RE, BenchError, Sample, Task


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
                 memory_limit: int | None = None, prompt: str = "auto"):
        from ..models import LoadedModel, load_model

        self.lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype)
        self.model_name = self.lm.name
        self.chunk_size = chunk_size
        self.memory_limit = memory_limit
        self.prompt = prompt

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        info = self.lm.info
        plan.check(info)
        reach = plan.reach(info)
        if reach is not None and length > reach:
            return f"{length:,} tokens is beyond what {info.name} reads with {plan.spec} ({reach:,})"
        est = estimate_request(info, length, self.chunk_size, plan.kv_cache_bytes(info, length))
        budget = self.memory_limit if self.memory_limit is not None else available_bytes()
        if est.total > budget:
            return (f"{length:,} tokens need about {format_bytes(est.total)} but {format_bytes(budget)} is "
                    f"available (memory pre-check)")
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        request = Request(sample.context, sample.question, sample.max_new_tokens, sample.answer_prefix,
                          self.chunk_size, self.memory_limit, prompt=self.prompt)
        with PeakMemory() as peak:
            result = plan.make_reader().read(self.lm, plan, request, progress=False)
        return {"prediction": result.answer, "input_tokens": result.input_tokens,
                "output_tokens": len(result.output_ids), "prefill_seconds": round(result.prefill_seconds, 3),
                "decode_seconds": round(result.decode_seconds, 3), "peak_memory_bytes": peak.peak,
                "kv_cache_bytes": result.kv_cache_bytes}

    @torch.inference_mode()
    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        """Summed NLL of every token of ``sample.context`` given its prefix (chunked, under ``plan``)."""
        from ..prompt import encode

        ids = encode(self.lm.tokenizer, sample.context)
        tokens = torch.tensor([ids])  # (1, n)
        n = len(ids)
        chunk = min(self.chunk_size, 512)  # full logits per chunk: (chunk, vocab) floats
        nll = torch.zeros(n - 1, dtype=torch.float64)
        cache = plan.make_cache(self.lm.model, self.lm.info)
        t0 = time.perf_counter()
        with PeakMemory() as peak, plan.applied(self.lm.model, self.lm.info, total_tokens=n):
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                out = self.lm.model(input_ids=tokens[:, lo:hi], position_ids=torch.arange(lo, hi).unsqueeze(0),
                                    cache=cache, use_cache=True)
                logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (c, V)
                targets = tokens[0, lo + 1:hi + 1]  # (c') next tokens inside the text
                nll[lo:lo + len(targets)] = -logp[: len(targets)].gather(1, targets[:, None])[:, 0].double()
        tail = nll[-max(1, (n - 1) // 4):]
        return {"prediction": f"{float(nll.sum())} {n - 1}", "input_tokens": n, "output_tokens": 0,
                "prefill_seconds": round(time.perf_counter() - t0, 3), "decode_seconds": 0.0,
                "peak_memory_bytes": peak.peak, "kv_cache_bytes": 0,
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


class OpenAIBackend(Backend):
    """An OpenAI-compatible server answers each generate sample (greedy: ``temperature=0``,
    ``max_tokens`` = the task's answer budget).

    Parameters: ``url`` (default ``$OPENAI_BASE_URL`` or ``http://127.0.0.1:8000/v1``), ``model`` (the
    served name; default the only model ``GET {url}/models`` lists), ``chat`` (0: ``/completions`` with
    exactly the prompt text the local reader builds; 1: ``/chat/completions`` with the document and the
    question as one user message, the server applying its own template; the task's answer prefix is not
    sent), ``timeout`` (seconds per request, default 600), ``retries`` (default 2). ``$OPENAI_API_KEY``
    is sent as a bearer token when set (local servers need none).

    Prompts are sized with the tokenizer of ``--model`` (a known model, folder or .gguf: tokenizer only,
    no weights), which should be the served model's; ``input_tokens`` records the server's own count
    (``usage.prompt_tokens``) so that a mismatch shows. Only the plain model is measured: method plans
    other than ``none`` and log-likelihood tasks are refused (methods run in the local backend only).
    A server that cannot be reached, a 401/403/404 or a dead connection stops the sweep with a
    :class:`BackendError`; a timeout, 429, 5xx or another 4xx (e.g. a prompt over the server's limit)
    is retried where transient and then recorded as that sample's error.
    """

    name = "openai"
    backoff = 1.0  # seconds before the first retry, doubled for each next one (at most 30)

    def __init__(self, model: Any, url: str | None = None, served: str | None = None, chat: bool = False,
                 timeout: float = 600.0, retries: int = 2, prompt: str = "auto"):
        from ..models import LoadedModel

        self.url = (url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL).rstrip("/")
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BenchError(f"openai:url={self.url} is not an http(s) URL; write e.g. "
                             f"openai:url={DEFAULT_OPENAI_URL}")
        if chat and prompt == "plain":
            raise BenchError("openai:chat=1 sends chat messages, which --prompt plain cannot size; "
                             "use --prompt auto or chat, or openai:chat=0")
        if timeout <= 0 or retries < 0:
            raise BenchError("openai: timeout must be > 0 and retries >= 0")
        self.chat, self.timeout, self.retries, self.prompt = chat, timeout, retries, prompt
        self._loaded = model if isinstance(model, LoadedModel) else None
        self.tokenizer_name = self._loaded.name if self._loaded is not None else str(model)
        self._tok = None
        local = _is_loopback(parts.hostname or "")
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if local else
                                                   urllib.request.ProxyHandler())
        self.max_model_len: int | None = None
        self.model_name = self._served_model(served)

    # ----------------------------------------------------------------------------------------- HTTP
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _call(self, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=self._headers(),
                                     method="POST" if body is not None else "GET")
        with self._opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def _served_model(self, served: str | None) -> str:
        """Check that the server answers (``GET /models``) and pick / check the served model name."""
        where = f"{self.url}/models"
        try:
            listing = self._call("/models", None, min(self.timeout, 30.0))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise BackendError(f"{where}: HTTP {exc.code} {_detail(exc)}; set OPENAI_API_KEY to a valid "
                                   f"key") from None
            if served:  # a server without /models: the first request will tell
                return served
            raise BackendError(f"{where}: HTTP {exc.code} {_detail(exc)}; name the served model with "
                               f"openai:model=NAME (and check that the URL ends in /v1)") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise BackendError(f"cannot reach an OpenAI-compatible server at {self.url} ({_reason(exc)}); "
                               f"start it or fix openai:url=...") from None
        entries = [m for m in (listing.get("data") or []) if isinstance(m, dict) and m.get("id")] \
            if isinstance(listing, dict) else []
        ids = [str(m["id"]) for m in entries]
        if served is None:
            if len(ids) != 1:
                raise BackendError(f"{where} lists {len(ids)} models ({', '.join(ids[:8]) or 'none'}); "
                                   f"choose one with openai:model=NAME")
            served = ids[0]
        elif ids and served not in ids:
            raise BackendError(f"{self.url} serves {', '.join(ids[:8])}, not {served!r}; fix openai:model=...")
        for m in entries:
            if str(m["id"]) == served and isinstance(m.get("max_model_len"), int):  # vLLM reports it
                self.max_model_len = m["max_model_len"]
        return served

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """POST with retries of transient failures; a BenchError (recorded for the sample) after the last."""
        where = self.url + path
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
            try:
                return self._call(path, body, self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    raise BackendError(f"{where}: HTTP {exc.code} {_detail(exc)}; set OPENAI_API_KEY to a "
                                       f"valid key") from None
                if exc.code == 404:
                    hint = "use openai:chat=1" if path == "/completions" else "use openai:chat=0"
                    raise BackendError(f"{where}: HTTP 404 {_detail(exc)}; check openai:url (usually ends "
                                       f"in /v1) and openai:model, or {hint}") from None
                last = f"HTTP {exc.code} {_detail(exc)}"
                if exc.code != 429 and exc.code < 500:
                    break  # the request itself is refused (e.g. over the server's length): not retried
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError) and attempt == self.retries:
                    raise BackendError(f"{self.url} stopped answering (connection refused); restart the "
                                       f"server and re-run the same command to resume") from None
                last = _reason(exc)
            except (OSError, http.client.HTTPException, ValueError) as exc:  # timeouts, resets, bad JSON
                last = _reason(exc)
        raise BenchError(f"{where}: {last}" + (f" (after {attempt + 1} tries)" if attempt else ""))

    # ------------------------------------------------------------------------------------ backend
    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            from ..models import load_tokenizer

            self._tok = self._loaded.tokenizer if self._loaded is not None else load_tokenizer(self.tokenizer_name)
        return self._tok

    def refuse(self, plan: Plan, length: int, task: Task | None = None) -> str | None:
        if plan.methods:
            return (f"methods run locally only: the openai backend sends the prompt as is to {self.url}; "
                    f"run {plan.spec} with --backend local")
        if task is not None and task.kind != "generate":
            return f"{task.name} scores log-likelihoods; the openai backend only generates (use --backend local)"
        if self.max_model_len is not None and length > self.max_model_len:
            return f"{length:,} tokens is beyond the server's max_model_len ({self.max_model_len:,})"
        return None

    def generate(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        from ..prompt import build_prompt

        if self.chat:
            path = "/chat/completions"
            content = f"{sample.context.strip()}\n\n{sample.question.strip()}"  # the reader's chat turn
            body: dict[str, Any] = {"model": self.model_name, "messages": [{"role": "user", "content": content}]}
        else:
            path = "/completions"
            text = build_prompt(self.tokenizer, sample.context, sample.question, sample.answer_prefix, self.prompt)
            body = {"model": self.model_name, "prompt": text}
        body.update(max_tokens=sample.max_new_tokens, temperature=0.0)
        t0 = time.perf_counter()
        data = self._post(path, body)
        seconds = time.perf_counter() - t0
        try:
            choice = data["choices"][0]
            answer = (choice["message"].get("content") if self.chat else choice["text"]) or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BenchError(f"{self.url}{path}: the answer has no choices[0]."
                             f"{'message.content' if self.chat else 'text'}") from None
        usage = data.get("usage") or {}
        return {"prediction": str(answer).strip(), "input_tokens": usage.get("prompt_tokens") or sample.meta["tokens"],
                "output_tokens": usage.get("completion_tokens") or 0, "prefill_seconds": None,
                "decode_seconds": None, "request_seconds": round(seconds, 3), "peak_memory_bytes": 0,
                "kv_cache_bytes": 0}

    def loglik(self, sample: Sample, plan: Plan) -> dict[str, Any]:
        raise BenchError("the openai backend only generates; run log-likelihood tasks with --backend local")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "url": self.url, "chat": self.chat,
                "tokenizer": self.tokenizer_name, "prompt": self.prompt, "max_model_len": self.max_model_len,
                "dtype": None, "window": None}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _detail(exc: urllib.error.HTTPError) -> str:
    """The server's message of an HTTP error, on one short line."""
    try:
        body = exc.read().decode("utf-8", "replace")
        data = json.loads(body)
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except (OSError, ValueError, AttributeError):
        text = str(exc.reason or "")
    text = " ".join(text.split())
    return f"({text[:200]})" if text else ""


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer within the timeout (raise openai:timeout=SECONDS)"
    text = " ".join(str(reason).split()) or type(reason).__name__
    return text[:200]


BACKENDS = {"local": LocalBackend, "openai": OpenAIBackend, "oracle": OracleBackend}
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
                 memory_limit: int | None = None, prompt: str = "auto") -> Backend:
    name, params = parse_backend_spec(spec)
    if name == "local":
        if params:
            raise BenchError("the local backend takes no parameters (use --dtype, --chunk-size)")
        return LocalBackend(model, dtype=dtype, chunk_size=chunk_size, memory_limit=memory_limit, prompt=prompt)
    if name == "oracle":
        unknown = sorted(set(params) - {"delay", "fail_above"})
        if unknown:
            raise BenchError(f"oracle has no parameter {unknown[0]!r}; its parameters: delay, fail_above")
        try:
            return OracleBackend(str(model), float(params.get("delay", 0)), int(params.get("fail_above", 0)))
        except ValueError as exc:
            raise BenchError(f"bad oracle parameter: {exc}") from None
    if name == "openai":
        known = ("url", "model", "chat", "timeout", "retries")
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise BenchError(f"openai has no parameter {unknown[0]!r}; its parameters: {', '.join(known)}")
        try:
            timeout, retries = float(params.get("timeout", 600)), int(params.get("retries", 2))
        except ValueError as exc:
            raise BenchError(f"bad openai parameter: {exc}") from None
        return OpenAIBackend(model, url=params.get("url"), served=params.get("model"),
                             chat=_flag(params.get("chat", "0"), "openai:chat"), timeout=timeout,
                             retries=retries, prompt=prompt)
    raise BenchError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
