"""release_free_memory: memory freed inside the C heap (holes a long prefill leaves) goes back to the OS,
which a plain ``free`` does not do while live blocks sit above the holes. Measured in a fresh interpreter
(the test process' own heap, shaped by every test before, would blur the numbers)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import gc, json
from longreach.memory import release_free_memory, rss_bytes
big, pins = [], []
for _ in range(1500):
    big.append(bytearray(64 * 1024))  # heap blocks: below glibc's mmap threshold
    pins.append(bytearray(600))  # kept alive: the freed blocks become holes inside the heap
before_free = rss_bytes()
del big
gc.collect()
after_free = rss_bytes()
ran = release_free_memory()
print(json.dumps({"ran": ran, "before_free": before_free, "after_free": after_free,
                  "after_trim": rss_bytes(), "pins": len(pins)}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_heap_holes_are_returned_to_the_os():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    r = json.loads(out.stdout)
    held = 1500 * 64 * 1024
    assert r["ran"] is True and r["pins"] == 1500
    assert r["after_free"] - r["after_trim"] >= 0.7 * held, r  # what free() alone kept resident
