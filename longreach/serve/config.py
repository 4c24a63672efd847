"""The server's settings: one validated object built by ``longreach serve`` (or a test) and read by the
app, its guards and the launcher."""

from __future__ import annotations

import ipaddress

import pydantic

from ..errors import SettingError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeConfig(pydantic.BaseModel):
    """What ``longreach serve`` was started with (see ``longreach serve --help``)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    served_name: str | None = None  # the model id clients send; default: the loaded model's name
    method: str = "none"  # the default method spec (a request may choose another)
    host: str = "127.0.0.1"
    port: int = pydantic.Field(8000, ge=0, le=65535)  # 0: any free port (tests)
    api_key: pydantic.SecretStr | None = None  # bearer key; required for a non-loopback host
    max_queue: int = pydantic.Field(16, ge=0, le=100_000)  # requests waiting beyond the running ones; more -> 429
    max_running: int = pydantic.Field(1, ge=1, le=64)  # requests on the model at once (worker threads)
    request_timeout: float = pydantic.Field(600.0, gt=0, le=86400)  # seconds per request, queue wait included
    max_body_bytes: int = pydantic.Field(64 * 2**20, ge=1024)  # request body limit -> 413
    kv_reuse_bytes: int = pydantic.Field(2 * 2**30, ge=0)  # document KV reuse LRU budget; 0 = off
    kv_reuse_min_tokens: int = pydantic.Field(256, ge=1)  # shorter shared prefixes are not worth a copy
    memory_limit: int | None = pydantic.Field(None, ge=1)  # bytes; None = what the device has available
    chunk_size: int = pydantic.Field(2048, ge=1)  # prefill chunk in tokens
    default_max_tokens: int = pydantic.Field(256, ge=1)  # chat completions without max_tokens
    drain_seconds: float = pydantic.Field(30.0, ge=0, le=3600)  # on SIGTERM: time in-flight requests get

    def check_exposure(self) -> None:
        """A server reachable from other machines must ask for a key (one-line error otherwise)."""
        if not is_loopback_host(self.host) and self.api_key is None:
            raise SettingError(f"--host {self.host} makes the server reachable from other machines; give "
                               f"--api-key KEY (or $LONGREACH_API_KEY) too, or bind 127.0.0.1")

    def __repr__(self) -> str:  # the key never appears in logs or tracebacks (SecretStr prints ******)
        return f"ServeConfig({', '.join(f'{k}={v!r}' for k, v in self)})"
