"""The operational side of ``longreach serve``: body size limit, bearer key, admission queue (429 +
Retry-After), Prometheus metrics, cancellation on disconnect, the command line's exposure check and a
clean drain on SIGTERM. Tiny random-weight models (no downloads); the server runs in a thread on port 0,
or as a ``longreach serve`` process where a real process is needed (signals)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from conftest import byte_tokenizer, serve_in_thread, tiny_llama, wrap  # noqa: E402

from longreach.serve.config import ServeConfig  # noqa: E402
from longreach.serve.guard import Admission, Guard, Overloaded  # noqa: E402
from longreach.serve.metrics import MAX_ENDPOINTS, Metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-0123456789abcdef"


# ------------------------------------------------------------------------------------------ helpers
def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', head))
        if head.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


async def _asgi_call(app, scope: dict, chunks: list[bytes] | None = None, endless: bytes | None = None):
    """Drive an ASGI app by hand: ``chunks`` as the body (or ``endless`` repeated forever); returns
    (messages sent, number of receive() calls)."""
    sent: list[dict] = []
    calls = 0
    queue = list(chunks or [])

    async def receive():
        nonlocal calls
        calls += 1
        if endless is not None:
            return {"type": "http.request", "body": endless, "more_body": True}
        if queue:
            body = queue.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(queue)}
        await asyncio.sleep(3600)  # no disconnect while the app answers

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent, calls


def _scope(path: str = "/v1/completions", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers or [], "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8000)}


class _EchoApp:
    """An ASGI app that reads the whole body, then answers 200 with its length."""

    def __init__(self):
        self.answered = 0

    async def __call__(self, scope, receive, send):
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise OSError("client gone")  # what an app may do: the guard must still answer 413
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.answered += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


# ------------------------------------------------------------------------------------------ guard, ASGI level
def test_guard_stops_reading_a_streamed_body_past_the_limit():
    metrics = Metrics("m")
    inner = _EchoApp()
    guard = Guard(inner, ServeConfig(max_body_bytes=1024), metrics)
    # an endless chunked body: the guard must refuse after the first chunks, not read forever
    sent, calls = asyncio.run(asyncio.wait_for(_asgi_call(guard, _scope(), endless=b"x" * 600), 10))
    assert calls <= 3, f"read {calls} chunks of a body already past the limit"
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert len([m for m in sent if m["type"] == "http.response.start"]) == 1
    body = json.loads(sent[1]["body"])
    assert body["error"]["code"] == "request_too_large" and "--max-body-bytes" in body["error"]["message"]
    assert inner.answered == 0
    text = metrics.render()[0].decode()
    assert _metric(text, "longreach_requests_total", status="413", endpoint="other") == 1


def test_guard_lets_a_body_within_the_limit_through():
    inner = _EchoApp()
    guard = Guard(inner, ServeConfig(max_body_bytes=1024), Metrics("m"))
    sent, _ = asyncio.run(_asgi_call(guard, _scope(), chunks=[b"a" * 500, b"b" * 524]))
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"1024"


def test_guard_refuses_content_length_before_reading():
    inner = _EchoApp()
    guard = Guard(inner, ServeConfig(max_body_bytes=2048), Metrics("m"))
    sent, calls = asyncio.run(_asgi_call(guard, _scope(headers=[(b"content-length", b"5000")]), chunks=[b"x"]))
    assert calls == 0 and sent[0]["status"] == 413 and inner.answered == 0
    assert "5,000 bytes" in json.loads(sent[1]["body"])["error"]["message"]


def test_guard_key_check_is_the_same_for_missing_and_wrong_keys():
    metrics = Metrics("m")
    guard = Guard(_EchoApp(), ServeConfig(api_key=KEY), metrics)
    answers = []
    for headers in ([], [(b"authorization", b"Bearer nope")], [(b"authorization", KEY.encode())],
                    [(b"authorization", b"Basic " + KEY.encode())]):
        sent, _ = asyncio.run(_asgi_call(guard, _scope(headers=headers), chunks=[b"{}"]))
        assert sent[0]["status"] == 401
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
        answers.append(sent[1]["body"])
        assert KEY.encode() not in sent[1]["body"]
    assert len(set(answers)) == 1  # nothing tells a missing key from a wrong one
    err = json.loads(answers[0])["error"]
    assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    sent, _ = asyncio.run(_asgi_call(guard, _scope(headers=[(b"authorization", b"bearer " + KEY.encode())]),
                                     chunks=[b"{}"]))
    assert sent[0]["status"] == 200
    sent, _ = asyncio.run(_asgi_call(guard, _scope("/health"), chunks=[b""]))
    assert sent[0]["status"] == 200  # the probe needs no key


# ------------------------------------------------------------------------------------------ admission
def test_admission_queues_in_order_and_refuses_beyond_the_queue():
    metrics = Metrics("m")

    async def scenario():
        adm = Admission(max_running=1, max_queue=2, metrics=metrics)
        order: list[str] = []
        gate = asyncio.Event()

        async def job(name: str):
            async with adm.slot():
                order.append(name)
                await gate.wait()

        first = asyncio.create_task(job("a"))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(job(n)) for n in ("b", "c")]
        await asyncio.sleep(0.01)
        assert (adm.running, adm.waiting) == (1, 2)
        text = metrics.render()[0].decode()
        assert _metric(text, "longreach_queue_waiting") == 2 and _metric(text, "longreach_requests_running") == 1
        with pytest.raises(Overloaded) as info:
            async with adm.slot():
                pass
        assert info.value.retry_after >= 1
        gate.set()
        await asyncio.gather(first, *waiting)
        assert order == ["a", "b", "c"]
        assert (adm.running, adm.waiting) == (0, 0)
        text = metrics.render()[0].decode()
        assert _metric(text, "longreach_queue_waiting") == 0 and _metric(text, "longreach_requests_running") == 0

    asyncio.run(scenario())


def test_admission_frees_the_place_of_a_cancelled_waiter():
    async def scenario():
        adm = Admission(max_running=1, max_queue=1)
        gate = asyncio.Event()

        async def hold():
            async with adm.slot():
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiter = asyncio.create_task(hold())
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            async with adm.slot():
                pass
        waiter.cancel()  # the client went away while queued
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert (adm.running, adm.waiting) == (1, 0)
        third = asyncio.create_task(hold())  # its place is free again
        await asyncio.sleep(0.01)
        assert adm.waiting == 1
        gate.set()
        await asyncio.gather(holder, third)
        assert (adm.running, adm.waiting) == (0, 0)

    asyncio.run(scenario())


def test_retry_after_follows_recent_durations():
    async def scenario():
        adm = Admission(max_running=1, max_queue=0)
        assert adm.retry_after() == 1
        for _ in range(3):
            async with adm.slot():
                await asyncio.sleep(0.0)
        assert adm.retry_after() == 1  # fast requests: the floor
        adm._held.extend([7.2, 7.2, 7.2, 7.2] * 10)  # slow ones: a place frees in about 7 s
        assert adm.retry_after() == 8
        two = Admission(max_running=2, max_queue=0)
        two._held.extend([7.2] * 10)
        assert two.retry_after() == 4

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_registries_are_separate_and_labels_bounded():
    a, b = Metrics("model-a"), Metrics("model-b")
    a.request_done("/v1/completions", 200, 0.5)
    a.tokens(prompt=10, completion=3, cached=4)
    b.set_kv_source(lambda: 12345)
    ta, tb = a.render()[0].decode(), b.render()[0].decode()
    assert _metric(ta, "longreach_requests_total", endpoint="/v1/completions", status="200",
                   model_name="model-a") == 1
    assert _metric(tb, "longreach_requests_total", endpoint="/v1/completions") is None
    assert _metric(ta, "longreach_prompt_tokens_total") == 10
    assert _metric(ta, "longreach_completion_tokens_total") == 3
    assert _metric(ta, "longreach_cached_prompt_tokens_total") == 4
    assert _metric(ta, "longreach_request_latency_seconds_bucket", endpoint="/v1/completions", le="1.0") == 1
    assert _metric(ta, "longreach_request_latency_seconds_bucket", endpoint="/v1/completions", le="0.25") == 0
    assert _metric(ta, "longreach_request_latency_seconds_bucket", le="1800.0") == 1
    assert _metric(tb, "longreach_kv_cache_bytes", model_name="model-b") == 12345
    for i in range(MAX_ENDPOINTS + 20):  # a caller passing raw paths cannot grow the series forever
        a.request_done(f"/x/{i}", 404, 0.01)
    labels = set(re.findall(r'longreach_requests_total\{[^}]*endpoint="([^"]*)"', a.render()[0].decode()))
    assert len(labels) <= MAX_ENDPOINTS + 1 and "other" in labels
    assert a.render()[1].startswith("text/plain")


class _Reply(SimpleNamespace):
    def json(self):
        return json.loads(self.text)


def _http(url: str, method: str, path: str, body: bytes | list[bytes] | None = None,
          headers: dict[str, str] | None = None, timeout: float = 60) -> _Reply:
    """One HTTP request with the standard library: ``body`` as bytes (Content-Length) or as a list of
    pieces (Transfer-Encoding: chunked, no Content-Length)."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    hdrs = {"content-type": "application/json", **(headers or {})}
    if isinstance(body, list):
        # the whole chunked request in one write: a server that refuses it part-way closes the connection, and
        # data still arriving after that close would reset it before the client reads the answer
        import socket

        head = f"{method} {path} HTTP/1.1\r\nhost: {where.netloc}\r\ntransfer-encoding: chunked\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        raw = head.encode() + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in body if p) + b"0\r\n\r\n"
        with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
            sock.sendall(raw)
            r = http.client.HTTPResponse(sock)
            r.begin()
            return _Reply(status=r.status, headers={k.lower(): v for k, v in r.getheaders()},
                          text=r.read().decode("utf-8", "replace"))
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return _Reply(status=r.status, headers={k.lower(): v for k, v in r.getheaders()},
                      text=r.read().decode("utf-8", "replace"))
    finally:
        conn.close()


