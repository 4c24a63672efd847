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
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import pydantic

from .errors import SpecError
from .registry import Registry
from .units import MAX_LENGTH, parse_length, shown_value

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
    shown = shown_value(spec, 80)
    text = spec.strip()
    if text in ("", "none"):
        return []
    calls = []
    for part in text.split("+"):
        part = part.strip()
        if not part:
            raise SpecError(f"empty method in spec {shown}: remove the stray '+'")
        name, _, rest = part.partition(":")
        name = name.strip()
        if not NAME_RE.match(name):
            raise SpecError(
                f"bad method name {shown_value(name)} in spec {shown}: use lower-case letters, digits and dashes"
            )
        params: list[tuple[str, str]] = []
        if _:
            if not rest.strip():
                raise SpecError(f"method {name!r} has ':' but no parameters: write {name}:key=value")
            for item in rest.split(","):
                key, eq, value = (s.strip() for s in item.partition("="))
                if not eq or not KEY_RE.match(key) or not VALUE_RE.match(value):
                    raise SpecError(
                        f"bad parameter {shown_value(item.strip())} for method {name!r}: write key=value, "
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
#: Field type for token lengths: accepts 16384, "16384", "16k", "1M" (1 to 16M).
Length = Annotated[int, pydantic.BeforeValidator(parse_length)]


def _length_or_zero(value: Any) -> int:
    return 0 if not isinstance(value, bool) and value in (0, "0") else parse_length(value)


#: A length where 0 means "not set" (an eviction ``budget`` of 0 uses the ``ratio`` instead).
LengthOrZero = Annotated[int, pydantic.BeforeValidator(_length_or_zero)]


class Method:
    """Base of every method. Subclasses are pydantic dataclasses decorated with :func:`register`.

    Class attributes a method sets:
      ``name``     the registry key used in specs;
      ``slot``     one of :data:`SLOTS`;
      ``paper``    title + link of the paper it implements;
      ``summary``  one line for ``longreach methods``;
      ``extends``  True if the method lets the model read past its native window;
      ``reuses_prefix``  True if the keys and values the model caches for a token depend only on the
                   tokens up to it (not on the request's length, question or later tokens), so a cache
                   filled for one prompt can serve another prompt with the same prefix (prefix reuse,
                   :mod:`longreach.prefix_cache`). Static rope methods and attention methods that only
                   change how cached keys are read set it; length-dependent rope methods and every cache
                   method (they compress or evict by what comes later) do not.
    """

    name: ClassVar[str] = ""
    slot: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    extends: ClassVar[bool] = False
    reuses_prefix: ClassVar[bool] = False

    # -- applicability and reach
    def check(self, info: ModelInfo) -> None:
        """Raise :class:`SpecError` (one line) if this method cannot apply to the model."""

    def reach(self, info: ModelInfo) -> int | None:
        """Tokens the model can read with this method (``None`` = unbounded). Default: native window."""
        return info.window

    def kv_cache_bytes(self, info: ModelInfo, tokens: int) -> int | None:
        """cache slot: bytes the cache will hold for ``tokens`` tokens (memory pre-check); None = full."""
        return None

    # -- slot hooks (a method implements the one of its slot; only :mod:`longreach.engine` calls them)
    def install(self, model: Any, info: ModelInfo, tokens: int | None = None) -> Callable[[], None] | None:
        """rope / attention / cache slots: change the model in place for one request and return the
        function that undoes it exactly (buffers, attention implementation, hooks). ``tokens``: the
        request's input + max new tokens (length-dependent methods such as dynamic-ntk fix their
        frequencies for the whole request from it; None = unknown). Keep no per-request state on
        ``self``: whatever the request needs lives in closures the undo drops."""
        return None

    def modifies_model(self, info: ModelInfo) -> bool:
        """True when a request under this method changes the shared model (its :meth:`install` does
        something, or a reader probes it); such requests hold the model's lock exclusively."""
        return type(self).install is not Method.install

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


#: Every method class by name; the built-in ones register when :mod:`longreach.methods` is imported.
REGISTRY: Registry[Method] = Registry("method", NAME_RE, SpecError, builtins="longreach.methods",
                                      hint="(see `longreach methods`)")

#: Bounds every numeric parameter of every method is held to before its own checks run (a method's
#: ``__post_init__`` narrows them: rope factors <= 1024, fractions in [0, 1), ...): integers (counts,
#: lengths, layer indices) within +-16M, floats finite and within +-1e12. Nothing sized by a parameter
#: can then overflow a float, a tensor index or the memory pre-check's arithmetic.
MAX_INT_PARAM = MAX_LENGTH
MAX_FLOAT_PARAM = 1e12


def check_numbers(obj: Any) -> None:
    """Raise ValueError (one line, with the bound) for a numeric field of dataclass ``obj`` out of range."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int) and not -MAX_INT_PARAM <= v <= MAX_INT_PARAM:
            raise ValueError(f"{f.name}={shown_value(v)} is out of range; whole-number parameters are at most "
                             f"{MAX_INT_PARAM:,} (16M) in size")
        if isinstance(v, float) and not (math.isfinite(v) and abs(v) <= MAX_FLOAT_PARAM):
            raise ValueError(f"{f.name}={v:g} is out of range; parameters are finite numbers at most 1e12 in size")


def register(cls: type) -> type:
    """Class decorator: make ``cls`` a validated pydantic dataclass and register it under ``cls.name``.

    Float fields refuse ``inf`` and ``nan``; every numeric field is held to :func:`check_numbers`
    before the class's own ``__post_init__`` runs."""
    if not NAME_RE.match(cls.name or ""):
        raise ValueError(f"method class {cls.__name__} needs a valid `name`")
    if cls.slot not in SLOTS:
        raise ValueError(f"method {cls.name}: slot must be one of {SLOTS}, got {cls.slot!r}")

    def convert(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            cls.__post_init__ = bounded_post_init(getattr(cls, "__post_init__", None))
            cls = pydantic.dataclasses.dataclass(cls, config=pydantic.ConfigDict(extra="forbid", allow_inf_nan=False))
        return cls

    return REGISTRY.register(cls, convert)


def bounded_post_init(own: Callable[[Any], None] | None) -> Callable[[Any], None]:
    """A ``__post_init__`` that runs :func:`check_numbers`, then ``own`` (the class's own checks); used by
    :func:`register` and by the task registry."""

    def __post_init__(self: Any) -> None:
        check_numbers(self)
        if own is not None:
            own(self)

    return __post_init__


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(REGISTRY)


def _load_builtin_methods() -> None:
    REGISTRY.load()  # imports longreach.methods once: every built-in method registers itself


def build_method(call: MethodCall) -> Method:
    """Validate one parsed call against the registry."""
    _load_builtin_methods()
    cls = REGISTRY.get(call.name)
    if cls is None:
        valid = ", ".join(["none", *sorted(REGISTRY)])
        raise SpecError(f"unknown method {shown_value(call.name)}; valid methods: {valid} (see `longreach methods`)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, _ in call.params:
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise SpecError(f"method {call.name!r} has no parameter {shown_value(key)}; its parameters: {valid}")
    kwargs = {k: _coerce(v) for k, v in call.params}
    try:
        return cls(**kwargs)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())  # one line, whatever a check wrote
        if where:
            raise SpecError(f"invalid {call.name}:{where}: {msg} (got {shown_value(err.get('input'))})") from None
        # a check in __post_init__ across several parameters: its message is the whole story
        raise SpecError(f"invalid parameters for {call.name}: {msg}") from None
    except ValueError as exc:
        raise SpecError(f"invalid parameters for {call.name!r}: {' '.join(str(exc).split())}") from None


def _coerce(value: str) -> Any:
    """A spec value as text: pydantic converts it by the field's type (numbers, lengths, and booleans
    from true/false, yes/no, on/off, 1/0), so ``factor=yes`` is an error, not 1.0."""
    return value


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
                f"{att.name!r} keeps its own KV cache, so it cannot be combined with the cache "
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

    def held_tokens(self, info: ModelInfo, tokens: int) -> int:
        """Tokens the model holds at once for an input of ``tokens`` (what the memory pre-check sizes): all
        of them, except under a reader with unbounded reach (rag, infiniretri, route, ...), which feeds the
        model one pass at a time, at most the longest single pass (the native window, or what the plan's
        other extending methods reach). Such a reader checks each of its passes again with its real size."""
        reader = self.get("reader")
        if reader is None or not reader.extends or reader.reach(info) is not None:
            return tokens
        return min(tokens, self.pass_span(info))

    def pass_span(self, info: ModelInfo) -> int:
        """Longest single pass of the model: the native window, or what the plan's extending methods other
        than the reader (rope, attention) reach."""
        reaches = [m.reach(info) for m in self.methods if m.extends and m.slot != "reader"]
        bounded = [r for r in reaches if r is not None]
        return min(bounded) if bounded else info.window

    def reuses_prefix(self, info: ModelInfo) -> bool:
        """True when a KV cache filled under this plan for one prompt can be cropped to a shared prefix and
        reused by another prompt (:mod:`longreach.prefix_cache`): every method sets ``reuses_prefix``, no
        method brings a cache (compressing / evicting caches depend on what follows) or a reader, and every
        layer of the model is full attention (a sliding-window layer keeps only its last window, which
        cannot be cropped back to an earlier prefix)."""
        if self.cache_method() is not None or self.get("reader") is not None:
            return False
        if any(t != "full_attention" for t in info.layer_types):
            return False
        return all(m.reuses_prefix for m in self.methods)

    def cache_method(self) -> Method | None:
        """The cache slot, else an attention method that brings its own cache (streaming evicts)."""
        m, a = self.get("cache"), self.get("attention")
        if m is None and a is not None and brings_cache(a):
            return a
        return m

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
