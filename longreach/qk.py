"""Queries and keys of any Hugging Face causal LM's attention module, recomputed from its input.

Readers and cache hooks that score tokens by attention (InfiniRetri, SnapKV, H2O) recompute a layer's
queries and keys from the hidden states the module receives, through the module's own weights:

* separate projections ``q_proj`` / ``k_proj`` (Llama, Gemma 3, Qwen2 with biases, Qwen3, Mistral);
* one fused ``qkv_proj`` (Phi-3): queries, then keys, then values along the last dimension;
* one fused ``c_attn`` (GPT-2, a ``Conv1D``): query, key, value of ``hidden`` channels each;

then the per-head RMS norms when the module has them (``q_norm`` / ``k_norm``: Gemma 3, Qwen3) and
RoPE with the (cos, sin) the model hands the module (``position_embeddings``). Partial rotary (cos
narrower than the head: Phi-4-mini rotates 3/4 of each head) rotates the first channels only, as
transformers does; a model without RoPE (GPT-2: no ``position_embeddings``) is not rotated.
"""

from __future__ import annotations

from typing import Any

import torch

PROJECTIONS = (("q_proj", "k_proj"), ("qkv_proj",), ("c_attn",))


def is_attention(module: Any) -> bool:
    """True for a decoder self-attention module whose queries and keys :func:`project_qk` can recompute."""
    if not (hasattr(module, "layer_idx") and hasattr(module, "head_dim")):
        return False
    if getattr(module, "is_cross_attention", False):
        return False
    return any(all(hasattr(module, p) for p in names) for names in PROJECTIONS)


def attention_modules(model: Any) -> list[Any]:
    """The self-attention module of every decoder layer, in layer order (``self_attn``, GPT-2's ``attn``)."""
    found = [m for m in model.modules() if is_attention(m)]
    return sorted(found, key=lambda m: m.layer_idx)


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, T, n * D) -> (B, n, T, D)."""
    b, t, _ = x.shape
    return x.view(b, t, -1, head_dim).transpose(1, 2)


def _heads(module: Any) -> tuple[int, int]:
    """(query heads, key-value heads) of an attention module."""
    cfg = module.config
    heads = cfg.num_attention_heads
    kv = getattr(module, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None) or heads
    return heads, kv


def _projection(module: Any, hidden: torch.Tensor, which: str) -> torch.Tensor:
    """The ``which`` ("q" or "k") projection of ``hidden`` (B, T, hidden) -> (B, T, n * D), before heads."""
    own = getattr(module, f"{which}_proj", None)
    if own is not None:
        return own(hidden)
    d = module.head_dim
    if hasattr(module, "qkv_proj"):  # Phi-3: one fused projection [q | k | v]
        heads, kv = _heads(module)
        lo, hi = (0, heads * d) if which == "q" else (heads * d, (heads + kv) * d)
        return module.qkv_proj(hidden)[..., lo:hi]
    e = module.embed_dim  # GPT-2: c_attn = [q | k | v], embed_dim each
    lo = 0 if which == "q" else e
    return module.c_attn(hidden)[..., lo:lo + e]


def project_q(module: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE queries of ``hidden`` (B, T, hidden) -> (B, H, T, D), normed when the module norms them."""
    q = _split_heads(_projection(module, hidden, "q"), module.head_dim)  # (B, H, T, D)
    return module.q_norm(q) if hasattr(module, "q_norm") else q


def project_k(module: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Pre-RoPE keys of ``hidden`` (B, T, hidden) -> (B, Hkv, T, D), normed when the module norms them."""
    k = _split_heads(_projection(module, hidden, "k"), module.head_dim)  # (B, Hkv, T, D)
    return module.k_norm(k) if hasattr(module, "k_norm") else k


def project_qk(module: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries (B, H, T, D), keys (B, Hkv, T, D)) before RoPE, as the module computes them."""
    return project_q(module, hidden), project_k(module, hidden)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    """RoPE as transformers applies it: x (B, n, T, D), cos / sin (B, 1, T, R) with R <= D rotated
    channels (R < D: partial rotary, the rest passes through); ``cos`` None (no RoPE): x unchanged."""
    if cos is None or sin is None:
        return x
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    out = rot * cos + rotate_half(rot) * sin
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def rotary_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (cos, sin) an attention module is called with, (B, T, R) each, or (None, None) without RoPE."""
    emb = kwargs.get("position_embeddings")
    if emb is None and len(args) > 1 and isinstance(args[1], tuple):
        emb = args[1]
    return (None, None) if emb is None else (emb[0], emb[1])


def hidden_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden states an attention module is called with (keyword or first positional argument)."""
    hidden = kwargs.get("hidden_states")
    return hidden if hidden is not None else (args[0] if args else None)