@contextlib.contextmanager
def _sse_lines(url: str, path: str, payload: dict, headers: dict[str, str] | None = None, timeout: float = 60):
    """POST ``payload`` and yield (status, an iterator over the response's lines); the connection closes
    when the ``with`` ends, read or not."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(payload).encode(),
                     headers={"content-type": "application/json", **(headers or {})})
        r = conn.getresponse()

        def lines():
            while True:
                line = r.readline()
                if not line:
                    return
                yield line.decode("utf-8").rstrip("\r\n")

        yield r.status, lines()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ a live server
@contextlib.contextmanager
def serving(lm, **settings):
    """``create_app`` under uvicorn in a thread on a free port; yields (url, app)."""
    from longreach.serve.app import create_app

    config = ServeConfig(port=0, **settings)
    app = create_app(lm, config)
    with serve_in_thread(app, ws="none", timeout_graceful_shutdown=5) as url:
        yield SimpleNamespace(url=url, app=app)


def _client(url: str, key: str | None = None, **kw):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0, timeout=60, **kw)


@contextlib.contextmanager
def slow_model(lm, seconds: float):
    """Every forward pass of ``lm``'s model sleeps ``seconds`` first and is counted (a test-only torch hook)."""
    calls = SimpleNamespace(n=0)

    def hook(module, args, kwargs):
        calls.n += 1
        time.sleep(seconds)

    handle = lm.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def lm():
    return wrap(tiny_llama(), "tiny-llama")


