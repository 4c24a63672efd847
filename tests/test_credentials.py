"""Where the API key may go: only to the URL's own host (no cross-host redirect carries it), over plain http
only to this machine unless ``insecure=1``, and never into results, logs, error messages or Ray task
arguments (servers on 127.0.0.1 in threads; a stand-in ``ray`` module records what would be submitted)."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import byte_tokenizer
from test_bench_openai import SERVED, FakeOpenAI, model_dir, sweep  # noqa: F401 - model_dir is a fixture

from longreach.bench import client
from longreach.bench.backends import BackendError, OpenAIBackend, TransientBackendError, make_backend
from longreach.bench.runner import load_config, run_bench
from longreach.bench.task import BenchError, make_task
from longreach.errors import LongreachError
from longreach.spec import Plan

KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class Route:
    """A server on 127.0.0.1 answering every request with ``answer(method, path, headers) -> (status,
    headers, body)``; ``seen``: (method, path, Authorization) of every request."""

    def __init__(self, answer):
        self.seen: list[tuple[str, str, str | None]] = []
        route = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                route.seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, body = answer(self.command, self.path, self.headers)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def listing(*names):
    return json.dumps({"object": "list", "data": [{"id": n} for n in names]}).encode()


def completion(text="The pass key is 1."):
    return json.dumps({"choices": [{"text": text}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text and KEY not in text
    return text


def passkey_sample():
    return make_task("passkey").generate(byte_tokenizer(), 300, seed=0, depth=0.5)


# ------------------------------------------------------------------------------------------ redirects
def test_cross_host_redirect_never_carries_the_key(monkeypatch, model_dir):  # noqa: F811
    with Route(lambda m, p, h: (200, {}, listing(SERVED) if p.endswith("/models") else completion())) as other:
        def redirecting(method, path, headers):
            return 302, {"Location": other.base + path}, b"moved"

        with Route(redirecting) as first:
            url = first.base + "/v1"
            monkeypatch.setenv("OPENAI_API_KEY", KEY)
            with pytest.raises(BackendError, match="another host; longreach does not send") as err:
                make_backend(f"openai:url={url}", model_dir)
            assert other.seen == [] and first.seen == [("GET", "/v1/models", f"Bearer {KEY}")]
            assert other.base in one_line(err.value)

            monkeypatch.delenv("OPENAI_API_KEY")  # without a key there is nothing to leak: followed
            backend = make_backend(f"openai:url={url}", model_dir)
            assert backend.model_name == SERVED and other.seen == [("GET", "/v1/models", None)]


def test_redirect_of_a_post_is_not_followed_and_same_host_redirects_keep_working(monkeypatch, model_dir):  # noqa: F811
    def answer(method, path, headers):
        if path == "/v1/models":
            return 301, {"Location": "/v1/models/"}, b""  # same origin: followed, with the key
        if path == "/v1/models/":
            return 200, {}, listing(SERVED)
        return 307, {"Location": "/v2/completions"}, b""

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with Route(answer) as srv:
        backend = make_backend(f"openai:url={srv.base}/v1,retries=3", model_dir, prompt="plain")
        assert [s[2] for s in srv.seen] == [f"Bearer {KEY}"] * 2
        with pytest.raises(BenchError, match="redirects a POST") as err:
            backend.generate(passkey_sample(), Plan.from_spec("none"))
        assert not isinstance(err.value, (BackendError, TransientBackendError))  # recorded, not retried
        assert [s[:2] for s in srv.seen[2:]] == [("POST", "/v1/completions")]
        one_line(err.value)


@pytest.mark.parametrize(("old", "new", "follows"), [
    ("https://api.example/v1/models", "http://api.example/v1/models", False),  # downgrade: another origin
    ("http://127.0.0.1:8000/v1/models", "http://127.0.0.1:8001/v1/models", False),
    ("http://127.0.0.1:8000/v1/models", "http://localhost:8000/v1/models", False),
    ("https://api.example/v1/models", "https://API.example:443/v1/models/", True),
    ("http://api.example/v1/models", "ftp://api.example/x", False),
])
def test_redirect_policy(old, new, follows):
    handler = client.SafeRedirects(KEY)
    req = urllib.request.Request(old, headers={"Authorization": f"Bearer {KEY}"})
    if follows:
        nxt = handler.redirect_request(req, None, 302, "Found", {}, new)
        assert nxt.get_header("Authorization") == f"Bearer {KEY}"
    else:
        with pytest.raises(client.RedirectRefused):
            handler.redirect_request(req, None, 302, "Found", {}, new)
    bare = urllib.request.Request(old)  # no key: another http(s) origin is followed
    if new.startswith("http"):
        assert handler.redirect_request(bare, None, 302, "Found", {}, new).get_header("Authorization") is None


# ------------------------------------------------------------------------------------ plain http
@pytest.fixture()
def calls(monkeypatch):
    """OpenAIBackend._call stubbed: records (url, Authorization) of each request; serves one model."""
    seen: list[tuple[str, str | None]] = []

    def fake_call(self, path, body, timeout):
        key = self._key()
        seen.append((self.url + path, key))
        return {"data": [{"id": SERVED}]} if body is None else {"choices": [{"text": "x"}]}

    monkeypatch.setattr(OpenAIBackend, "_call", fake_call)
    return seen


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000/v1", "http://gpu-node:8000/v1", "http://[fe80::1]/v1",
                                 "http://127.0.0.1.example:80/v1"])
def test_key_goes_to_plain_http_elsewhere_only_with_insecure(url, calls, monkeypatch):
    make_backend(f"openai:url={url}", "m")  # no key: nothing to protect
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    calls.clear()
    with pytest.raises(BackendError, match="travel unencrypted .*insecure=1") as err:
        make_backend(f"openai:url={url}", "m")
    assert calls == [] and url in one_line(err.value)  # refused before any request
    make_backend(f"openai:url={url},insecure=1", "m")
    assert calls == [(url + "/models", KEY)]


@pytest.mark.parametrize("url", ["https://api.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost/v1",
                                 "http://[::1]:8000/v1", "http://127.8.9.10/v1"])
def test_key_goes_over_https_or_to_this_machine(url, calls, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", f"  {KEY}\n")  # surrounding white space is not part of a key
    make_backend(f"openai:url={url}", "m")
    assert calls == [(url + "/models", KEY)]


def test_key_set_later_is_checked_for_every_request(calls, monkeypatch):
    backend = make_backend(f"openai:url=http://10.1.2.3/v1,model={SERVED}", "m")
    backend._tok = byte_tokenizer()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(BackendError, match="travel unencrypted"):
        backend.generate(passkey_sample(), Plan.from_spec("none"))
    assert len(calls) == 1  # only the listing, made without a key


@pytest.mark.parametrize("bad", ["sk-a b", "sk-a\nb", "sk-\u00e9", "sk-\x7f"])
def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(bad, calls, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", bad)
    with pytest.raises(BackendError, match="set it to the key alone") as err:
        make_backend("openai:url=https://api.example/v1", "m")
    assert bad.strip() not in str(err.value) and calls == []


def test_credentials_in_the_url_are_refused_without_showing_them():
    with pytest.raises(BenchError, match="user name or password") as err:
        make_backend("openai:url=https://bob:hunter2secret@api.example/v1", "m")
    assert "hunter2secret" not in str(err.value) and "https://api.example/v1" in one_line(err.value)
    for url, what in [("https://api.example/v1?key", "without '\\?'"), ("http://h:99999/v1", "bad port"),
                      ("ftp://h/v1", "not an http")]:
        with pytest.raises(BenchError, match=what):
            make_backend(f"openai:url={url}", "m")


# ---------------------------------------------------------------------- results, logs, messages
def test_key_echoed_by_the_server_reaches_no_result_log_or_message(tmp_path, model_dir, monkeypatch, caplog,  # noqa: F811
                                                                    capsys):
    """A server that echoes the Authorization header in answers, error bodies and its status reason:
    nothing of the key is stored in any file of --out, logged or shown."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setattr(OpenAIBackend, "backoff", 0.0)
    srv: FakeOpenAI

    def respond(path, body, n):
        auth = srv.requests[-1]["auth"]
        return [(200, {"choices": [{"text": f"The key you sent: {auth}"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 5}}),
                (500, {"error": {"message": f"upstream rejected {auth}"}}),
                (400, {"error": f"bad header {json.dumps(auth)}"}),
                None][n % 4]

    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(respond=respond) as srv:
        stats = run_bench(sweep(tmp_path, model_dir, f"openai:url={srv.url},retries=0"), progress=False)
    assert stats.ran == 4 and {r["auth"] for r in srv.requests} == {f"Bearer {KEY}"}
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "samples.jsonl", "metrics.json", "results.json",
                                       "results.sqlite"}
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    records = [json.loads(line) for p in (tmp_path / "out/cells").rglob("samples.jsonl")
               for line in p.read_text().splitlines()]
    shown = sorted(str(r["error"] or r["prediction"]) for r in records)
    assert any("The key you sent: Bearer ***" in s for s in shown)
    assert any("upstream rejected Bearer ***" in s for s in shown) and any("bad header" in s for s in shown)
    out = capsys.readouterr()
    assert KEY not in caplog.text + out.out + out.err

    # the key echoed in a 401 body and in the reason phrase of a status line: the one-line stop shows neither
    def refused(method, path, headers):
        return 401, {}, json.dumps({"error": {"message": f"invalid key {headers['Authorization']}"}}).encode()

    with Route(refused) as route, pytest.raises(BackendError, match="invalid key Bearer \\*\\*\\*") as err:
        make_backend(f"openai:url={route.base}/v1", model_dir)
    one_line(err.value)


