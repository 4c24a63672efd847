"""The compressed cache container, byte accounting and query capture.

:class:`CompressedCache` is a transformers ``Cache`` whose full-attention layers are compressed layers
(built by a factory) and whose sliding-window layers (Gemma 3: window 512) stay transformers'
``DynamicSlidingWindowLayer``: they are already bounded by their window, so compressing them would save
little and break the window mask.

Position handling: the reader passes explicit ``position_ids``, so RoPE is applied at true positions
before a key enters the cache; a compressed layer may hold fewer entries than tokens seen. Its
``get_seq_length`` returns the entries it hands to attention, so the causal mask (built from
``get_mask_sizes``) lines up with the returned keys: every cached entry is in the past of the new queries.

Scores that need queries (SnapKV, H2O) get them from a forward pre-hook on each attention module
(:func:`install_query_hooks`, installed by the engine for one request and removed by its undo): it
recomputes only the requested query rows from the hidden states with the module's own projection (and
``q_norm`` when present; any architecture, :mod:`longreach.qk`) and rotary ``position_embeddings`` (none
on a model without RoPE); the model keeps its attention implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from ..qk import apply_rope, project_q, rotary_inputs
from ..qk import attention_modules as qk_attention_modules


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def layer_nbytes(layer: Any) -> int:
    """Bytes one cache layer really holds."""
    if hasattr(layer, "nbytes"):
        return int(layer.nbytes())
    return tensor_bytes(getattr(layer, "keys", None), getattr(layer, "values", None))


class CompressedCache(Cache):
    """A cache with one compressed layer per full-attention layer and plain sliding-window layers.

    ``make_layer(layer_idx)`` builds the compressed layer. ``context_end`` (absolute token count, set by
    :meth:`set_context_end`) marks where the document ends and the question starts: question-agnostic
    compression never scores with, nor evicts, tokens at or after it.
    """

    def __init__(self, model: Any, make_layer: Callable[[int], Any]):
        cfg = model.config.get_text_config(decoder=True)
        n = cfg.num_hidden_layers
        types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * n)
        layers = [
            DynamicSlidingWindowLayer(sliding_window=cfg.sliding_window) if t == "sliding_attention"
            else make_layer(i)
            for i, t in enumerate(types)
        ]
        super().__init__(layers=layers)
        self.context_end: int | None = None
        self.question_aware = True  # evicting methods set False: compress as if the question were unknown

    def prepare(self, tokenizer: Any, prompt: str, ids: list[int], question: str) -> None:
        """Called by the reader before prefill: mark where the question starts (question-agnostic mode)."""
        self.set_context_end(None if self.question_aware else question_start(tokenizer, prompt, ids, question))

    def set_context_end(self, tokens: int | None) -> None:
        self.context_end = tokens
        for layer in self.layers:
            if hasattr(layer, "context_end"):
                layer.context_end = tokens

    def nbytes(self) -> int:
        """Bytes held by every layer (packed codes, scales, outliers, full-precision parts, scores) and,
        once, by what layers share (``layer.shared_state``: kvquant's rotation table)."""
        shared = {id(s): s for layer in self.layers for s in getattr(layer, "shared_state", ())}
        return sum(layer_nbytes(layer) for layer in self.layers) + sum(int(s.nbytes()) for s in shared.values())


def question_start(tokenizer: Any, prompt: str, ids: list[int], question: str) -> int | None:
    """Index in ``ids`` of the first token of the question's last occurrence in ``prompt`` (None: absent).

    Everything from there on (question, chat-template tail, answer prefix) is the "ask" part.
    """
    q = question.strip()
    at = prompt.rfind(q) if q else -1
    if at < 0:
        return None
    try:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        before = sum(1 for start, _ in enc["offset_mapping"] if start < at)
        return before + (len(ids) - len(enc["input_ids"]))  # BOS added by encode()
    except (NotImplementedError, KeyError, TypeError):  # slow tokenizer: no offsets
        return len(tokenizer(prompt[:at], add_special_tokens=False).input_ids) + (
            len(ids) - len(tokenizer(prompt, add_special_tokens=False).input_ids))


# --------------------------------------------------------------------------------- byte estimates
def dtype_bytes(info: Any) -> int:
    from ..memory import dtype_bytes as element_bytes

    return element_bytes(info.dtype)


def split_layers(info: Any, tokens: int) -> tuple[int, int]:
    """(full-attention layers, bytes of the sliding layers at full precision for ``tokens`` tokens);
    sliding layers are transformers' own, counted as :func:`longreach.memory.kv_cache_bytes_full` does."""
    from ..memory import kv_bytes_per_layer_token, kv_layer_tokens

    full = sum(1 for t in info.layer_types if t != "sliding_attention")
    held = sum(kv_layer_tokens(info, t, tokens) for t in info.layer_types if t == "sliding_attention")
    return full, held * kv_bytes_per_layer_token(info)


def kept_tokens(tokens: int, ratio: float, budget: int) -> int:
    """Entries a ratio / budget compressor keeps out of ``tokens``."""
    if budget:
        return min(tokens, budget)
    return min(tokens, math.ceil((1.0 - ratio) * tokens))


# --------------------------------------------------------------------------------- query capture
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _capture_queries(module: Any, args: tuple, kwargs: dict) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not isinstance(cache, CompressedCache):
        return
    layer = cache.layers[module.layer_idx]
    rows_for = getattr(layer, "query_rows", None)
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if rows_for is None or hidden is None:
        return
    rows = rows_for(hidden.shape[1])
    if rows is None:
        return
    q = project_q(module, hidden[:, rows])  # (B, Hq, r, D): any architecture (longreach.qk)
    cos, sin = rotary_inputs(args, kwargs)  # (B, c, R) each; None without RoPE (GPT-2)
    if cos is not None:
        q = apply_rope(q, cos[:, rows].unsqueeze(1), sin[:, rows].unsqueeze(1))  # (B, 1, r, R) rows
    layer.observe(q * module.scaling, rows.start)


def install_query_hooks(model: Any) -> Callable[[], None]:
    """Register the query-capture pre-hook on every attention module; return the undo that removes them.

    The hook does nothing unless the call's cache is a :class:`CompressedCache` whose layer asks for
    query rows (other requests running at the same time are unaffected).
    """
    return add_attention_pre_hooks(model, _capture_queries)


def attention_modules(model: Any) -> list[Any]:
    """The attention modules of ``model``, in layer order (any architecture: :func:`longreach.qk.attention_modules`)."""
    return qk_attention_modules(model)


def add_attention_pre_hooks(model: Any, hook: Callable[..., Any]) -> Callable[[], None]:
    """Register ``hook`` (a kwargs pre-hook) on every attention module; return the undo removing them."""
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attention_modules(model)]

    def undo() -> None:
        for handle in handles:
            handle.remove()
        handles.clear()

    return undo


