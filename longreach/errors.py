"""User-facing errors: one line that names the problem and the fix.

Anything raised as a :class:`LongreachError` is printed by the CLI as a single line with a non-zero
exit code and no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LongreachError(Exception):
    """An error caused by the user's input (file, question, spec, model name, memory)."""

    exit_code = 2
    #: a failure that may pass (memory, a transient server failure): a sweep retries it on its next run
    retryable = False


class SpecError(LongreachError):
    """A method spec that does not parse, names an unknown method or carries invalid parameters."""


class InputError(LongreachError):
    """A document or question that cannot be read (missing, empty, binary, not UTF-8)."""


class SettingError(LongreachError, ValueError):
    """An option or parameter value that does not parse or is out of range (a count, a length, a memory
    size). Also a ValueError, so a pydantic validator reports it against the field that holds it."""


class ModelError(LongreachError):
    """An unknown model name, or a model folder / file that cannot be loaded."""


class TooLongError(LongreachError):
    """The input is longer than the model can read with the chosen methods. ``needed`` / ``reach``: tokens
    the request needs and the plan reads; ``suggestion``: a method spec checked to read it, or None."""

    def __init__(self, message: str, needed: int | None = None, reach: int | None = None,
                 suggestion: str | None = None):
        super().__init__(message)
        self.needed, self.reach, self.suggestion = needed, reach, suggestion


class MemoryBudgetError(LongreachError):
    """The estimated memory of a request exceeds what is available."""

    exit_code = 3
    retryable = True
