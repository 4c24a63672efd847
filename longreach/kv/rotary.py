"""Pre-RoPE keys in a post-RoPE cache: the rotation table and the hook that fills it (KVQuant).

transformers rotates keys before ``Cache.update`` and passes no cos/sin to the cache. A forward
pre-hook on each attention module (:func:`install_rotation_hooks`, like the query hook of
:mod:`longreach.kv.base`; installed for one request and removed by its undo) reads the ``position_embeddings`` (cos, sin) the module is about to apply to
the current tokens (and their ``position_ids``) and hands them to the compressed layer
(``layer.observe_rotation``), which appends them to a :class:`RotationTable` shared by every compressed
layer of the same type (one per distinct rotary: Gemma 3 compresses its full-attention layers only).

transformers' layout pairs channel i with i + D/2: ``cos = cat(f, f) * a`` (angles f, attention factor
a: 1, or YaRN's temperature), so one half of cos and of sin holds everything::

    rotate(x)   = x * C + rotate_half(x) * S                      C = cat(c, c), S = cat(s, s)
    unrotate(y) = (y * C - rotate_half(y) * S) / (c^2 + s^2)      exact inverse, also when a != 1

Storage, two modes (both give back exactly the rows the model applied):
- positions (compact, 4 bytes a token): when the table knows the rotary that made the rows (``source``:
  its inverse frequencies and attention factor, snapshot at the first rows) and every batch of rows
  equals, bit for bit, ``cos(p * inv_freq) * a`` recomputed in float32 as transformers does at the
  ``position_ids`` p, only the positions are kept and rows are recomputed when read.
- rows: otherwise (no source, no ``position_ids``, or rows that differ: positions remapped by an
  attention method, a rotary with another formula), the half cos / half sin rows themselves,
  (Bc, N, D/2) each in the dtype they arrived in; a table that finds a mismatch switches to rows for
  good (earlier rows are recomputed from the snapshot, which matched them when they arrived).

A model whose attention modules get no ``position_embeddings`` (no rotary) leaves the table empty:
reading rows it does not hold raises :class:`RotationError` (one line; use ``pre_rope=false``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import LongreachError
from .base import CompressedCache, add_attention_pre_hooks, rotate_half, tensor_bytes


class RotationError(LongreachError):
    """Pre-RoPE quantization found no rotary cos/sin for tokens it has to un-rotate."""


def _full(half: torch.Tensor) -> torch.Tensor:
    return torch.cat((half, half), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE in float32: ``x`` (..., T, D), ``cos``/``sin`` halves (..., T, D/2) broadcastable."""
    xf, c, s = x.float(), _full(cos.float()), _full(sin.float())
    return xf * c + rotate_half(xf) * s


