"""Fuzz of the openai backend's HTTP replies: random status lines, headers and bodies (arbitrary bytes, random
JSON, deeply nested JSON, huge numbers, lone surrogates, the key echoed back, redirects anywhere). Each reply
ends as a sample result, a recorded per-sample error or the one-line BackendError that stops a sweep; never
another exception, never a hang (each example runs under a SIGALRM limit), never the key outside its host.

Most replies are served through the real urllib + http.client stack from an in-memory socket (fast); a few
hundred over real HTTP from a raw TCP server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import socketserver
import threading
import urllib.request

import pytest
from conftest import byte_tokenizer
from conftest import time_box as _time_box
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longreach.bench import client
from longreach.bench.backends import OpenAIBackend
from longreach.bench.task import make_task
from longreach.errors import LongreachError
from longreach.spec import Plan

KEY = "sk-fuzz-5ecret-0123456789"
HOST = "api.fuzz.invalid"  # never resolved: the in-memory socket answers every connection
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


class Hang(Exception):
    pass


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    """Proxies from the environment would route the requests elsewhere (and tunnel https)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def time_box(seconds: float):
    return _time_box(seconds, Hang)


# ---------------------------------------------------------------------------------------- replies
_latin = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
_header_values = st.one_of(
    st.sampled_from(["application/json", "chunked", "gzip", "close", "keep-alive", "-1", "0", "3", "99999999999",
                     " 12 ", "/v1/models/", "/v1/completions", "//other.fuzz.invalid/x", f"http://{HOST}:81/v1",
                     f"https://{HOST}/v1/completions", "http://127.0.0.1:1/v1", "ftp://x/y", "file:///etc/passwd",
                     "data:,hi", f"Bearer {KEY}", "\u00ff\u00e9"]),
    st.text(_latin, max_size=12), st.integers().map(str))
_locations = st.sampled_from(["/v1/models/", "/v1/completions", "//other.fuzz.invalid/x", f"http://{HOST}:81/v1",
                              f"http://{HOST}/v1/x", f"https://{HOST}/v1/completions", f"https://{HOST}:444/",
                              f"https://{HOST.upper()}:443/v1/models", "http://127.0.0.1:1/v1", "ftp://x/y",
                              "file:///etc/passwd", "data:,hi", "", "?q", "#f"])