def test_body_limit_413_by_content_length_and_by_chunked_body(lm):
    with serving(lm, max_body_bytes=2048) as srv:
        big = json.dumps({"model": "tiny-llama", "prompt": "x" * 5000, "max_tokens": 1}).encode()
        r = _http(srv.url, "POST", "/v1/completions", big)
        assert r.status == 413
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "request_too_large"
        assert "--max-body-bytes" in err["message"] and "2.0 KiB" in err["message"]
        # no Content-Length: Transfer-Encoding: chunked, refused once the bytes read pass the limit
        r = _http(srv.url, "POST", "/v1/completions", [big[i:i + 700] for i in range(0, len(big), 700)])
        assert r.status == 413 and r.json()["error"]["code"] == "request_too_large"
        small = json.dumps({"model": "tiny-llama", "prompt": "hello", "max_tokens": 2, "temperature": 0}).encode()
        r = _http(srv.url, "POST", "/v1/completions", [small[:10], small[10:]])
        assert r.status == 200, r.text  # a chunked body within the limit goes through
        text = _http(srv.url, "GET", "/metrics").text
        assert _metric(text, "longreach_requests_total", endpoint="/v1/completions", status="413") == 2
        assert _metric(text, "longreach_requests_total", endpoint="/v1/completions", status="200") == 1