def test_error_detail_reads_little_and_scrubs():
    import io

    body = io.BytesIO(json.dumps({"error": {"message": "x" * 10**6 + KEY}}).encode())
    exc = urllib.error.HTTPError("http://h/v1", 500, f"Bearer {KEY}", {}, body)
    detail = client.error_detail(exc, KEY)
    assert body.tell() == client.MAX_ERROR_BYTES and len(detail) <= client.MAX_TEXT + 2
    assert client.error_detail(urllib.error.HTTPError("u", 500, f"no {KEY}\nhere", {}, None), KEY) == \
        "(no *** here)"


# ------------------------------------------------------------------------------------------------ Ray
class Ref:
    def __init__(self, value):
        self.value = value


class StandInRay:
    """Just enough of ``ray`` to run :func:`run_ray` in this process: records everything handed to Ray
    (init / remote options, put, task arguments) and runs each task at once, with ``worker_env`` changes."""

    def __init__(self, monkeypatch, worker_env=None):
        self.handed: list = []
        self.monkeypatch, self.worker_env = monkeypatch, worker_env or {}

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.handed.append(("init", kwargs))

    def shutdown(self):
        pass

    def put(self, value):
        self.handed.append(("put", value))
        return value

    def remote(self, **options):
        self.handed.append(("options", options))
        ray = self

        class Remote:
            def __init__(self, fn):
                self.fn = fn

            def remote(self, *args, **kwargs):
                ray.handed.append(("task", args, kwargs))
                with pytest.MonkeyPatch.context() as mp:  # the worker's own environment
                    for k, v in ray.worker_env.items():
                        if v is None:
                            mp.delenv(k, raising=False)
                        else:
                            mp.setenv(k, v)
                    return Ref(self.fn(*args, **kwargs))

        return Remote

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def cancel(self, ref):
        pass