def attention_probs(q: torch.Tensor, keys: torch.Tensor, first_index: int, block: int = 256) -> torch.Tensor:
    """Attention mass each key receives from the (pre-scaled) queries, summed over queries.

    ``q`` (B, Hq, r, D) are rows whose cache indices start at ``first_index``; ``keys`` (B, Hkv, T, D).
    Causal: row j sees keys 0..first_index + j. Returns (B, Hkv, T) float32, averaged over the query
    heads of each key head (GQA group).
    """
    b, hq, r, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    g = hq // hkv
    k = keys.float().unsqueeze(2)  # (B, Hkv, 1, T, D)
    out = torch.zeros(b, hkv, t, dtype=torch.float32, device=keys.device)
    col = torch.arange(t, device=keys.device)  # (T,)
    for lo in range(0, r, block):
        qb = q[:, :, lo:lo + block].float().view(b, hkv, g, -1, d)  # (B, Hkv, g, rb, D)
        logits = qb @ k.transpose(-1, -2)  # (B, Hkv, g, rb, T)
        rows = first_index + lo + torch.arange(qb.shape[3], device=keys.device)  # (rb,)
        logits = logits.masked_fill(col[None, :] > rows[:, None], -torch.inf)
        out += logits.softmax(dim=-1).sum(dim=3).mean(dim=2)
    return out