_header_names = st.sampled_from(["Content-Type", "Content-Length", "Transfer-Encoding", "Location", "Connection",
                                 "Content-Encoding", "Retry-After", "Uri", "X-Echo", "set-cookie", "x", "A-b-C-9"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["choices", "text", "message", "content", "usage", "prompt_tokens", "completion_tokens",
                         "data", "id", "error", "max_model_len"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=8)
_answer_text = st.one_of(st.text(max_size=40),  # any code point, lone surrogates included
                         st.sampled_from(["\ud800", "a\udfffb", "\u2028x\u2029\x85", f"key {KEY}", "", " 42 "]))
_count = st.one_of(st.integers(-3, 10**6), st.integers(min_value=2**60), st.floats(allow_nan=True),
                   st.booleans(), st.none(), st.text(max_size=3))


def _shaped(text, chat, usage, extra) -> dict:
    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {"choices": [choice] if extra else [choice, {"text": "second"}], "usage": usage}


_bodies = st.one_of(
    st.binary(max_size=200),
    _json.map(json.dumps),
    st.builds(lambda *a: json.dumps(_shaped(*a[:4]), ensure_ascii=a[4]), _answer_text, st.booleans(),
              st.one_of(st.fixed_dictionaries({"prompt_tokens": _count, "completion_tokens": _count}), _json),
              st.booleans(), st.booleans()),
    st.builds(lambda n, form: ["[" * n + "]" * n, '{"choices":' * n + "[]" + "}" * n, "[" * n,
                               '{"choices":[{"text":' + "[" * n + '"x"' + "]" * n + "}]}"][form],
              st.sampled_from([1, 63, 64, 65, 999, 1000, 3000, 20000]) | st.integers(1, 3000), st.integers(0, 3)),
    (st.sampled_from([19, 20, 4300, 4301, 6000]) | st.integers(1, 6000)).map(lambda n: '{"choices":[{"text":"x"}],"usage":{"prompt_tokens":' + "9" * n + "}}"),
    st.sampled_from(['{"choices":[{"text":"x"}],"usage":{"prompt_tokens":NaN,"completion_tokens":Infinity}}',
                     '{"choices":[{"text":"\\ud800"}]}', '{"choices":[{"text":"\\udfff\\ud800"}]}',
                     '{"data":[{"id":".."}]}', '{"data":[{"id":"a\\nb"}]}', '{"data":[{"id":"m","max_model_len":1e999}]}',
                     '{"data":[{"id":"m","max_model_len":-5}]}', '{"data":[{"id":"m","max_model_len":true}]}',
                     '{"data":[{"id":"m"},{"id":"m2"}]}', '{"data":{"id":"m"}}', '{"error":{"message":"no"}}',
                     "\ufeff{}", "1e999999", "-" * 10, "null"]),
).map(lambda b: b if isinstance(b, bytes) else b.encode("utf-8", "surrogatepass"))


@st.composite
def replies(draw, key_echo: bool = True) -> bytes:
    """One raw HTTP reply: a status line, headers and a body (sometimes chunked or with a wrong length);
    one in four a well-formed 200 with a completion-shaped body."""
    if draw(st.integers(0, 3)) == 0:
        body = json.dumps(_shaped(draw(_answer_text), draw(st.booleans()), {"prompt_tokens": draw(_count)}, True))
        body = body.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    body = draw(_bodies)
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))  # not HTTP at all
    code = draw(st.one_of(st.sampled_from([200] * 8 + [201, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404,
                                                       413, 429, 500, 502, 503]), st.sampled_from([301, 302, 303]),
                          st.integers(0, 1200)))
    reason = draw(st.one_of(st.just("OK"), st.text(_latin, max_size=20), st.just(f"Bearer {KEY}"))) \
        if key_echo else draw(st.text(_latin, max_size=20))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "HTTP/1.1 ", "ICY", "http/1.1"]))
    lines = [f"{version} {code} {reason}".encode("latin-1")]
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=4))
    if draw(st.integers(0, 3)) == 0:
        headers.insert(0, ("Location", draw(_locations)))
    if draw(st.booleans()) and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
        if draw(st.booleans()):
            headers.append(("Content-Length", str(len(body))))
        else:
            headers.append(("Transfer-Encoding", "chunked"))
            cut = draw(st.integers(0, len(body)))
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:cut], body[cut:]) if p) + b"0\r\n\r\n"
    lines += [f"{n}: {v}".encode("latin-1") for n, v in headers]
    if draw(st.integers(0, 19)) == 0:
        lines.append(draw(st.binary(max_size=40)).replace(b"\r\n", b""))  # a header line of junk
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --------------------------------------------------------------------------- the in-memory socket
class MemorySocket:
    def __init__(self, reply: bytes, sent: list):
        self.reply, self.sent = reply, sent

    def sendall(self, data):
        self.sent[-1][1].append(bytes(data))

    def makefile(self, mode, *args, **kwargs):
        return io.BytesIO(self.reply)

    def settimeout(self, t):
        pass

    def setsockopt(self, *args):
        pass

    def close(self):
        pass


class Wire:
    """Serves ``reply`` to every connection urllib opens (http or https, any host) and records what was
    sent where: ``sent`` = [((scheme, host, port), [bytes, ...]), ...]."""

    def __init__(self):
        self.reply = b""
        self.sent: list = []
        wire = self

        class Connection(http.client.HTTPConnection):
            scheme = "http"

            def connect(self):
                wire.sent.append(((self.scheme, self.host.lower(), self.port), []))
                self.sock = MemorySocket(wire.reply, wire.sent)

        class TLSConnection(Connection):
            scheme = "https"
            default_port = 443

        self.http, self.https = Connection, TLSConnection

    @contextlib.contextmanager
    def installed(self):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(urllib.request.HTTPHandler, "http_open", lambda h, req: h.do_open(self.http, req))
            mp.setattr(urllib.request.HTTPSHandler, "https_open", lambda h, req: h.do_open(self.https, req))
            yield