def test_api_key_401_without_or_with_a_wrong_key_200_with_it(lm):
    import openai

    with serving(lm, api_key=KEY) as srv:
        for key in (None, "sk-wrong"):
            with pytest.raises(openai.AuthenticationError) as info:
                _client(srv.url, key).models.list()
            assert info.value.code == "invalid_api_key" and KEY not in info.value.response.text
        r = _http(srv.url, "GET", "/v1/models")  # no header at all
        assert r.status == 401 and r.json()["error"]["type"] == "authentication_error"
        assert [m.id for m in _client(srv.url, KEY).models.list()] == ["tiny-llama"]
        done = _client(srv.url, KEY).completions.create(model="tiny-llama", prompt="hi", max_tokens=2, temperature=0)
        assert done.usage.completion_tokens >= 1
        assert _http(srv.url, "GET", "/health").status == 200  # probes need no key
        assert _http(srv.url, "GET", "/metrics").status == 401
        text = _http(srv.url, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert _metric(text, "longreach_requests_total", endpoint="/v1/models", status="401") == 3


def test_overload_429_with_retry_after(lm):
    import openai

    with serving(lm, max_running=1, max_queue=1) as srv, slow_model(lm, 0.15):
        adm = srv.app.state.admission
        client = _client(srv.url)
        outcomes: list = []

        def ask(n):
            try:
                outcomes.append(client.completions.create(model="tiny-llama", prompt="slow", max_tokens=n,
                                                          temperature=0))
            except Exception as exc:  # noqa: BLE001  (collected and checked below)
                outcomes.append(exc)

        first = threading.Thread(target=ask, args=(20,))
        first.start()
        deadline = time.monotonic() + 20
        while adm.running < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        more = [threading.Thread(target=ask, args=(1,)) for _ in range(2)]
        for t in more:
            t.start()
        for t in [first, *more]:
            t.join(60)
        limited = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
        assert len(outcomes) == 3 and len(limited) >= 1, outcomes
        assert all(not isinstance(o, Exception) or isinstance(o, openai.RateLimitError) for o in outcomes), outcomes
        retry = limited[0].response.headers["retry-after"]
        assert retry.isdigit() and int(retry) >= 1
        assert limited[0].code == "rate_limit_exceeded"
        assert (adm.running, adm.waiting) == (0, 0)


def test_metrics_after_a_few_requests(lm):
    import openai

    with serving(lm) as srv:
        client = _client(srv.url)
        a = client.completions.create(model="tiny-llama", prompt="hello there", max_tokens=3, temperature=0)
        b = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=2, temperature=0)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x", max_tokens=1)
        assert _http(srv.url, "GET", "/no/such/path/123").status == 404
        text = _http(srv.url, "GET", "/metrics").text
    m = dict(model_name="tiny-llama")
    assert _metric(text, "longreach_requests_total", endpoint="/v1/completions", status="200", **m) == 1
    assert _metric(text, "longreach_requests_total", endpoint="/v1/chat/completions", status="200", **m) == 1
    assert _metric(text, "longreach_requests_total", endpoint="/v1/completions", status="404", **m) == 1
    assert _metric(text, "longreach_requests_total", endpoint="other", status="404", **m) == 1
    assert "/no/such/path" not in text  # raw URLs never become labels
    prompt = a.usage.prompt_tokens + b.usage.prompt_tokens
    completion = a.usage.completion_tokens + b.usage.completion_tokens
    assert _metric(text, "longreach_prompt_tokens_total", **m) == prompt
    assert _metric(text, "longreach_completion_tokens_total", **m) == completion
    assert _metric(text, "longreach_cached_prompt_tokens_total", **m) == 0
    assert _metric(text, "longreach_request_latency_seconds_count", endpoint="/v1/completions", **m) == 2
    assert _metric(text, "longreach_request_latency_seconds_bucket", endpoint="/v1/completions", le="+Inf") == 2
    assert _metric(text, "longreach_queue_waiting", **m) == 0
    assert _metric(text, "longreach_requests_running", **m) == 0
    assert _metric(text, "longreach_kv_cache_bytes", **m) is not None


