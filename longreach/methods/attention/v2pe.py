"""V2PE on text: the document advances positions by delta < 1 per token, the question by 1."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from ...kv.base import add_attention_pre_hooks, question_start
from ...qk import rotary_inputs
from ...spec import register
from ..rope.base import ALL_TYPES, find_rotary, require_rope, rotary_slots
from .base import SLIDING, AttentionMethod, layer_type

#: smallest increment: 1/1024 of a position (a 1024x longer document than the window, as MAX_FACTOR)
MIN_DELTA = 1 / 1024


def v2pe_positions(index: torch.Tensor, delta: float, context_end: int | None) -> torch.Tensor:
    """Fractional positions of the tokens at ``index`` (any shape, long), float32.

    V2PE's rule, p_i = p_{i-1} + (delta if token i is a document token else 1), p_0 = 0, with the
    tokens before ``context_end`` the document (None: every token is): token i sits at
    ``delta * min(i, e) + max(0, i - e)`` with ``e = context_end - 1`` (the steps that land on document
    tokens). Computed in float64, returned as float32 (what the rotary module multiplies in).
    """
    i = index.to(torch.float64)
    if context_end is None:
        return (i * delta).to(torch.float32)
    e = float(max(context_end - 1, 0))
    return (delta * torch.clamp(i, max=e) + torch.clamp(i - e, min=0.0)).to(torch.float32)


class V2PECache(DynamicCache):
    """transformers' ``DynamicCache`` that also knows where the document ends (``context_end``, a token
    index; None: the whole input is document). The reader calls :meth:`prepare` with the prompt and the
    question (``Session.make_cache``), as it does for question-agnostic compressing caches."""

    def __init__(self, config: Any):
        super().__init__(config=config)
        self.context_end: int | None = None

    def prepare(self, tokenizer: Any, prompt: str, ids: list[int], question: str) -> None:
        start = question_start(tokenizer, prompt, ids, question)
        self.context_end = len(ids) if start is None else start  # question not found: all the prompt is read


@register
class V2PE(AttentionMethod):
    """V2PE applied to text (Ge et al., "V2PE: Improving Multimodal Long-Context Capability of Vision-
    Language Models with Variable Visual Position Encoding", https://arxiv.org/abs/2412.09616).

    V2PE gives visual tokens a position increment delta < 1 while text tokens keep 1, so a long image
    sequence spends less of the trained position range. Here the document plays the visual tokens'
    part: each document token advances the position by ``delta``, the question (and the chat-template
    tail, the answer prefix and every generated token) by 1: p_i = p_{i-1} + (delta | 1), p_0 = 0.
    Positions are fractional: a forward pre-hook on each attention module replaces the rotary
    (cos, sin) the module applies with the model's own rotary module evaluated at the fractional
    positions (float32 angles, the live inverse frequencies and attention factor, so a rope method
    next to it composes: ``yarn:factor=2+v2pe``), so keys enter the cache rotated at their fractional
    position and the model's attention implementation runs unchanged (causality by token index).

    Where the document ends: the method brings its cache (:class:`V2PECache`); the readers hand it the
    prompt and the question (``ask``, the harness), and it starts the question at the question's last
    occurrence in the prompt. Without a question (``loglik``, raw completions) every token, generated
    ones included, advances by delta (position interpolation by 1/delta). Because it brings its cache it
    does not combine with a cache method. Gemma 3's sliding-window layers keep integer positions: they
    never see a distance beyond their window, and compressing their local distances would only blur
    word order there. delta = 1 is exactly ``none``.

    Reach: about native window / delta tokens of document (the question's step-1 tokens take
    (1 - delta) positions each beyond that).

    Parameters:
      delta: position increment per document token, 1/1024 <= delta <= 1 (default 0.5).
    """

    name = "v2pe"
    paper = ("V2PE: Improving Multimodal Long-Context Capability of Vision-Language Models with Variable "
             "Visual Position Encoding, https://arxiv.org/abs/2412.09616")
    summary = "document tokens advance the position by delta < 1, the question by 1 (fractional RoPE)"
    extends = True

    delta: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delta) and MIN_DELTA <= self.delta <= 1):
            raise ValueError(f"delta must be a number from {MIN_DELTA:g} (1/1024) to 1, got {self.delta:g}")

    def check(self, info: Any) -> None:
        require_rope(info, "v2pe", full_head=False)  # fractional positions through the model's own rotary

    def reach(self, info: Any) -> int:
        return int(info.window / self.delta)

    def make_cache(self, model: Any, info: Any) -> V2PECache:
        return V2PECache(model.config)

    def install(self, model: Any, info: Any, tokens: int | None = None) -> Callable[[], None]:
        self.check(info)
        return add_attention_pre_hooks(model, self.position_hook(model))

    def position_hook(self, model: Any) -> Callable[..., Any]:
        """The pre-hook that moves a full-attention layer's rotary (cos, sin) to V2PE positions."""
        rotary = find_rotary(model)
        shared = ALL_TYPES in rotary_slots(rotary)
        delta = self.delta
        last: dict[str, tuple[Any, Any, tuple[torch.Tensor, torch.Tensor]]] = {}  # per layer type, one forward

        def v2pe_positions_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            kind = layer_type(module)
            if kind == SLIDING:
                return None
            cos, _ = rotary_inputs(args, kwargs)
            index = kwargs.get("position_ids")
            if cos is None or index is None:
                raise RuntimeError("v2pe needs the rotary position_embeddings and position_ids at each attention "
                                   "module (transformers' Llama / Gemma 3 layout); run requests through "
                                   "longreach.Engine")
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            end = cache.context_end if isinstance(cache, V2PECache) else None
            seen = last.get(kind)
            if seen is not None and seen[0] is index and seen[1] == end:  # the other layers of this forward
                emb = seen[2]
            else:
                pos = v2pe_positions(index, delta, end)  # (B, T) float32
                with torch.no_grad():
                    emb = rotary(cos, pos, **({} if shared else {"layer_type": kind}))  # (B, T, D) each
                last[kind] = (index, end, emb)
            if "position_embeddings" in kwargs:
                return args, {**kwargs, "position_embeddings": emb}
            return (args[0], emb, *args[2:]), kwargs

        return v2pe_positions_hook