def check_outcome(run, sent, origin, keyed=True):
    """``run()`` returns a sample result or raises a one-line LongreachError; the key never leaves ``origin``
    and, when it was set (``keyed``), never shows in what comes back (a reply may quote it unasked)."""
    sent.clear()
    try:
        with time_box(10):
            result = run()
    except LongreachError as exc:
        text = str(exc)
        assert "\n" not in text and "\r" not in text and not (keyed and KEY in text), text
        outcome = "error"
    else:
        if isinstance(result, dict):
            stored = json.dumps(result, ensure_ascii=False)
            stored.encode("utf-8")  # no lone surrogate: storable as UTF-8 as is
            assert not (keyed and KEY in stored) and isinstance(result["prediction"], str)
            for field in ("input_tokens", "output_tokens"):
                assert isinstance(result[field], int) and 0 <= result[field] < 2**53
        outcome = "ok"
    for where, chunks in sent:
        if KEY.encode() in b"".join(chunks):
            assert where == origin, f"the key went to {where}"
    return outcome


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def sample(tok):
    return make_task("passkey").generate(tok, 300, seed=0, depth=0.5)


def backend_on(wire: Wire, url: str, chat: bool, tok, timeout: float = 5.0) -> OpenAIBackend:
    wire.reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                  + json.dumps({"data": [{"id": "m"}]}).encode())
    backend = OpenAIBackend("tok", url=url, chat=chat, timeout=timeout, retries=1)
    backend._tok = tok
    return backend


def test_fuzz_completion_replies_in_memory(tok, sample, monkeypatch):
    """700 generated replies to a completion request (chat and not, with and without a key); with the 300
    over real HTTP below, 1,000 completion replies and 300 model listings per run."""
    monkeypatch.setattr(OpenAIBackend, "backoff", 0.0)
    wire, plan, seen = Wire(), Plan.from_spec("none"), {"ok": 0, "error": 0}
    url = f"https://{HOST}/v1"
    with wire.installed():
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        backends = {(chat, True): backend_on(wire, url, chat, tok) for chat in (False, True)}
        monkeypatch.delenv("OPENAI_API_KEY")
        backends.update({(chat, False): backend_on(wire, url, chat, tok) for chat in (False, True)})

        @settings(max_examples=700, **SETTINGS)
        @given(reply=replies(), chat=st.booleans(), keyed=st.booleans())
        def one(reply, chat, keyed):
            wire.reply = reply
            with pytest.MonkeyPatch.context() as mp:
                if keyed:
                    mp.setenv("OPENAI_API_KEY", KEY)
                backend = backends[(chat, keyed)]
                seen[check_outcome(lambda: backend.generate(sample, plan), wire.sent, ("https", HOST, 443),
                                   keyed)] += 1

        one()
    assert seen["ok"] > 50 and seen["error"] > 200, seen  # both outcomes are exercised


def test_fuzz_model_listing_replies_in_memory(tok, monkeypatch):
    """300 generated replies to ``GET /models`` when the backend is made: a backend or a one-line error."""
    wire, seen = Wire(), {"ok": 0, "error": 0}
    url = f"http://{HOST}/v1"

    @settings(max_examples=300, **SETTINGS)
    @given(reply=replies(), keyed=st.booleans(), served=st.sampled_from([None, "m"]))
    def one(reply, keyed, served):
        wire.reply = reply
        with pytest.MonkeyPatch.context() as mp:
            if keyed:
                mp.setenv("OPENAI_API_KEY", KEY)
            outcome = check_outcome(lambda: OpenAIBackend("tok", url=url, served=served, timeout=5.0,
                                                          insecure=True), wire.sent, ("http", HOST, 80), keyed)
        seen[outcome] += 1

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with wire.installed():
        one()
    assert seen["ok"] > 5 and seen["error"] > 100, seen