def test_ray_tasks_carry_no_credential(tmp_path, model_dir, monkeypatch):  # noqa: F811
    from longreach.bench import ray_executor

    monkeypatch.setattr(ray_executor, "_WORKER_BACKEND", {})
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    monkeypatch.setenv("LONGREACH_SERVICE_PASSWORD", "pw-secret-value")
    ray = StandInRay(monkeypatch)
    monkeypatch.setitem(sys.modules, "ray", ray)
    with FakeOpenAI() as srv:
        cfg = sweep(tmp_path, model_dir, f"openai:url={srv.url}", executor="ray")
        stats = run_bench(cfg, progress=False)
    assert stats.ran == 4 and {r["auth"] for r in srv.requests} == {f"Bearer {KEY}"}  # the worker's own key
    tasks = [h for h in ray.handed if h[0] == "task"]
    assert len(tasks) == 2
    _, (cfg_arg, cell, out, env, needs), kwargs = tasks[0]
    assert needs == ["OPENAI_API_KEY"] and env["LONGREACH_CACHE"] == str(tmp_path / "cache") and not kwargs
    assert "HF_TOKEN" not in env and "LONGREACH_SERVICE_PASSWORD" not in env and "HF_HUB_OFFLINE" in env
    handed = pickle.dumps(ray.handed) + repr(ray.handed).encode()
    for secret in (KEY, "hf_secret_token_value", "pw-secret-value"):
        assert secret.encode() not in handed

    # a worker whose node lacks the key stops the sweep with one line instead of sending no key
    monkeypatch.setitem(sys.modules, "ray", StandInRay(monkeypatch, {"OPENAI_API_KEY": None}))
    with FakeOpenAI() as srv:
        cfg = sweep(tmp_path, model_dir, f"openai:url={srv.url}", executor="ray", out=str(tmp_path / "out2"))
        with pytest.raises(LongreachError, match=r"has no \$OPENAI_API_KEY \(the driver has\)") as err:
            run_bench(cfg, progress=False)
    one_line(err.value)
    assert srv.requests == []


def test_oracle_ray_sweep_needs_no_credential(tmp_path, monkeypatch):
    from longreach.bench import ray_executor

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cfg = load_config(None, dict(backend="oracle", methods="none", tasks="vt", lengths="1k", out=str(tmp_path)))
    assert ray_executor.needed_credentials(cfg) == []
    assert ray_executor.forwarded_env({"HF_TOKEN": "x", "HF_HOME": "/h", "OPENAI_API_KEY": "k",
                                       "OPENAI_BASE_URL": "u", "LONGREACH_API_TOKEN": "t"}) == \
        {"HF_HOME": "/h", "OPENAI_BASE_URL": "u"}
