"""The cost numbers of a cell, from its per-sample records, and side-by-side ratios to a baseline method.

Every sample record carries what the backend measured: ``input_tokens``, ``output_tokens``,
``prefill_seconds``, ``decode_seconds``, ``kv_cache_bytes`` (bytes the cache held at the end of the
request) and ``peak_memory_bytes`` (the process' or device's high-water mark during the request). A
sample that failed, or a backend that cannot measure a number (``openai``: no prefill / decode split, no
memory), leaves it out; a metric no sample measured is ``None``, never 0.

=============================  ==================================================================
``prefill_tokens_per_second``  input tokens / prefill seconds, both summed over the samples
``decode_tokens_per_second``   output tokens / decode seconds, summed over the samples that decoded;
                               compare methods with ``decode_tokens=N`` (every sample decodes N)
``output_tokens_mean``         mean output tokens per sample
``kv_cache_bytes``             max over the samples; ``kv_cache_bytes_mean``: the mean
``kv_cache_bytes_per_token``   mean over the samples of kv_cache_bytes / input_tokens (the cache also
                               holds the decoded tokens, about ``output_tokens`` more)
``peak_memory_bytes``          max over the samples
``added_memory_bytes``         max over the samples of peak - ``start_memory_bytes`` (what the process or
                               allocator held when the request began): the request's own need, without
                               what the harness process already held (generated samples, caches)
=============================  ==================================================================

Readers add their own numbers to a record's ``reader`` (``ReadResult.extra``); a cell summarises them
when present: ``index_seconds_mean`` (rag: building the index / embeddings in the request, 0 when cached),
``hallucinated_quote_rate`` (alr2: unverified quotes / all quotes, summed over the samples) and
``route_decisions`` (route: how many samples took each path).

Task-specific numbers (``ppl``, ``ppl_tail`` of the ``ppl`` task, ``needles`` of ``atc``) come from
:meth:`longreach.bench.task.Task.cell_metrics`. :func:`ratios` divides a cell's numbers by those of the
same (model, task, length) cell of a baseline method: how this project reports speed and memory.
"""

from __future__ import annotations

import statistics
from typing import Any

#: Numbers that :func:`ratios` compares (cell / baseline), in the order tables show them.
RATIO_METRICS = ("score", "ppl", "ppl_tail", "prefill_tokens_per_second", "decode_tokens_per_second",
                 "kv_cache_bytes", "kv_cache_bytes_per_token", "peak_memory_bytes")


def _positive(records: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """Records whose ``keys`` are all numbers > 0 (measured)."""
    return [r for r in records if all(isinstance(r.get(k), (int, float)) and r[k] > 0 for k in keys)]


def cost_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Speed and memory of a cell (see the module docstring for each definition)."""
    pre = _positive(records, "input_tokens", "prefill_seconds")
    dec = _positive(records, "output_tokens", "decode_seconds")
    out = [r["output_tokens"] for r in records if isinstance(r.get("output_tokens"), int)]
    kv = _positive(records, "kv_cache_bytes")
    kv_tok = _positive(kv, "input_tokens")
    peak = _positive(records, "peak_memory_bytes")
    added = [r for r in _positive(peak, "start_memory_bytes") if r["peak_memory_bytes"] >= r["start_memory_bytes"]]
    return {
        "prefill_tokens_per_second": round(sum(r["input_tokens"] for r in pre)
                                           / sum(r["prefill_seconds"] for r in pre), 1) if pre else None,
        "decode_tokens_per_second": round(sum(r["output_tokens"] for r in dec)
                                          / sum(r["decode_seconds"] for r in dec), 2) if dec else None,
        "output_tokens_mean": round(statistics.fmean(out), 2) if out else None,
        "kv_cache_bytes": max(r["kv_cache_bytes"] for r in kv) if kv else None,
        "kv_cache_bytes_mean": round(statistics.fmean(r["kv_cache_bytes"] for r in kv)) if kv else None,
        "kv_cache_bytes_per_token": round(statistics.fmean(r["kv_cache_bytes"] / r["input_tokens"]
                                                           for r in kv_tok), 1) if kv_tok else None,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in peak) if peak else None,
        "added_memory_bytes": max(r["peak_memory_bytes"] - r["start_memory_bytes"] for r in added) if added else None,
        **reader_metrics(records),
    }


def reader_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the readers reported in the records' ``reader`` (see the module docstring); {} when nothing."""
    extra = [r["reader"] for r in records if isinstance(r.get("reader"), dict)]
    out: dict[str, Any] = {}
    idx = [e["index_seconds"] for e in extra if isinstance(e.get("index_seconds"), (int, float))]
    if idx:
        out["index_seconds_mean"] = round(statistics.fmean(idx), 3)
    quoted = [e for e in extra if isinstance(e.get("quotes"), int) and isinstance(e.get("hallucinated"), int)]
    if quoted:
        total = sum(e["quotes"] for e in quoted)
        out["hallucinated_quote_rate"] = round(sum(e["hallucinated"] for e in quoted) / total, 4) if total else None
    routes = [e["route"]["decision"] for e in extra if isinstance(e.get("route"), dict) and "decision" in e["route"]]
    if routes:
        out["route_decisions"] = {d: routes.count(d) for d in sorted(set(routes))}
    return out


def ratio(value: Any, base: Any) -> float | None:
    """``value / base``, or None when either is missing or the base is 0."""
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or base == 0:
        return None
    return value / base


def baseline_index(cells: list[dict[str, Any]], baseline: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The finished cells of method ``baseline``, keyed by (model, task spec, length)."""
    return {(c["model"], c["task_spec"], c["length"]): c for c in cells
            if c["method"] == baseline and c.get("status") == "done"}


def ratios(cells: list[dict[str, Any]], baseline: str = "none",
           metrics: tuple[str, ...] = RATIO_METRICS) -> list[dict[str, Any]]:
    """Copies of ``cells``, each with ``ratios`` = {metric: cell / baseline cell} for the baseline method's
    cell of the same model, task and length (an empty dict where there is none, or the cell is refused).
    E.g. ``kv_cache_bytes`` 0.25 = a cache 4x smaller; ``decode_tokens_per_second`` 1.3 = 1.3x faster."""
    index = baseline_index(cells, baseline)
    out = []
    for c in cells:
        base = index.get((c["model"], c["task_spec"], c["length"]))
        rs = {} if base is None or c.get("status") != "done" else {
            m: r for m in metrics if (r := ratio(c.get(m), base.get(m))) is not None}
        out.append({**c, "ratios": rs, "baseline": baseline if base is not None else None})
    return out