# ----------------------------------------------------------------------------------- real HTTP
class RawServer(socketserver.ThreadingTCPServer):
    """Reads one request (headers and Content-Length body) per connection and answers ``reply`` as is."""

    daemon_threads = True
    allow_reuse_address = True
    reply = b""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RawHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"


class RawHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(65536)
                if not chunk or chunk.startswith(b"\x16"):  # closed, or a TLS hello (https:// redirect)
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < length:
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                rest += chunk
            self.request.sendall(self.server.reply)
            self.request.shutdown(socket.SHUT_WR)


def test_fuzz_replies_over_real_http(tok, sample, monkeypatch):
    """300 generated replies from a raw TCP server on 127.0.0.1 (redirects stay on this machine)."""
    monkeypatch.setattr(OpenAIBackend, "backoff", 0.0)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = RawServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    local = st.sampled_from([f"http://127.0.0.1:{port}/v1/x", f"http://localhost:{port}/v1/completions",
                             "http://127.0.0.1:1/v1", f"https://127.0.0.1:{port}/v1", "/v1/models/"])
    seen = {"ok": 0, "error": 0}
    try:
        server.reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                        + json.dumps({"data": [{"id": "m"}]}).encode())
        backends = {chat: OpenAIBackend("tok", url=server.url, chat=chat, timeout=3.0, retries=1)
                    for chat in (False, True)}
        for b in backends.values():
            b._tok = tok

        @settings(max_examples=300, **SETTINGS)
        @given(reply=replies(), location=st.none() | local, chat=st.booleans(), keyed=st.booleans())
        def one(reply, location, chat, keyed):
            if location:
                head, sep, body = reply.partition(b"\r\n")
                reply = head + sep + f"Location: {location}\r\n".encode() + body if sep else reply
            server.reply = reply
            with pytest.MonkeyPatch.context() as mp:
                if keyed:
                    mp.setenv("OPENAI_API_KEY", KEY)
                seen[check_outcome(lambda: backends[chat].generate(sample, Plan.from_spec("none")), [],
                                   None, keyed)] += 1

        one()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert seen["ok"] > 10 and seen["error"] > 100, seen


def test_parse_level_edge_cases(tok):
    """The cases the issue names, at the parsing functions: a lone surrogate is stored as U+FFFD, a deep
    or huge reply is a one-line ReplyError, bad token counts fall back to the local count."""
    backend = OpenAIBackend.__new__(OpenAIBackend)
    backend.chat, backend.url = False, "http://h/v1"
    got = backend.parse_answer(client.decode_json(b'{"choices":[{"text":" a\\ud800b "}],'
                                                  b'"usage":{"prompt_tokens":true,"completion_tokens":1e3}}'),
                               "/completions", 7, 0.5)
    assert got["prediction"] == "a\ufffdb" and got["input_tokens"] == 7 and got["output_tokens"] == 0
    for raw, what in [(b"[" * 100 + b"]" * 100, "nested more than 64"), (b"[" * 10**5, "nested more than 64"),
                      (b"\xff", "not UTF-8"), (b"", "empty"), (b"<html>", "not JSON"),
                      (b"9" * 5000, "not JSON")]:
        with pytest.raises(client.ReplyError, match=what):
            client.decode_json(raw)
    reply = http.client.HTTPResponse(MemorySocket(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", [None]))
    reply.begin()
    with pytest.raises(client.ReplyError, match="announces"):
        client.read_reply(reply, deadline=float("inf"))
    big = http.client.HTTPResponse(MemorySocket(b"HTTP/1.1 200 OK\r\n\r\n" + b" " * (client.MAX_REPLY_BYTES + 1),
                                                [None]))
    big.begin()
    with pytest.raises(client.ReplyError, match="over the limit"):
        client.read_reply(big, deadline=float("inf"))