def unrotate(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rotate` (float32), dividing by ``cos^2 + sin^2`` (the attention factor squared)."""
    yf, c, s = y.float(), cos.float(), sin.float()
    norm = _full(c * c + s * s)  # (..., T, D)
    return (yf * _full(c) - rotate_half(yf) * _full(s)) / norm


def unrotate_grad(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Gradient wrt the pre-RoPE key from the gradient ``g`` wrt the rotated key: ``(a R)^T g``."""
    gf = g.float()
    return gf * _full(cos.float()) - rotate_half(gf) * _full(sin.float())


class RotationTable:
    """The rotation of every token a cache received, in arrival order (token index = row); see module doc.

    ``source()`` returns the current (inv_freq (D/2,), attention factor) of the rotary that produces the
    rows (None: rows mode only).
    """

    def __init__(self, source: Callable[[], tuple[torch.Tensor, float]] | None = None):
        self.source = source
        self.freq: torch.Tensor | None = None  # (D/2,) float32 snapshot at the first rows
        self.factor = 1.0
        self.dtype: torch.dtype | None = None  # dtype of the rows the model applied
        self.positions: torch.Tensor | None = None  # (Bc, N) int32, positions mode
        self.cos: torch.Tensor | None = None  # (Bc, N, D/2), rows mode
        self.sin: torch.Tensor | None = None

    def __len__(self) -> int:
        if self.positions is not None:
            return self.positions.shape[-1]
        return 0 if self.cos is None else self.cos.shape[-2]

    @property
    def compact(self) -> bool:
        return self.cos is None

    def add(self, start: int, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None
            ) -> None:
        """Rows of tokens ``start ..`` from the module's (cos, sin), (Bc, T, D) each, at ``positions``
        (Bc, T); rows held already (another layer of the same type added them in this forward) are skipped."""
        have, t = len(self), cos.shape[-2]
        if start + t <= have:
            return
        if start > have:
            raise RotationError(f"rotation rows for tokens {have}..{start - 1} were never seen (a layer skipped "
                                "the rotation hook); use pre_rope=false")
        half = cos.shape[-1] // 2
        c, s = cos[..., have - start:, :half], sin[..., have - start:, :half]  # (Bc, new, D/2)
        self.dtype = c.dtype
        if self.compact and positions is not None and self._matches(c, s, positions[..., have - start:]):
            p = positions[..., have - start:].to(torch.int32)  # (Bc, new)
            self.positions = p.clone() if self.positions is None else torch.cat([self.positions, p], dim=-1)
            return
        if self.compact and self.positions is not None:  # switch to rows: recompute the ones held (exact)
            self.cos, self.sin = self._recompute(self.positions)
            self.positions = self.freq = None
        if self.cos is None:
            self.cos, self.sin = c.clone(), s.clone()
        else:
            self.cos, self.sin = torch.cat([self.cos, c], dim=-2), torch.cat([self.sin, s], dim=-2)

    def _matches(self, c: torch.Tensor, s: torch.Tensor, positions: torch.Tensor) -> bool:
        if self.source is None or positions.shape[-1] != c.shape[-2]:
            return False
        if self.freq is None:
            freq, factor = self.source()
            if freq.shape[-1] != c.shape[-1]:
                return False
            self.freq, self.factor = freq.detach().to(device=c.device, dtype=torch.float32).clone(), float(factor)
        rc, rs = self._recompute(positions)
        return rc.shape == c.shape and torch.equal(rc, c) and torch.equal(rs, s)

    def _recompute(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Half cos / sin at ``positions`` (Bc, n), as transformers' rotary computes them: (Bc, n, D/2)."""
        freqs = positions[..., None].float() * self.freq  # (Bc, n, D/2) float32
        return (freqs.cos() * self.factor).to(self.dtype), (freqs.sin() * self.factor).to(self.dtype)

    def rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) halves of tokens lo..hi-1, (Bc, 1, hi - lo, D/2) each (broadcast over heads)."""
        if hi > len(self):
            raise RotationError(f"pre-RoPE quantization has no rotary cos/sin for tokens {len(self)}..{hi - 1}: "
                                "the attention modules received no position_embeddings (a model without RoPE "
                                "or an unsupported attention module); use pre_rope=false")
        if self.compact:
            c, s = self._recompute(self.positions[:, lo:hi])
            return c[:, None], s[:, None]
        return self.cos[:, None, lo:hi], self.sin[:, None, lo:hi]

    def reset(self) -> None:
        self.__init__(self.source)

    def nbytes(self) -> int:
        return tensor_bytes(self.positions, self.freq, self.cos, self.sin)


def rotary_source(model: Any, layer_type: str) -> Callable[[], tuple[torch.Tensor, float]] | None:
    """``source`` for a :class:`RotationTable`: reads the inverse frequencies and attention factor of the
    model's rotary module for ``layer_type`` (public buffers, as the rope methods do); None if not found."""
    from ..rotary import ALL_TYPES, RopeInstallError, find_rotary, rotary_slots

    try:
        module = find_rotary(model)
    except RopeInstallError:
        return None
    slots = rotary_slots(module)
    slot = slots.get(ALL_TYPES) or slots.get(layer_type)
    if slot is None:
        return None
    return lambda: (getattr(module, slot[0]), float(getattr(module, slot[1])))


def _capture_rotations(module: Any, args: tuple, kwargs: dict) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not isinstance(cache, CompressedCache):
        return
    observe = getattr(cache.layers[module.layer_idx], "observe_rotation", None)
    emb = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
    if observe is None or emb is None:
        return
    cos, sin = emb  # (B, T, D) each, about to be applied to this call's keys
    observe(cos, sin, kwargs.get("position_ids"))  # (B, T) or None


def install_rotation_hooks(model: Any) -> Callable[[], None]:
    """Register the rotation-capture pre-hook on every attention module; return the undo removing them.

    It does nothing unless the call's cache is a :class:`CompressedCache` whose layer observes rotations.
    """
    return add_attention_pre_hooks(model, _capture_rotations)
