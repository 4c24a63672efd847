"""The openai backend against a fake OpenAI-compatible server (stdlib http.server on 127.0.0.1, a random
free port, in a thread that stops with the test or after at most 60 s)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import byte_tokenizer, tiny_llama

from longreach.bench.backends import BackendError, OpenAIBackend, make_backend, parse_backend_spec
from longreach.bench.runner import load_config, run_bench
from longreach.bench.task import BenchError, make_task
from longreach.prompt import encode

SERVED = "fake-model"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A local model folder (config.json + the byte tokenizer): the openai backend loads only its tokenizer."""
    folder = tmp_path_factory.mktemp("tokmodel")
    tiny_llama().config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return str(folder)


def ideal_answer(prompt: str) -> str:
    """What a perfect reader says: the pass key of the prompt, if there is one."""
    m = re.search(r"The pass key is (\d+)", prompt)
    return f"The pass key is {m.group(1)}." if m else "I do not know."


class FakeOpenAI:
    """``GET /v1/models``, ``POST /v1/completions`` and ``/v1/chat/completions``. ``respond(path, body, n)``
    may return ``(status, payload)`` to override the n-th POST (0-based); ``delay``: seconds per POST."""

    def __init__(self, models=(SERVED,), respond=None, delay=0.0, models_status=200, max_model_len=None):
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client timed out
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": "no such route"}})
                if models_status != 200:
                    return self._send(models_status, {"error": {"message": "invalid api key"}})
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", **({"max_model_len": max_model_len} if max_model_len else {})}
                    for m in models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(fake.requests)
                fake.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                time.sleep(delay)
                custom = respond(self.path, body, n) if respond else None
                if custom is not None:
                    return self._send(*custom)
                if self.path == "/v1/completions":
                    prompt = body["prompt"]
                    choice = {"index": 0, "text": " " + ideal_answer(prompt), "finish_reason": "stop"}
                elif self.path == "/v1/chat/completions":
                    prompt = body["messages"][-1]["content"]
                    choice = {"index": 0, "message": {"role": "assistant", "content": ideal_answer(prompt)}}
                else:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                self._send(200, {"choices": [choice],
                                 "usage": {"prompt_tokens": len(prompt.encode()), "completion_tokens": 7}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._deadline = threading.Timer(60.0, self.server.shutdown)  # bounded even if a test hangs
        self._deadline.daemon = True

    def __enter__(self):
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self._deadline.cancel()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(tmp_path, model_dir, backend, **kw):
    base = dict(backend=backend, model=model_dir, methods="none", tasks="passkey", lengths="300,600", depths=2,
                out=str(tmp_path / "out"), prompt="plain")
    base.update(kw)
    return load_config(None, base)


def cells(tmp_path):
    return {p.parent.relative_to(tmp_path / "out/cells").as_posix(): json.loads(p.read_text())
            for p in (tmp_path / "out/cells").rglob("metrics.json")}


def test_backend_spec_allows_urls():
    assert parse_backend_spec("openai:url=http://127.0.0.1:8000/v1,model=org/name-7b,chat=1") == (
        "openai", {"url": "http://127.0.0.1:8000/v1", "model": "org/name-7b", "chat": "1"})
    assert parse_backend_spec("oracle:delay=0.1") == ("oracle", {"delay": "0.1"})
    with pytest.raises(BenchError, match="write key=value"):
        parse_backend_spec("openai:url")
    with pytest.raises(BenchError, match="no parameter 'ulr'"):
        make_backend("openai:ulr=http://x", "m")
    with pytest.raises(BenchError, match="chat must be 0 or 1"):
        make_backend("openai:chat=maybe", "m")
    with pytest.raises(BenchError, match="not an http"):
        make_backend("openai:url=ftp://h/v1", "m")


def test_completions_sweep_sizes_prompts_with_the_local_tokenizer(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with FakeOpenAI() as srv:
        cfg = sweep(tmp_path, model_dir, f"openai:url={srv.url}", methods="none;yarn:factor=2", tasks="passkey,ppl")
        stats = run_bench(cfg, progress=False)
    assert (stats.cells_done, stats.cells_refused, stats.ran) == (4, 4, 8)
    got = cells(tmp_path)
    assert got[f"{SERVED}/none/passkey/300"]["score"] == got[f"{SERVED}/none/passkey/600"]["score"] == 1.0
    refused = {(m["method"], m["task"]): m["reason"] for m in got.values() if m["status"] == "refused"}
    assert sorted(refused) == [("none", "ppl"), ("yarn:factor=2.0", "ppl")]
    assert [m["score"] for m in got.values() if m["method"] != "none" and m["status"] != "refused"] == [1.0, 1.0]
    assert all("only generates" in r for r in refused.values())

    tok = byte_tokenizer()
    records = [json.loads(line) for p in (tmp_path / "out/cells").rglob("samples.jsonl")
               for line in p.read_text().splitlines()]
    assert len(srv.requests) == len(records) == 8
    task = make_task("passkey")
    # a method plan asks the server for it by name (NAME@SPEC); the plain plan sends the bare name
    assert sorted(r["body"]["model"] for r in srv.requests) == [SERVED] * 4 + [f"{SERVED}@yarn:factor=2.0"] * 4
    for req in srv.requests:
        body = req["body"]
        assert req["path"] == "/v1/completions" and req["auth"] == "Bearer sk-secret"
        assert body["temperature"] == 0 and body["max_tokens"] == task.max_new_tokens
        assert body["prompt"].endswith("What is the pass key? The pass key is")  # the plain prompt, prefix last
    # every prompt sent is exactly the one sized for the cell: recorded tokens == local count <= length - budget
    sent = sorted(len(encode(tok, r["body"]["prompt"])) for r in srv.requests)
    assert sent == sorted(r["tokens"] for r in records)
    assert all(r["tokens"] <= r["length"] - task.max_new_tokens and r["error"] is None for r in records)
    # input_tokens is the server's own count (the fake counts bytes of the prompt)
    assert sorted(r["input_tokens"] for r in records) == sorted(len(q["body"]["prompt"].encode()) for q in srv.requests)
    config = (tmp_path / "out/config.json").read_text()
    assert "sk-secret" not in config and json.loads(config)["backend_info"]["url"] == srv.url


def test_chat_completions(tmp_path, model_dir):
    with FakeOpenAI() as srv:
        with pytest.raises(BenchError, match="--prompt plain cannot size"):
            make_backend(f"openai:url={srv.url},chat=1", model_dir, prompt="plain")
        stats = run_bench(sweep(tmp_path, model_dir, f"openai:url={srv.url},model={SERVED},chat=1", prompt="auto",
                                lengths="400", depths=1), progress=False)
    assert stats.ran == 1 and cells(tmp_path)[f"{SERVED}/none/passkey/400"]["score"] == 1.0
    (req,) = srv.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] is None  # no key needed by a local server
    (msg,) = req["body"]["messages"]
    assert msg["role"] == "user" and msg["content"].endswith("\n\nWhat is the pass key?")


def test_unreachable_server_is_one_line(tmp_path, model_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match=re.escape(url)) as err:
        make_backend(f"openai:url={url}", model_dir)
    assert "start it or fix openai:url" in str(err.value) and "\n" not in str(err.value)
    from longreach.cli import main

    assert main(["bench", "--backend", f"openai:url={url}", "--model", model_dir, "--tasks", "passkey",
                 "--lengths", "300", "--out", str(tmp_path / "o"), "--no-progress"]) == 2


def test_server_checks(model_dir):
    with FakeOpenAI(models_status=401) as srv, pytest.raises(BackendError, match="set OPENAI_API_KEY"):
        make_backend(f"openai:url={srv.url}", model_dir)
    with FakeOpenAI(models=("a", "b")) as srv:
        with pytest.raises(BackendError, match="lists 2 models .*openai:model=NAME"):
            make_backend(f"openai:url={srv.url}", model_dir)
        with pytest.raises(BackendError, match="not 'c'"):
            make_backend(f"openai:url={srv.url},model=c", model_dir)
        assert make_backend(f"openai:url={srv.url},model=b", model_dir).model_name == "b"
    with FakeOpenAI(max_model_len=500) as srv:
        backend = make_backend(f"openai:url={srv.url}", model_dir)
        from longreach.spec import Plan

        assert "max_model_len (500)" in backend.refuse(Plan.from_spec("none"), 600)
        assert backend.refuse(Plan.from_spec("none"), 500) is None
        assert backend.refuse(Plan.from_spec("yarn:factor=2"), 600) is None  # the server checks its reach


@pytest.mark.parametrize("status,error", [
    (404, {"message": "The model `fake-model@yarn:factor=2.0` does not exist.", "type": "NotFoundError"}),
    (400, {"message": "unknown method 'yarn'", "type": "invalid_request_error", "param": "model",
           "code": "invalid_method"}),
    (400, {"message": "bad method", "type": "invalid_request_error", "param": None, "code": "invalid_method"}),
])
def test_a_server_that_does_not_serve_the_method_stops_the_sweep(tmp_path, model_dir, status, error):
    def respond(path, body, n):
        return (status, {"error": error}) if "@" in body["model"] else None

    with FakeOpenAI(respond=respond) as srv:
        cfg = sweep(tmp_path, model_dir, f"openai:url={srv.url},retries=3", methods="none;yarn:factor=2",
                    lengths="300", depths=1)
        with pytest.raises(BackendError) as err:
            run_bench(cfg, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and f"HTTP {status}" in msg and error["message"] in msg
    assert "does not serve method yarn:factor=2.0 (sent as model fake-model@yarn:factor=2.0)" in msg
    assert [r["body"]["model"] for r in srv.requests] == [SERVED, f"{SERVED}@yarn:factor=2.0"]  # not retried
    assert cells(tmp_path)[f"{SERVED}/none/passkey/300"]["score"] == 1.0  # what ran before is kept


def test_a_too_long_prompt_under_a_method_is_recorded_not_fatal(tmp_path, model_dir):
    def respond(path, body, n):
        if "@" in body["model"]:
            return 400, {"error": {"message": "This model's maximum context length is 256 tokens.",
                                   "type": "invalid_request_error", "param": "prompt",
                                   "code": "context_length_exceeded"}}
        return None

    with FakeOpenAI(respond=respond) as srv:
        stats = run_bench(sweep(tmp_path, model_dir, f"openai:url={srv.url}", methods="yarn:factor=2",
                                lengths="300", depths=1), progress=False)
    assert stats.ran == 1 and len(srv.requests) == 1
    (rec,) = [json.loads(line) for p in (tmp_path / "out/cells").rglob("samples.jsonl")
              for line in p.read_text().splitlines()]
    assert rec["error"] == f"{srv.url}/completions: HTTP 400 (This model's maximum context length is 256 tokens.)"


def test_transient_failures_are_retried_then_recorded(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(OpenAIBackend, "backoff", 0.01)
    def respond(path, body, n):
        if n == 0:
            return 503, {"error": {"message": "busy"}}  # retried: the first sample still succeeds
        if n in (2, 3):
            return 500, {"error": {"message": "engine\nerror"}}  # fails twice: recorded for the sample
        if n == 5:
            return 400, {"error": {"message": "prompt too long"}}  # a refused request is not retried
        return None

    with FakeOpenAI(respond=respond) as srv:
        stats = run_bench(sweep(tmp_path, model_dir, f"openai:url={srv.url},retries=1", depths=2), progress=False)
    assert stats.ran == 4 and len(srv.requests) == 6
    records = sorted((json.loads(line) for p in (tmp_path / "out/cells").rglob("samples.jsonl")
                      for line in p.read_text().splitlines()), key=lambda r: (r["length"], r["id"]))
    errors = [r["error"] for r in records]
    assert errors[0] is None and errors[2] is None
    assert errors[1] == f"{srv.url}/completions: HTTP 500 (engine error) (after 2 tries)"
    assert errors[3] == f"{srv.url}/completions: HTTP 400 (prompt too long)"
    assert [r["score"] for r in records] == [1.0, 0.0, 1.0, 0.0]
    assert sum(m["errors"] for m in cells(tmp_path).values()) == 2


def test_timeout_is_recorded_and_a_dead_server_stops_the_sweep(tmp_path, model_dir):
    with FakeOpenAI(delay=1.0) as srv:
        backend = make_backend(f"openai:url={srv.url},timeout=0.2,retries=0", model_dir)
        sample = make_task("passkey").generate(backend.tokenizer, 300, seed=0, depth=0.5)
        from longreach.spec import Plan

        with pytest.raises(BenchError, match="no answer within the timeout") as err:
            backend.generate(sample, Plan.from_spec("none"))
        assert not isinstance(err.value, BackendError)  # recorded for the sample, the sweep goes on
    # the server went away after the backend was made: the sweep stops with one line, nothing is recorded
    srv_dead = FakeOpenAI()
    with srv_dead:
        cfg = sweep(tmp_path, model_dir, f"openai:url={srv_dead.url},retries=0", lengths="300", depths=1)
        backend = make_backend(cfg.backend, model_dir, prompt="plain")
    with pytest.raises(BackendError, match="stopped answering"):
        backend.generate(sample, Plan.from_spec("none"))
    with FakeOpenAI(respond=lambda *a: (404, {"error": {"message": "no route"}})) as srv:
        with pytest.raises(BackendError, match="openai:chat=1"):
            run_bench(sweep(tmp_path, model_dir, f"openai:url={srv.url}", lengths="300", depths=1), progress=False)
    assert not list((tmp_path / "out").glob("cells/**/metrics.json"))
