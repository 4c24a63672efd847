"""Parsing and formatting of human sizes: token lengths (``16k``) and byte counts (``4GiB``).

Every parser here takes untrusted text (command line, config file, spec parameter) and either returns a
bounded positive integer or raises :class:`~longreach.errors.SettingError`: one line naming the value
and the accepted form. Numbers are parsed exactly (no float overflow: a 400-digit length is an error,
not ``inf``), with ASCII digits only.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from .errors import SettingError

#: Largest token length any option or parameter takes (16M tokens: far beyond any model's window).
MAX_LENGTH = 16 * 1024 * 1024
#: Largest memory size (1 PiB).
MAX_BYTES = 1 << 50

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_MAX_TEXT = 1000  # characters of a size given as text (a longer one is refused before it is parsed)
_LENGTH_RE = re.compile(rf"^\s*{_NUMBER}\s*([kKmM]?)\s*$", re.ASCII)
_BYTES_RE = re.compile(rf"^\s*{_NUMBER}\s*([kKmMgGtT]?)(i?)[bB]?\s*$", re.ASCII)


def shown_value(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for one-line error messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + ("...'" if isinstance(value, str) else "...")


def parse_length(text: str | int) -> int:
    """``"16k"`` -> 16384, ``"1M"`` -> 1048576, ``"3000"`` -> 3000 (k = 1024, as context windows are);
    at least 1 and at most :data:`MAX_LENGTH`."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise SettingError(f"not a length: {shown_value(text)} (use e.g. 4096, 16k or 1M)")
    if isinstance(text, int):
        value = Fraction(text)
    else:
        m = _LENGTH_RE.match(text) if len(text) <= _MAX_TEXT else None
        if not m:
            raise SettingError(f"not a length: {shown_value(text)} (use e.g. 4096, 16k or 1M)")
        value = Fraction(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]
    if value.denominator != 1 or value < 1:
        raise SettingError(f"a length is a whole number of tokens >= 1, got {shown_value(text)}")
    if value > MAX_LENGTH:
        raise SettingError(f"length {shown_value(text)} is more than {format_length(MAX_LENGTH)} tokens, "
                           "the largest longreach takes")
    return int(value)


def format_length(n: int) -> str:
    """16384 -> ``"16k"``; lengths that are not multiples of 1024 stay as digits."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def parse_bytes(text: str | int) -> int:
    """``"4GiB"``/``"4G"``/``"4096M"`` -> bytes (binary units); at least 1, at most :data:`MAX_BYTES`."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise SettingError(f"not a memory size: {shown_value(text)} (use e.g. 512M or 4GiB)")
    if isinstance(text, int):
        value = Fraction(text)
    else:
        m = _BYTES_RE.match(text) if len(text) <= _MAX_TEXT else None
        if not m:
            raise SettingError(f"not a memory size: {shown_value(text)} (use e.g. 512M or 4GiB)")
        value = Fraction(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")
    if value < 1:
        raise SettingError(f"a memory size must be at least 1 byte, got {shown_value(text)} (use e.g. 4GiB)")
    if value > MAX_BYTES:
        raise SettingError(f"memory size {shown_value(text)} is more than 1 PiB; use e.g. 64GiB")
    return int(value)


def check_count(value: Any, name: str, low: int = 1, high: int = MAX_LENGTH) -> int:
    """``value`` as an int within ``[low, high]``, else a one-line :class:`SettingError` naming ``name``
    and the bounds (counts such as ``--max-new-tokens`` or ``--chunk-size``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(f"{name} must be a whole number between {low:,} and {high:,}, got {shown_value(value)}")
    if not low <= value <= high:
        raise SettingError(f"{name} must be between {low:,} and {high:,}, got {shown_value(value)}")
    return value


def format_bytes(n: float) -> str:
    """Bytes -> ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
