"""Method specs: the grammar, the registry of methods, and composition into a :class:`Plan`.

Grammar (one parser for the CLI, config files and the Python API)::

    spec   := "none" | method ("+" method)*
    method := NAME [":" param ("," param)*]
    param  := KEY "=" VALUE

``NAME`` is lower-case letters, digits and dashes (``yarn``, ``self-extend``, ``kv-int4``); ``KEY`` is a
Python identifier; ``VALUE`` is any text without ``+ , = :`` or spaces (``4``, ``16k``, ``0.1``,
``true``).  Examples: ``yarn:factor=4``, ``self-extend:window=1024,group=8``, ``yarn:factor=4+kv-int4``.

Every method is a small pydantic dataclass registered with :func:`register`; its fields are its
parameters, validated (and converted from strings) when the spec is resolved.  A method fills one
*slot* of the :class:`Plan`: ``rope`` (inverse frequencies), ``attention`` (an attention function),
``cache`` (a ``Cache`` factory) or ``reader`` (the loop that feeds a document to the model).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import pydantic

from .errors import SpecError
from .units import parse_length

if TYPE_CHECKING:  # pragma: no cover
    from .models import ModelInfo

SLOTS = ("rope", "attention", "cache", "reader")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VALUE_RE = re.compile(r"^[^\s+,=:]+$")


# --------------------------------------------------------------------------------------------- grammar
@dataclasses.dataclass(frozen=True)
class MethodCall:
    """One parsed ``name:key=value,...`` element of a spec, before validation."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params)


def parse_spec(spec: str) -> list[MethodCall]:
    """Parse a spec string into method calls (no registry look-up). ``"none"`` and ``""`` give ``[]``."""
    if not isinstance(spec, str):
        raise SpecError(f"a method spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if text in ("", "none"):
        return []
    calls = []
    for part in text.split("+"):
        part = part.strip()
        if not part:
            raise SpecError(f"empty method in spec {spec!r}: remove the stray '+'")
        name, _, rest = part.partition(":")
        name = name.strip()
        if not NAME_RE.match(name):
            raise SpecError(
                f"bad method name {name!r} in spec {spec!r}: use lower-case letters, digits and dashes"
            )
        params: list[tuple[str, str]] = []
        if _:
            if not rest.strip():
                raise SpecError(f"method {name!r} has ':' but no parameters: write {name}:key=value")
            for item in rest.split(","):
                key, eq, value = (s.strip() for s in item.partition("="))
                if not eq or not KEY_RE.match(key) or not VALUE_RE.match(value):
                    raise SpecError(
                        f"bad parameter {item.strip()!r} for method {name!r}: write key=value, "
                        f"e.g. {name}:factor=4"
                    )
                if key in dict(params):
                    raise SpecError(f"parameter {key!r} given twice for method {name!r}")
                params.append((key, value))
        calls.append(MethodCall(name, tuple(params)))
    return calls


def format_spec(calls: list[MethodCall]) -> str:
    """Inverse of :func:`parse_spec` (canonical text)."""
    return "+".join(str(c) for c in calls) or "none"


# -------------------------------------------------------------------------------------------- methods
#: Field type for token lengths: accepts 16384, "16384", "16k", "1M".
Length = Annotated[int, pydantic.BeforeValidator(parse_length)]


class Method:
    """Base of every method. Subclasses are pydantic dataclasses decorated with :func:`register`.

    Class attributes a method sets:
      ``name``     the registry key used in specs;
      ``slot``     one of :data:`SLOTS`;
      ``paper``    title + link of the paper it implements;
      ``summary``  one line for ``longreach methods``;
      ``extends``  True if the method lets the model read past its native window.
    """

    name: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    extends: ClassVar[bool] = False

    # -- applicability and reach
    def check(self, info: ModelInfo) -> None:
        """Raise :class:`SpecError` (one line) if this method cannot apply to the model."""

    def reach(self, info: ModelInfo) -> int | None:
        """Tokens the model can read with this method (``None`` = unbounded). Default: native window."""
        return info.window

    def kv_cache_bytes(self, info: ModelInfo, tokens: int) -> int | None:
        """cache slot: bytes the cache will hold for ``tokens`` tokens (memory pre-check); None = full."""
        return None

    # -- slot hooks (a method implements the one of its slot)
    def prepare(self, info: ModelInfo, total_tokens: int) -> None:
        """Called by the reader before :meth:`install` with the request's input + max new tokens
        (length-dependent methods such as dynamic-ntk fix their frequencies for the whole request)."""

    def install(self, model: Any, info: ModelInfo) -> Callable[[], None] | None:
        """rope / attention slots: change the model in place; return a function that undoes it."""
        return None

    def make_cache(self, model: Any, info: ModelInfo) -> Any:
        """cache slot: return a fresh ``transformers.Cache`` for one request."""
        raise NotImplementedError

    def make_reader(self) -> Any:
        """reader slot: return the reader object (see :mod:`longreach.readers`)."""
        raise NotImplementedError

    # -- description
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        shown = [(k, v) for k, v in self.params().items() if v != defaults.get(k)]
        return str(MethodCall(self.name, tuple((k, _fmt(v)) for k, v in shown)))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def brings_cache(method: Method) -> bool:
    """True for a non-cache method that supplies its own KV cache (e.g. streaming's evicting cache)."""
    return type(method).make_cache is not Method.make_cache


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type) -> type:
    """Class decorator: make ``cls`` a validated pydantic dataclass and register it under ``cls.name``."""
    if not NAME_RE.match(cls.name or ""):
        raise ValueError(f"method class {cls.__name__} needs a valid `name`")
    if cls.slot not in SLOTS:
        raise ValueError(f"method {cls.name}: slot must be one of {SLOTS}, got {cls.slot!r}")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    if not dataclasses.is_dataclass(cls):
        cls = pydantic.dataclasses.dataclass(cls, config=pydantic.ConfigDict(extra="forbid"))
    REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(REGISTRY)


