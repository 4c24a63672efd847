"""KIVI / KVQuant cache layer: packed low-bit keys (per channel) and values (per token).

Layout of one layer (B = batch, H = KV heads, D = head dim, G = group, R = residual)::

    [ sink (fp) | quantized groups (packed codes + float16 scale/min) | residual (fp, R..R+G-1 tokens) ]

- Keys are quantized per CHANNEL: min/max over each group of G consecutive tokens, one (scale, min) per
  (group, channel); values per TOKEN: one (scale, min) per token over its D channels.
- The most recent R..R+G-1 tokens stay in full precision; whenever the residual reaches R + G tokens,
  its oldest whole groups are quantized and the full-precision copies freed.
- ``sink`` first tokens stay in full precision (KVQuant's attention-sink rule).
- ``outliers`` (fraction) of each flushed block's largest-magnitude entries stay exact in a sparse list
  (dense-and-sparse); the dense part's range excludes them.
Attention gets the dequantized keys/values (one layer at a time, freed after the layer), the memory at
rest is the packed form.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .base import tensor_bytes
from .quant import dequantize, outlier_mask, pack, quantize, unpack


class _Sparse:
    """Exact entries of a (B, H, T, D) store, indexed token-major so the index survives appends."""

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None  # (N,) int64 flat index t * (B*H*D) + (b*H + h) * D + d
        self.value: torch.Tensor | None = None  # (N,)

    def add(self, block: torch.Tensor, mask: torch.Tensor, t0: int) -> None:
        b, h, _, d = block.shape
        bi, hi, ti, di = mask.nonzero(as_tuple=True)
        flat = (ti + t0) * (b * h * d) + (bi * h + hi) * d + di  # (N,) int64
        vals = block[bi, hi, ti, di]
        if self.index is not None:
            flat, vals = torch.cat([self.index.long(), flat]), torch.cat([self.value, vals])
        small = flat.numel() == 0 or int(flat.max()) < 2**31
        self.index = flat.to(torch.int32) if small else flat  # int32 while it fits: 4 bytes an outlier
        self.value = vals

    def apply(self, dense: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return dense
        b, h, _, d = dense.shape
        index = self.index.long()
        t, rest = index // (b * h * d), index % (b * h * d)
        return dense.index_put_((rest // d // h, rest // d % h, t, rest % d), self.value.to(dense.dtype))

    def nbytes(self) -> int:
        return tensor_bytes(self.index, self.value)


class QuantizedLayer(DynamicLayer):
    """One full-attention layer of a KIVI-layout quantized cache (see module docstring)."""

    def __init__(self, bits: int, group: int = 32, residual: int = 128, sink: int = 0, outliers: float = 0.0):
        super().__init__()
        self.bits, self.group, self.residual, self.sink, self.outliers = bits, group, residual, sink, outliers
        self.seen = 0
        self.sink_k = self.sink_v = None  # (B, H, s, D)
        self.kq = self.vq = None  # packed codes (B, H, Tq, D * bits / 8) uint8
        self.k_scale = self.k_min = None  # (B, H, Tq / G, D) float16
        self.v_scale = self.v_min = None  # (B, H, Tq, 1) float16
        self.k_out, self.v_out = _Sparse(), _Sparse()

    # -- transformers layer interface
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        empty = key_states[:, :, :0]  # (B, H, 0, D)
        self.keys, self.values = empty.clone(), value_states[:, :, :0].clone()
        self.sink_k, self.sink_v = empty.clone(), value_states[:, :, :0].clone()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        take = max(0, min(self.sink - self.sink_k.shape[-2], key_states.shape[-2]))
        if take:
            self.sink_k = torch.cat([self.sink_k, key_states[:, :, :take]], dim=-2)
            self.sink_v = torch.cat([self.sink_v, value_states[:, :, :take]], dim=-2)
            key_states, value_states = key_states[:, :, take:], value_states[:, :, take:]
        keys = torch.cat([self.sink_k, self.dequantized_keys(), self.keys, key_states], dim=-2)  # (B, H, T, D)
        values = torch.cat([self.sink_v, self.dequantized_values(), self.values, value_states], dim=-2)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._flush()
        return keys, values

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a quantized cache cannot be cropped")

    def reset(self) -> None:
        self.__init__(self.bits, self.group, self.residual, self.sink, self.outliers)

    # -- quantized store
    @property
    def quantized_tokens(self) -> int:
        return 0 if self.kq is None else self.kq.shape[-2]

    def _flush(self) -> None:
        """Quantize the oldest whole groups of the residual so that R..R+G-1 tokens stay full precision."""
        tr = self.keys.shape[-2]
        n = (tr - self.residual) // self.group * self.group
        if n <= 0:
            return
        k, v = self.keys[:, :, :n], self.values[:, :, :n]  # (B, H, n, D)
        t0 = self.quantized_tokens
        b, h, _, d = k.shape
        kmask, vmask = outlier_mask(k, self.outliers), outlier_mask(v, self.outliers)
        if kmask is not None:
            self.k_out.add(k, kmask, t0)
            self.v_out.add(v, vmask, t0)
        g = self.group
        kgroups = k.reshape(b, h, n // g, g, d)  # (B, H, ng, G, D)
        kkeep = None if kmask is None else kmask.reshape(b, h, n // g, g, d)
        kc, ks, km = quantize(kgroups, self.bits, dim=3, keep=kkeep)  # codes (B,H,ng,G,D); ks (B,H,ng,1,D)
        vc, vs, vm = quantize(v, self.bits, dim=-1, keep=vmask)  # codes (B,H,n,D); vs (B,H,n,1)
        kp, vp = pack(kc.reshape(b, h, n, d), self.bits), pack(vc, self.bits)
        self.kq = kp if self.kq is None else torch.cat([self.kq, kp], dim=-2)
        self.vq = vp if self.vq is None else torch.cat([self.vq, vp], dim=-2)
        ks, km = ks.squeeze(3), km.squeeze(3)  # (B, H, ng, D)
        self.k_scale = ks if self.k_scale is None else torch.cat([self.k_scale, ks], dim=-2)
        self.k_min = km if self.k_min is None else torch.cat([self.k_min, km], dim=-2)
        self.v_scale = vs if self.v_scale is None else torch.cat([self.v_scale, vs], dim=-2)
        self.v_min = vm if self.v_min is None else torch.cat([self.v_min, vm], dim=-2)
        # clone: a slice would keep the whole full-precision buffer alive
        self.keys, self.values = self.keys[:, :, n:].clone(), self.values[:, :, n:].clone()

    def dequantized_keys(self) -> torch.Tensor:
        if self.kq is None:
            return self.keys[:, :, :0]
        b, h, t, _ = self.kq.shape
        codes = unpack(self.kq, self.bits)  # (B, H, Tq, D)
        d = codes.shape[-1]
        grouped = codes.reshape(b, h, t // self.group, self.group, d)  # (B, H, ng, G, D)
        dense = dequantize(grouped, self.k_scale.unsqueeze(3), self.k_min.unsqueeze(3), self.keys.dtype)
        return self.k_out.apply(dense.reshape(b, h, t, d))

    def dequantized_values(self) -> torch.Tensor:
        if self.vq is None:
            return self.values[:, :, :0]
        dense = dequantize(unpack(self.vq, self.bits), self.v_scale, self.v_min, self.values.dtype)
        return self.v_out.apply(dense)

    def nbytes(self) -> int:
        return (tensor_bytes(self.sink_k, self.sink_v, self.kq, self.vq, self.k_scale, self.k_min,
                             self.v_scale, self.v_min, self.keys, self.values)
                + self.k_out.nbytes() + self.v_out.nbytes())


# ------------------------------------------------------------------------------------ method mixin
class QuantizedMethod:
    """Shared behaviour of the ``kv-int*`` / ``kvquant`` methods (fields: group, residual, sink, outliers)."""

    bits: int

    def _validate(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ValueError(f"bits must be 2, 4 or 8, got {self.bits}")
        if self.group < 1 or self.residual < 0 or self.sink < 0:
            raise ValueError("group must be >= 1, residual and sink >= 0")
        if not 0.0 <= self.outliers < 0.5:
            raise ValueError(f"outliers is a fraction in [0, 0.5), got {self.outliers}")

    def check(self, info) -> None:
        from ..errors import SpecError

        per = 8 // self.bits
        if info.head_dim % per:
            raise SpecError(f"{self.name}: head dim {info.head_dim} is not a multiple of {per}; use kv-int8")

    def make_cache(self, model, info):
        from .base import CompressedCache

        return CompressedCache(model, lambda i: QuantizedLayer(self.bits, self.group, self.residual,
                                                               self.sink, self.outliers))

    def kv_cache_bytes(self, info, tokens: int) -> int:
        from .base import dtype_bytes, split_layers

        full, sliding_bytes = split_layers(info, tokens)
        fp = min(tokens, self.sink + self.residual + self.group - 1)
        q = tokens - fp
        hd = info.kv_heads * info.head_dim
        per_layer = (
            fp * 2 * hd * dtype_bytes(info)  # sink + residual, keys and values
            + q * 2 * hd * self.bits // 8  # packed codes
            + (q // self.group) * hd * 2 * 2  # key scale + min (float16) per group and channel
            + q * info.kv_heads * 2 * 2  # value scale + min per token
            + int(q * 2 * hd * self.outliers) * (4 + dtype_bytes(info))  # sparse outliers
        )
        return full * per_layer + sliding_bytes
