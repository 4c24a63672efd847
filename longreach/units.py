"""Parsing and formatting of human sizes: token lengths (``16k``) and byte counts (``4GiB``)."""

from __future__ import annotations

import re

_LENGTH_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*$")


def parse_length(text: str | int) -> int:
    """``"16k"`` -> 16384, ``"1M"`` -> 1048576, ``"3000"`` -> 3000 (k = 1024, as context windows are)."""
    if isinstance(text, bool):
        raise ValueError(f"not a length: {text!r}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"a length must be positive, got {text}")
        return text
    m = _LENGTH_RE.match(str(text))
    if not m:
        raise ValueError(f"not a length: {text!r} (use e.g. 4096, 16k or 1M)")
    number, unit = float(m.group(1)), m.group(2).lower()
    value = number * {"": 1, "k": 1024, "m": 1024**2}[unit]
    if value != int(value) or value <= 0:
        raise ValueError(f"not a whole positive length: {text!r}")
    return int(value)


def format_length(n: int) -> str:
    """16384 -> ``"16k"``; lengths that are not multiples of 1024 stay as digits."""
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def parse_bytes(text: str | int) -> int:
    """``"4GiB"``/``"4G"``/``"4096M"`` -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _BYTES_RE.match(str(text))
    if not m:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 512M or 4GiB)")
    number, unit = float(m.group(1)), m.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def format_bytes(n: float) -> str:
    """Bytes -> ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