def _load_builtin_methods() -> None:
    from . import methods  # noqa: F401  (importing registers every built-in method)


def build_method(call: MethodCall) -> Method:
    """Validate one parsed call against the registry."""
    _load_builtin_methods()
    cls = REGISTRY.get(call.name)
    if cls is None:
        valid = ", ".join(["none", *sorted(REGISTRY)])
        raise SpecError(f"unknown method {call.name!r}; valid methods: {valid} (see `longreach methods`)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, _ in call.params:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise SpecError(f"method {call.name!r} has no parameter {key!r}; its parameters: {valid}")
    kwargs = {k: _coerce(v) for k, v in call.params}
    try:
        return cls(**kwargs)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        if where:
            raise SpecError(f"invalid {call.name}:{where}: {err['msg']} (got {err.get('input')!r})") from None
        # a check in __post_init__ across several parameters: its message is the whole story
        raise SpecError(f"invalid parameters for {call.name}: {err['msg'].removeprefix('Value error, ')}") from None
    except ValueError as exc:
        raise SpecError(f"invalid parameters for {call.name!r}: {exc}") from None


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    return value  # pydantic converts numbers and lengths by field type


# ----------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass
class Plan:
    """The validated composition of a spec: at most one method per slot."""

    methods: list[Method]

    @classmethod
    def from_spec(cls, spec: str | Plan | list[Method] | None) -> Plan:
        if isinstance(spec, Plan):
            return spec
        if spec is None:
            return cls([])
        if isinstance(spec, list):
            methods = spec
        else:
            methods = [build_method(c) for c in parse_spec(spec)]
        seen: dict[str, Method] = {}
        for m in methods:
            if m.slot in seen:
                raise SpecError(
                    f"{seen[m.slot].name!r} and {m.name!r} both set the {m.slot} slot; "
                    f"keep one of them (a spec composes at most one {m.slot} method)"
                )
            seen[m.slot] = m
        att, cache = seen.get("attention"), seen.get("cache")
        if att is not None and cache is not None and brings_cache(att):
            raise SpecError(
                f"{att.name!r} keeps its own evicting KV cache, so it cannot be combined with the cache "
                f"method {cache.name!r}; use one of them"
            )
        return cls(list(methods))

    def get(self, slot: str) -> Method | None:
        return next((m for m in self.methods if m.slot == slot), None)

    @property
    def spec(self) -> str:
        return "+".join(str(m) for m in self.methods) or "none"

    @property
    def extends(self) -> bool:
        return any(m.extends for m in self.methods)

    def check(self, info: ModelInfo) -> None:
        for m in self.methods:
            m.check(info)

    def reach(self, info: ModelInfo) -> int | None:
        """How many tokens the model reads with this plan (``None`` = unbounded)."""
        reader = self.get("reader")
        if reader is not None and reader.extends and reader.reach(info) is None:
            return None  # the reader feeds the model piece by piece: input length is unbounded
        reaches = [m.reach(info) for m in self.methods if m.extends]
        if not reaches:
            return info.window
        if any(r is None for r in reaches):
            bounded = [r for r in reaches if r is not None]
            return min(bounded) if bounded else None
        return min(r for r in reaches if r is not None)

    @contextmanager
    def applied(self, model: Any, info: ModelInfo, total_tokens: int | None = None) -> Iterator[None]:
        """Install rope and attention methods on ``model`` for the duration of the block
        (``total_tokens``: the request's input + max new tokens, passed to :meth:`Method.prepare`)."""
        with ExitStack() as stack:
            # rope first: attention methods read the (possibly replaced) rotary frequencies when installed
            for m in sorted(self.methods, key=lambda m: SLOTS.index(m.slot)):
                if m.slot in ("rope", "attention"):
                    if total_tokens is not None:
                        m.prepare(info, total_tokens)
                    undo = m.install(model, info)
                    if undo is not None:
                        stack.callback(undo)
            yield

    def cache_method(self) -> Method | None:
        """The cache slot, else an attention method that brings its own cache (streaming evicts)."""
        m, a = self.get("cache"), self.get("attention")
        if m is None and a is not None and brings_cache(a):
            return a
        return m

    def make_cache(self, model: Any, info: ModelInfo) -> Any:
        m = self.cache_method()
        if m is not None:
            return m.make_cache(model, info)
        from transformers import DynamicCache

        return DynamicCache(config=model.config)

    def kv_cache_bytes(self, info: ModelInfo, tokens: int) -> int:
        """Bytes the KV cache will hold for ``tokens`` tokens under this plan (for the memory pre-check)."""
        from .memory import kv_cache_bytes_full

        m = self.cache_method()
        estimate = m.kv_cache_bytes(info, tokens) if m is not None else None
        return kv_cache_bytes_full(info, tokens) if estimate is None else estimate

    def make_reader(self) -> Any:
        m = self.get("reader")
        if m is not None:
            return m.make_reader()
        from .readers.chunked import ChunkedReader

        return ChunkedReader()


def describe_methods() -> list[dict[str, Any]]:
    """Rows for ``longreach methods``: name, slot, parameters with defaults and types, paper."""
    _load_builtin_methods()
    rows = []
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        params = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            params.append({"name": f.name, "default": default, "type": _type_name(f.type)})
        rows.append(
            {
                "name": name,
                "slot": cls.slot,
                "extends": cls.extends,
                "summary": cls.summary,
                "paper": cls.paper,
                "params": params,
            }
        )
    return rows


def _type_name(t: Any) -> str:
    text = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return re.sub(r"Annotated\[(\w+).*\]", r"\1", str(text))
