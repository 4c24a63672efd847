"""One registry type for everything looked up by name: methods, benchmark tasks, bench backends.

A :class:`Registry` maps a name to a class, refuses a bad or duplicate name when the class registers,
loads its built-in entries on first use (``builtins``: the package whose import registers them, so the
registry's own module never imports the layer above it), and turns an unknown name into a one-line error
listing the valid ones. It reads like the dict it replaces (``name in r``, ``r[name]``, ``sorted(r)``,
``r.items()``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import LongreachError

T = TypeVar("T")

class Registry(Generic[T]):
    """Name -> class, for one kind of thing (``kind``: "method", "task", "backend")."""

    def __init__(self, kind: str, name_re: re.Pattern[str], error: type[LongreachError],
                 builtins: str | None = None, hint: str = ""):
        self.kind = kind
        self.name_re = name_re
        self.error = error
        self.builtins = builtins
        self.hint = hint  # appended to the unknown-name error, e.g. "(see `longreach methods`)"
        self._entries: dict[str, type[T]] = {}
        self._loaded = builtins is None

    # -- registration
    def register(self, cls: type[T], convert: Callable[[type[T]], type[T]] | None = None) -> type[T]:
        """Register ``cls`` under ``cls.name`` (``convert``: e.g. make it a pydantic dataclass first)."""
        name = getattr(cls, "name", "")
        if not isinstance(name, str) or not self.name_re.match(name):
            raise ValueError(f"{self.kind} class {cls.__name__} needs a valid `name`, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if convert is not None:
            cls = convert(cls)
        self._entries[name] = cls
        return cls

    def pop(self, name: str, default: type[T] | None = None) -> type[T] | None:
        """Remove and return an entry (tests that register throw-away classes)."""
        return self._entries.pop(name, default)

    def load(self) -> None:
        """Import the built-in entries once (their modules call :meth:`register` when imported)."""
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.builtins)  # type: ignore[arg-type]

    # -- look-up
    def get(self, name: str, default: type[T] | None = None) -> type[T] | None:
        """The class registered as ``name``, else ``default`` (as ``dict.get``)."""
        self.load()
        return self._entries.get(name, default)

    def lookup(self, name: str) -> type[T]:
        """The class registered as ``name``; an unknown name is a one-line error listing the valid ones."""
        self.load()
        cls = self._entries.get(name)
        if cls is None:
            hint = f" {self.hint}" if self.hint else ""
            raise self.error(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}{hint}")
        return cls

    def names(self) -> list[str]:
        self.load()
        return sorted(self._entries)

    # -- the dict it replaces
    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __getitem__(self, name: str) -> type[T]:
        self.load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def items(self) -> list[tuple[str, type[T]]]:
        return [(n, self._entries[n]) for n in self.names()]

    def values(self) -> list[type[T]]:
        return [self._entries[n] for n in self.names()]

