"""The HTTP client under the ``openai`` backend: where a credential may go, and how much of a reply is read.

- The API key (``$OPENAI_API_KEY``) is sent only to the origin (scheme, host, port) of ``openai:url``: a
  redirect to another origin is refused while the request carries the key (:class:`RedirectRefused`), a
  redirect of a POST is never followed (urllib would re-send it as a GET without the prompt), and a
  redirect to anything but http(s) is refused.
- A key goes to a plain-http URL only on this machine (loopback) unless the user says ``insecure=1``
  (:func:`check_key`), and it must be printable ASCII without spaces (a key with a newline would otherwise
  end up in http.client's error text).
- A reply is read up to :data:`MAX_REPLY_BYTES` within the request's timeout, must be UTF-8 JSON nested at
  most :data:`MAX_JSON_DEPTH` deep (:func:`decode_json`); any text taken from a server and put into an error
  message is made one line, cut short and cleaned of the key (:func:`server_text`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

MAX_REPLY_BYTES = 16 * 2**20  # a completion reply; more is refused, not read
MAX_ERROR_BYTES = 64 * 2**10  # the body of an HTTP error, read for its message only
MAX_JSON_DEPTH = 64
MAX_TEXT = 200  # characters of server text in one error message
_KEY_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what an HTTP header value can carry unchanged
_SURROGATE = re.compile("[\ud800-\udfff]")


class ReplyError(ValueError):
    """A reply that is not what was asked for (too large, not UTF-8 JSON, nested too deeply)."""


class RedirectRefused(Exception):
    """A redirect this client does not follow; ``fatal``: every request would meet it (stop the sweep)."""

    def __init__(self, message: str, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` with the scheme's default port filled in."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1  # a malformed port: an origin of its own
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be an ``openai:url`` base (one line, the URL shown without credentials); else None."""
    example = "openai:url=http://127.0.0.1:8000/v1"
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        return f"openai:url must be printable ASCII without spaces; write e.g. {example}"
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        return (f"openai:url={shown} carries a user name or password; put the key in $OPENAI_API_KEY and "
                f"remove 'user:password@' from the URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"openai:url={url} is not an http(s) URL; write e.g. {example}"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
    except ValueError:
        return f"openai:url={url} has a bad port; write e.g. {example}"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"openai:url={url} must be a base URL without '?' or '#' (paths such as /completions are added)"
    return None


def check_key(key: str, url: str, insecure: bool) -> str | None:
    """Why ``key`` must not be sent to ``url`` (one line, never the key itself); else None."""
    if not _KEY_RE.match(key):
        return (f"$OPENAI_API_KEY ({len(key)} characters) holds a space, a control or a non-ASCII character; "
                f"set it to the key alone")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or "") and not insecure:
        return (f"$OPENAI_API_KEY would travel unencrypted to {url} (plain http, not this machine); use an "
                f"https:// URL, unset OPENAI_API_KEY if the server needs no key, or add insecure=1 to the "
                f"backend spec (openai:url=...,insecure=1) to send it anyway")
    return None


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    if secret:
        text = text.replace(secret, "***")
        escaped = json.dumps(secret)[1:-1]  # as it reads inside a JSON string
        if escaped != secret:
            text = text.replace(escaped, "***")
    return text


def server_text(text: Any, secret: str | None, limit: int = MAX_TEXT) -> str:
    """Text from a server made fit for a one-line message: no key, no control characters, at most ``limit``."""
    text = "".join(c if c.isprintable() else " " for c in scrub(str(text), secret))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean_text(text: str, secret: str | None) -> str:
    """A reply's answer text stored as is, except lone surrogates (U+FFFD) and the key (``***``)."""
    return scrub(_SURROGATE.sub("\ufffd", text), secret)


def read_reply(resp: Any, deadline: float, limit: int = MAX_REPLY_BYTES) -> bytes:
    """The body of ``resp``: at most ``limit`` bytes (else :class:`ReplyError`), read before ``deadline``
    (``time.monotonic()``; else :class:`TimeoutError`) even when the server sends it a byte at a time."""
    length = resp.headers.get("Content-Length") if getattr(resp, "headers", None) is not None else None
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise ReplyError(f"the reply announces {int(length):,} bytes, over the limit of {limit:,}")
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the reply did not arrive within the timeout")
        chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ReplyError(f"the reply is over the limit of {limit:,} bytes")
        chunks.append(chunk)


def decode_json(raw: bytes) -> Any:
    """UTF-8 JSON nested at most :data:`MAX_JSON_DEPTH` deep, else :class:`ReplyError` (one line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReplyError(f"the reply is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ReplyError(f"the reply is JSON nested more than {MAX_JSON_DEPTH} deep") from None
    except ValueError as exc:
        what = "empty" if not text.strip() else f"not JSON ({str(exc).splitlines()[0][:80]})"
        raise ReplyError(f"the reply is {what}") from None
    stack = [(data, 1)]
    while stack:  # iterative: a deep reply cannot exhaust the Python stack here
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ReplyError(f"the reply is JSON nested more than {MAX_JSON_DEPTH} deep")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return data


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect of a GET within the same origin, or to another http(s) origin only when the
    request carries no ``Authorization``; refuses everything else with :class:`RedirectRefused`."""

    def __init__(self, secret: str | None = None):
        self.secret = secret

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        shown = server_text(newurl, self.secret, 120)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise RedirectRefused(f"{req.full_url} redirects to {shown}, which is not http(s); not followed",
                                  fatal=False)
        if req.get_method() != "GET":
            raise RedirectRefused(f"{req.full_url}: HTTP {code} redirects a POST to {shown}; longreach does not "
                                  f"follow it (set openai:url to where the server really is)", fatal=False)
        if origin(newurl) != origin(req.full_url) and req.has_header("Authorization"):
            raise RedirectRefused(f"{req.full_url} redirects to {shown}, another host; longreach does not send "
                                  f"$OPENAI_API_KEY there: if you trust it, use that address as openai:url",
                                  fatal=True)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and fp is not None:
            fp.close()  # its body is never used (urllib would read it whole, without a size limit)
        return new


def make_opener(url: str, secret: str | None = None) -> urllib.request.OpenerDirector:
    """An opener for ``url``: no proxy for loopback, the environment's proxies otherwise, safe redirects."""
    local = is_loopback(urllib.parse.urlsplit(url).hostname or "")
    proxies = urllib.request.ProxyHandler({}) if local else urllib.request.ProxyHandler()
    return urllib.request.build_opener(proxies, SafeRedirects(secret))


def error_detail(exc: urllib.error.HTTPError, secret: str | None) -> str:
    """The server's message of an HTTP error (its JSON ``error.message`` or its text), on one short line,
    in parentheses; the body is read up to :data:`MAX_ERROR_BYTES`."""
    try:
        raw = exc.read(MAX_ERROR_BYTES) if exc.fp is not None else b""
        text = raw.decode("utf-8", "replace")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = text
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = msg if isinstance(msg, str) else text
    except Exception:  # noqa: BLE001 - a broken error body (reset, bad chunking): fall back to the reason
        text = ""
    text = server_text(text or exc.reason or "", secret)
    return f"({text})" if text else ""
