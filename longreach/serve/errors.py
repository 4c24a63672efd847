"""The OpenAI error object and the server's exception handlers.

Every failure reaches the client as ``{"error": {"message", "type", "param", "code"}}`` with the status
openai-python maps to the right exception class (BadRequestError, NotFoundError, RateLimitError, ...):

==========================================  ======  =========================  ===========================
what                                        status  type                       code
==========================================  ======  =========================  ===========================
a field fails validation (param = its path)  400    invalid_request_error      invalid_value
malformed JSON / not a JSON object           400    invalid_request_error      invalid_json
a spec that does not parse or apply          400    invalid_request_error      invalid_method
prompt + max_tokens beyond the plan's reach  400    invalid_request_error      context_length_exceeded
memory pre-check refuses the request         400    invalid_request_error      memory_limit_exceeded
unknown model name                           404    invalid_request_error      model_not_found
unknown route / wrong HTTP method            404/405 invalid_request_error     not_found / method_not_allowed
queue full (Retry-After header)              429    rate_limit_error           rate_limit_exceeded
request_timeout passed (x-should-retry: no)  504    timeout_error              timeout
server shutting down                         503    server_error               server_shutting_down
anything else (traceback in the log only)    500    server_error               internal_error
==========================================  ======  =========================  ===========================

The guard (:mod:`longreach.serve.guard`) answers 401 / 413 itself in the same shape (:func:`error_body`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LongreachError, MemoryBudgetError, SpecError, TooLongError
from ..units import shown_value

log = logging.getLogger("longreach.serve")

INTERNAL_MESSAGE = ("The server had an error while processing your request; the details are in the "
                    "server's log. Retry, or report it if it persists.")


class APIError(Exception):
    """An answer in the OpenAI error shape: raise it anywhere in a route."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client disconnected while its request waited or ran: there is nobody to answer."""


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` (OpenAI's error object)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def internal_error() -> APIError:
    return APIError(500, INTERNAL_MESSAGE, type="server_error", code="internal_error")


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down; retry on another instance or after it restarts.",
                    type="server_error", code="server_shutting_down")


def timed_out(seconds: float) -> APIError:
    return APIError(504, f"The request did not finish within the server's request timeout ({seconds:g} s); "
                         f"ask for fewer tokens, or start the server with a longer --request-timeout.",
                    type="timeout_error", code="timeout", headers={"x-should-retry": "false"})


def from_longreach(exc: LongreachError, param: str | None = None) -> APIError:
    """The library's one-line errors as 400s: a spec error, a too-long input, a memory refusal, bad input."""
    message = " ".join(str(exc).split())
    if isinstance(exc, SpecError):
        return APIError(400, message, param=param or "method", code="invalid_method")
    if isinstance(exc, TooLongError):
        return APIError(400, message, param=param, code="context_length_exceeded")
    if isinstance(exc, MemoryBudgetError):
        return APIError(400, message, param=param, code="memory_limit_exceeded")
    return APIError(400, message, param=param, code="invalid_value")


#: pydantic's labels for the members of a union (``str``, ``list[int]``, ``constrained-str``, ...)
_UNION_LABEL = re.compile(r"^(constrained-)?(str|int|float|bool|list\[.*\]|dict\[.*\]|function-.*)$")
#: what each union field accepts, for a value that matches none of its types
_ACCEPTS = {"prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
            "stop": "a string or a list of strings", "content": "a string or a list of text parts",
            "seed": "a whole number"}


def _is_label(part: Any) -> bool:
    return isinstance(part, str) and bool(_UNION_LABEL.match(part))


def _field_path(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content`` (union-member labels dropped)."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    text = ""
    for p in parts:
        if isinstance(p, int):
            text += f"[{p}]"
        elif not _is_label(p):
            text += ("." if text else "") + str(p)
    return text or None


def _union_prefix(loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The loc of the union field whose member an error belongs to, or None."""
    for i, part in enumerate(loc):
        if _is_label(part):
            return tuple(loc[:i])
    return None


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 as OpenAI's 400: the first problem, with ``param`` = the field's path."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("The request body is not valid.", code="invalid_request")
    err = errors[0]
    kind = str(err.get("type", ""))
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        return bad_request("We could not parse the JSON body of your request; send a JSON object with "
                           "Content-Type: application/json.", code="invalid_json")
    if loc in (("body",), ()) and kind in ("missing", "model_attributes_type", "dict_type"):
        return bad_request("The request body must be a JSON object (send Content-Type: application/json).",
                           code="invalid_json")
    union = _union_prefix(loc)
    if union is not None:  # a value no member of a union accepts: say what the field takes, or the real problem
        group = [e for e in errors if _union_prefix(tuple(e.get("loc", ()))) == union]
        specific = [e for e in group if not str(e.get("type", "")).endswith("_type")]
        if specific:
            err, kind, loc = specific[0], str(specific[0].get("type", "")), tuple(specific[0].get("loc", ()))
        else:
            param = _field_path(union)
            accepts = _ACCEPTS.get(str(union[-1]) if union else "", "a value of another type")
            return bad_request(f"Invalid type for '{param}': expected {accepts}.", param=param, code="invalid_type")
    param = _field_path(loc)
    msg = " ".join(str(err.get("msg", "invalid value")).removeprefix("Value error, ").split())
    if kind == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    value = err.get("input")
    shown = "" if "input" not in err or isinstance(value, (dict, list)) else f" (got {shown_value(value)})"
    return bad_request(f"Invalid value for '{param}': {msg}{shown}.", param=param)


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to the OpenAI error shape (see the module docstring)."""
    from .guard import Overloaded

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(LongreachError)
    async def _library(request: Request, exc: LongreachError) -> JSONResponse:
        return from_longreach(exc).response()

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        seconds = max(1, int(getattr(exc, "retry_after", 1) or 1))
        return APIError(429, f"The server is busy (its request queue is full); retry after {seconds} s.",
                        type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(seconds)}).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            err = APIError(404, f"Unknown route {request.method} {shown_value(request.url.path, 80)[1:-1]}; this "
                                f"server answers /v1/models, /v1/chat/completions, /v1/completions, /health, "
                                f"/metrics, /tokenize, /detokenize and /tokenizer_info.",
                           code="not_found", headers=headers)
        elif exc.status_code == 405:
            err = APIError(405, f"Method {request.method} is not allowed on {shown_value(request.url.path, 80)[1:-1]}.",
                           code="method_not_allowed", headers=headers)
        else:
            err = APIError(exc.status_code, str(exc.detail), code=None, headers=headers)
        return err.response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return internal_error().response()
