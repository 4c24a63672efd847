"""Memory: estimate a request before allocating it, measure what it really used.

The estimate covers what a request adds on top of the loaded model: the KV cache for every token it
will hold plus the activations of the largest prefill chunk (attention scores, MLP, mask).
"""

from __future__ import annotations

import dataclasses
import os
import resource
from pathlib import Path
from typing import Any

from .errors import MemoryBudgetError
from .units import format_bytes

# Head-room for allocator fragmentation and Python objects on top of the tensor estimate.
SAFETY = 1.25


@dataclasses.dataclass
class Estimate:
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return int((self.kv_cache + self.activations) * SAFETY)


def kv_cache_bytes_full(info: Any, tokens: int) -> int:
    """Bytes of a full-precision KV cache holding ``tokens`` tokens (sliding layers capped at their window)."""
    per_layer_token = 2 * info.kv_heads * info.head_dim * {"float32": 4}.get(info.dtype, 2)
    total = 0
    for kind in info.layer_types:
        held = min(tokens, info.sliding_window) if kind == "sliding_attention" and info.sliding_window else tokens
        total += held * per_layer_token
    return total


def activation_bytes(info: Any, chunk: int, context: int) -> int:
    """Peak activations of one prefill chunk of ``chunk`` queries over ``context`` keys (one layer at a time)."""
    f = 4  # computations and masks are accounted in float32, the worst case
    scores = info.heads * chunk * context * f  # attention probabilities if the math kernel is used
    mask = chunk * context * f
    intermediate = getattr(info, "intermediate", None) or 4 * info.hidden
    mlp = 3 * chunk * intermediate * f
    hidden = 6 * chunk * info.hidden * f
    logits = info.vocab * f * 2
    return scores + mask + mlp + hidden + logits


def estimate_request(info: Any, tokens: int, chunk: int, kv_bytes: int | None = None) -> Estimate:
    kv = kv_cache_bytes_full(info, tokens) if kv_bytes is None else kv_bytes
    return Estimate(kv_cache=kv, activations=activation_bytes(info, min(chunk, tokens), tokens))


def available_bytes() -> int:
    """Memory this process can still take: MemAvailable, capped by a cgroup limit when there is one."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 1 << 40
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            avail = min(avail, int(limit) - current)
    except (OSError, ValueError):
        pass
    return avail


def check_fits(estimate: Estimate, tokens: int, limit: int | None = None) -> None:
    """Refuse, with the numbers, a request whose estimate exceeds the memory available (or ``limit``)."""
    budget = available_bytes() if limit is None else limit
    if estimate.total > budget:
        raise MemoryBudgetError(
            f"{tokens:,} tokens need about {format_bytes(estimate.total)} "
            f"(KV cache {format_bytes(estimate.kv_cache)} + activations {format_bytes(estimate.activations)}) "
            f"but only {format_bytes(budget)} is available; use a smaller input, a smaller --chunk-size, "
            f"or a KV-compressing / retrieval method"
        )


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak resident memory of this process during a block.

    On Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``) and read at
    the end (``VmHWM``); elsewhere it falls back to the lifetime peak (``ru_maxrss``).
    """

    def __enter__(self) -> PeakMemory:
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass
        self.start_rss = rss_bytes()
        self.peak = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak = self._hwm()

    def _hwm(self) -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cache_bytes(cache: Any) -> int:
    """Bytes a transformers ``Cache`` really holds (its own ``nbytes()`` when it defines one)."""
    if cache is None:
        return 0
    if hasattr(cache, "nbytes") and callable(cache.nbytes):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total