def test_disconnect_mid_stream_cancels_the_generation(lm):
    body = {"model": "tiny-llama", "prompt": "a long story:", "max_tokens": 150, "temperature": 0, "stream": True}
    with serving(lm) as srv:
        # without a disconnect this prompt generates all 150 tokens (no EOS on the way)
        ref = _http(srv.url, "POST", "/v1/completions", json.dumps({**body, "stream": False}).encode()).json()
        assert ref["choices"][0]["finish_reason"] == "length", ref
        with slow_model(lm, 0.03) as calls:
            with _sse_lines(srv.url, "/v1/completions", body) as (status, lines):
                assert status == 200
                events = 0
                for line in lines:
                    events += line.startswith("data: {")
                    if events >= 3:
                        break  # leave with the stream half read: the connection closes
            time.sleep(1.5)
            seen = calls.n
            time.sleep(1.0)
            assert calls.n == seen, "the model kept running after the client left"
        assert events == 3 and seen < 100, f"{seen} forward passes: the generation was not cancelled early"
        deadline = time.monotonic() + 10
        while srv.app.state.admission.running:  # and its slot is free again
            assert time.monotonic() < deadline
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------ the command line
def _run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full.pop("LONGREACH_API_KEY", None) if "LONGREACH_API_KEY" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "longreach.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=ROOT)


def test_cli_refuses_a_public_host_without_a_key_before_loading():
    started = time.monotonic()
    r = _run_cli("serve", "--model", "/no/such/model/folder", "--host", "0.0.0.0")
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0] and "0.0.0.0" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(("args", "needle"), [
    (["--method", "nosuchmethod"], "unknown method"),
    (["--max-body-bytes", "lots"], "--max-body-bytes"),
    (["--max-body-bytes", "10"], "--max-body-bytes"),
    (["--kv-reuse-bytes", "-1"], "--kv-reuse-bytes"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--host", "10.1.2.3", "--api-key", "has space"], "--api-key"),
])
def test_cli_checks_options_in_one_line_before_loading(args, needle, capsys, monkeypatch):
    from longreach import cli

    monkeypatch.delenv("LONGREACH_API_KEY", raising=False)
    monkeypatch.setattr("longreach.models.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    assert cli.main(["serve", "--model", "/no/such/model/folder", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "has space" not in err[0]  # a key is never echoed


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face folder with the byte tokenizer: what --model loads."""
    folder = tmp_path_factory.mktemp("tiny-served")
    tiny_llama(window=1024).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("drain", "max_tokens"), [(10.0, 120), (4.0, 900)])
def test_sigterm_drains_and_exits_0_without_leaking_the_key(model_folder, drain, max_tokens):
    """SIGTERM while a stream is in flight: the process exits 0 within drain + 10 s and the client got a
    complete answer (drain 10 s, a short answer) or an error event then [DONE] (drain 4 s, a long answer: the
    launcher cancels the work on the model 2 s before the deadline)."""
    secret = "sk-drain-Zq8Vw3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "longreach.cli", "serve", "--model", str(model_folder), "--port", "0",
         "--device", "cpu", "--dtype", "float32", "--drain-seconds", str(drain)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "LONGREACH_API_KEY": secret})
    try:
        first = proc.stdout.readline()  # the banner, once the server listens
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", first)
        assert match, first + (proc.stderr.read() if proc.poll() is not None else "")
        url = match.group(1)
        assert _http(url, "GET", f"/health?token={secret}").status == 200  # a query string is never logged
        body = {"model": model_folder.name, "prompt": "tell me", "max_tokens": max_tokens, "temperature": 0, "stream": True}
        events: list[str] = []
        with _sse_lines(url, "/v1/completions", body, headers={"Authorization": f"Bearer {secret}"}) as (status, lines):
            assert status == 200
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[6:])
                    break
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(OSError):  # a cut stream fails the checks below, not here
                for line in lines:
                    if line.startswith("data: "):
                        events.append(line[6:])
        rc = proc.wait(timeout=drain + 10)
        assert time.monotonic() - sent <= drain + 10
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, err
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    finished = [c for c in chunks if c.get("choices") and c["choices"][0].get("finish_reason")]
    errors = [c for c in chunks if "error" in c]
    assert finished or errors, chunks[-3:]
    if drain >= 10:  # plenty of time: the answer completes
        assert finished and not errors, chunks[-2:]
        assert sum(len(c["choices"][0]["text"]) for c in chunks if c.get("choices")) > 0
    for c in errors:
        assert c["error"]["code"] == "server_shutting_down"
    assert secret not in first + out + err
    assert '"GET /health" 200' in out and '"POST /v1/completions" 200' in out  # the access log, one line each
    assert "Traceback" not in err, err


def test_cli_refuses_a_port_in_use_before_loading(capsys, monkeypatch):
    import socket

    from longreach import cli

    monkeypatch.setattr("longreach.models.load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--model", "/no/such/model/folder", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "--port" in err[0], err
