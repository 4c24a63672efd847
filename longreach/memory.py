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


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a dtype given by name (``"bfloat16"``, ``"torch.float32"``) or as a torch dtype."""
    import torch

    if not isinstance(dtype, torch.dtype):
        dtype = getattr(torch, str(dtype).replace("torch.", ""), None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else 4


def kv_bytes_per_layer_token(info: Any) -> int:
    """Bytes one full-precision cache layer holds per token: keys + values of every KV head."""
    return 2 * info.kv_heads * info.head_dim * dtype_bytes(info.dtype)


def kv_layer_tokens(info: Any, layer_type: str, tokens: int) -> int:
    """Tokens a full-precision cache layer of ``layer_type`` holds after ``tokens`` tokens: all of them,
    or for a sliding-window layer the last ``window - 1`` (what transformers' sliding layer keeps: the
    next query adds itself)."""
    if layer_type == "sliding_attention" and info.sliding_window:
        return min(tokens, max(1, info.sliding_window - 1))
    return tokens


def kv_cache_bytes_full(info: Any, tokens: int) -> int:
    """Bytes of a full-precision KV cache (``DynamicCache``) after ``tokens`` tokens: the one count every
    estimate builds on (sliding layers capped by :func:`kv_layer_tokens`)."""
    return sum(kv_layer_tokens(info, kind, tokens) for kind in info.layer_types) * kv_bytes_per_layer_token(info)


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
    """What one request adds on top of the loaded model, on any device.

    The weights are already resident (in RAM, or in GPU memory where :func:`available_bytes` no longer
    counts them as free), so only the KV cache and one chunk's activations are estimated.
    """
    kv = kv_cache_bytes_full(info, tokens) if kv_bytes is None else kv_bytes
    return Estimate(kv_cache=kv, activations=activation_bytes(info, min(chunk, tokens), tokens))


def available_bytes(device: Any = None) -> int:
    """Memory a request on ``device`` can still take.

    CPU (``None``, the default): MemAvailable, capped by a cgroup limit when there is one. CUDA: the
    device's free memory (``torch.cuda.mem_get_info``) plus what torch's caching allocator holds reserved
    but unused (free for torch, not for the driver). MPS: the recommended working set minus what the
    driver has allocated, capped by the system's available memory (unified memory).
    """
    kind = _device_type(device)
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    if kind == "mps":
        import torch

        mps_free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        return max(0, min(int(mps_free), _system_available_bytes()))
    return _system_available_bytes()


def _device_type(device: Any) -> str:
    """'cpu' / 'cuda' / 'mps' of a torch.device, a device string ('cuda:1') or None (the CPU)."""
    if device is None:
        return "cpu"
    return getattr(device, "type", None) or str(device).partition(":")[0]


def _system_available_bytes() -> int:
    """MemAvailable, capped by a cgroup limit when there is one."""
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


def check_fits(estimate: Estimate, tokens: int, limit: int | None = None, device: Any = None) -> None:
    """Refuse, with the numbers, a request whose estimate exceeds the memory available on ``device``
    (the CPU by default) or ``limit``."""
    budget = available_bytes(device) if limit is None else limit
    if estimate.total > budget:
        where = "is available" if limit is not None or _device_type(device) == "cpu" else f"is free on {device}"
        raise MemoryBudgetError(
            f"{tokens:,} tokens need about {format_bytes(estimate.total)} "
            f"(KV cache {format_bytes(estimate.kv_cache)} + activations {format_bytes(estimate.activations)}) "
            f"but only {format_bytes(budget)} {where}; use a smaller input, a smaller --chunk-size, "
            f"or a KV-compressing / retrieval method"
        )


_LIBC: Any = None


def release_free_memory() -> bool:
    """Hand memory that was freed but kept by the C allocator back to the OS (glibc ``malloc_trim(0)``):
    a long prefill's activations would otherwise stay resident after the request. True when it ran; a
    no-op elsewhere (other libcs, macOS, Windows). Takes milliseconds; call it when idle."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak memory of this process during a block: resident memory, or GPU memory for a CUDA ``device``.

    CPU (default): on Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``)
    and read at the end (``VmHWM``); elsewhere it falls back to the lifetime peak (``ru_maxrss``).
    CUDA: torch's allocator peak (``max_memory_allocated``, weights included, as RSS includes them),
    reset at the start.

    ``start``: what the process (CPU) or the allocator (CUDA) held when the block began, so ``added``
    (``peak - start``) is what the block itself needed on top: in a long-lived process (a bench sweep, a
    server) the peak also counts memory held from earlier work (generated samples, caches).
    """

    def __init__(self, device: Any = None) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if _device_type(self.device) == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.reset, self.start_rss, self.peak = True, rss_bytes(), 0
            self.start = int(torch.cuda.memory_allocated(self.device))
            return self
        self.reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            pass
        self.start_rss = rss_bytes()
        self.start = self.start_rss
        self.peak = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        if _device_type(self.device) == "cuda":
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self.peak = self._hwm()

    @property
    def added(self) -> int:
        """Bytes the block needed above what was held at its start (0 when the peak is not above it)."""
        return max(0, self.peak - self.start)

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
