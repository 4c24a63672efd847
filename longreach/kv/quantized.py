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
- ``rotations`` (a :class:`~longreach.kv.rotary.RotationTable`, KVQuant's pre-RoPE keys): keys are
  un-rotated with the cos/sin the model applied to them before they are quantized (per channel, where
  RoPE does not mix the channels' scales across tokens), and re-rotated with the same rows when
  dequantized. Sink and residual stay post-RoPE in full precision; the outliers are pre-RoPE values.
- ``codebooks`` (keys, values; KVQuant's non-uniform datatype): sorted levels in [0, 1] that replace the
  uniform grid (:func:`~longreach.kv.quant.quantize_nuq`); the stored scale is then the range (span).
Attention gets the dequantized keys/values (one layer at a time, freed after the layer), the memory at
rest is the packed form.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from .base import tensor_bytes
from .quant import dequantize, dequantize_nuq, outlier_mask, pack, quantize, quantize_nuq, unpack
from .rotary import RotationTable, rotate, unrotate


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

    def __init__(self, bits: int, group: int = 32, residual: int = 128, sink: int = 0, outliers: float = 0.0,
                 rotations: RotationTable | None = None,
                 codebooks: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.bits, self.group, self.residual, self.sink, self.outliers = bits, group, residual, sink, outliers
        self.rotations = rotations  # shared by the cache's layers of one type; None: keys quantized post-RoPE
        self.codebooks = codebooks  # (keys (L,), values (L,)) float32 levels in [0, 1]; None: uniform
        self.seen = 0
        self.sink_k = self.sink_v = None  # (B, H, s, D)
        self.kq = self.vq = None  # packed codes (B, H, Tq, D * bits / 8) uint8
        self.k_scale = self.k_min = None  # (B, H, Tq / G, D) float16
        self.v_scale = self.v_min = None  # (B, H, Tq, 1) float16
        self.k_out, self.v_out = _Sparse(), _Sparse()

    # -- rotation capture (called by the pre-hook of longreach.kv.rotary before update)
    def observe_rotation(self, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None
                         ) -> None:
        if self.rotations is not None:
            self.rotations.add(self.seen, cos, sin, positions)

    @property
    def shared_state(self) -> tuple:
        """Objects shared with other layers (counted once by ``CompressedCache.nbytes``)."""
        return () if self.rotations is None else (self.rotations,)

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
        if self.rotations is not None:
            self.rotations.reset()
        self.__init__(self.bits, self.group, self.residual, self.sink, self.outliers, self.rotations,
                      self.codebooks)

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
        if self.rotations is not None:  # pre-RoPE: undo the rotation these tokens got (float32)
            lo = self.sink_k.shape[-2] + t0
            k = unrotate(k, *self.rotations.rows(lo, lo + n))  # (B, H, n, D)
        b, h, _, d = k.shape
        kmask, vmask = outlier_mask(k, self.outliers), outlier_mask(v, self.outliers)
        if kmask is not None:
            self.k_out.add(k.to(self.keys.dtype), kmask, t0)
            self.v_out.add(v, vmask, t0)
        g = self.group
        kgroups = k.reshape(b, h, n // g, g, d)  # (B, H, ng, G, D)
        kkeep = None if kmask is None else kmask.reshape(b, h, n // g, g, d)
        if self.codebooks is None:
            kc, ks, km = quantize(kgroups, self.bits, dim=3, keep=kkeep)  # codes (B,H,ng,G,D); ks (B,H,ng,1,D)
            vc, vs, vm = quantize(v, self.bits, dim=-1, keep=vmask)  # codes (B,H,n,D); vs (B,H,n,1)
        else:  # nuq: ks / vs hold the range (span) instead of the step
            kc, ks, km = quantize_nuq(kgroups, self.codebooks[0], dim=3, keep=kkeep)
            vc, vs, vm = quantize_nuq(v, self.codebooks[1], dim=-1, keep=vmask)
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

    def _dequantize(self, codes: torch.Tensor, which: int, scale: torch.Tensor, minimum: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
        if self.codebooks is None:
            return dequantize(codes, scale, minimum, dtype)
        return dequantize_nuq(codes, self.codebooks[which], scale, minimum, dtype)

    def dequantized_keys(self) -> torch.Tensor:
        if self.kq is None:
            return self.keys[:, :, :0]
        b, h, t, _ = self.kq.shape
        codes = unpack(self.kq, self.bits)  # (B, H, Tq, D)
        d = codes.shape[-1]
        grouped = codes.reshape(b, h, t // self.group, self.group, d)  # (B, H, ng, G, D)
        pre = self.rotations is not None
        dense = self._dequantize(grouped, 0, self.k_scale.unsqueeze(3), self.k_min.unsqueeze(3),
                                 torch.float32 if pre else self.keys.dtype)
        dense = self.k_out.apply(dense.reshape(b, h, t, d))  # (B, H, Tq, D)
        if pre:  # re-rotate with the rows these tokens arrived with
            lo = self.sink_k.shape[-2]
            dense = rotate(dense, *self.rotations.rows(lo, lo + t)).to(self.keys.dtype)
        return dense

    def dequantized_values(self) -> torch.Tensor:
        if self.vq is None:
            return self.values[:, :, :0]
        dense = self._dequantize(unpack(self.vq, self.bits), 1, self.v_scale, self.v_min, self.values.dtype)
        return self.v_out.apply(dense)

    def nbytes(self) -> int:
        """Bytes of this layer (the shared rotation table is counted once by the cache)."""
        codebooks = () if self.codebooks is None else self.codebooks
        return (tensor_bytes(self.sink_k, self.sink_v, self.kq, self.vq, self.k_scale, self.k_min,
                             self.v_scale, self.v_min, self.keys, self.values, *codebooks)
                + self.k_out.nbytes() + self.v_out.nbytes())


# ------------------------------------------------------------------------------------ method mixin
class QuantizedMethod:
    """Shared behaviour of the ``kv-int*`` / ``kvquant`` methods (fields: group, residual, sink, outliers;
    ``kvquant`` adds pre_rope and datatype, read here with KIVI's defaults: post-RoPE keys, uniform)."""

    bits: int

    @property
    def _pre_rope(self) -> bool:
        return bool(getattr(self, "pre_rope", False))

    @property
    def _nuq(self) -> bool:
        return getattr(self, "datatype", "uniform") == "nuq"

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
        if self._pre_rope:
            for t in _rotary_types(info):
                if "rope_theta" not in (info.rope.get(t) or {}):
                    raise SpecError(f"{self.name}: pre_rope needs RoPE but {info.name}'s {t} layers have none; "
                                    f"use {self.name}:pre_rope=false")
                if info.rotary_dim(t) != info.head_dim:  # un-rotation assumes head_dim / 2 rotated pairs
                    raise SpecError(f"{self.name}: pre_rope needs RoPE over the whole head but {info.name} "
                                    f"rotates {info.rotary_dim(t)} of {info.head_dim} channels; "
                                    f"use {self.name}:pre_rope=false")

    def modifies_model(self, info) -> bool:
        """Pre-RoPE keys need the rotation-capture hooks for the request."""
        return self._pre_rope

    def install(self, model, info, tokens=None):
        """Before rope / attention methods: nuq calibration (once per model, on the model as loaded) and,
        for pre-RoPE keys, the rotation-capture pre-hooks of one request (returns their undo)."""
        if self._nuq:
            from .calibrate import codebooks_for

            codebooks_for(model, info, self.bits, self.group, self.sink, self.outliers, self._pre_rope)
        if not self._pre_rope:
            return None
        from .rotary import install_rotation_hooks

        return install_rotation_hooks(model)

    def make_cache(self, model, info):
        from .base import CompressedCache

        tables = {}
        if self._pre_rope:
            from .rotary import rotary_source

            tables = {t: RotationTable(rotary_source(model, t)) for t in _rotary_types(info)}  # one per rotary
        books = {}
        if self._nuq:
            from .calibrate import codebooks_for

            books = codebooks_for(model, info, self.bits, self.group, self.sink, self.outliers, self._pre_rope)
        types = info.layer_types
        return CompressedCache(model, lambda i: QuantizedLayer(self.bits, self.group, self.residual, self.sink,
                                                               self.outliers, tables.get(types[i]), books.get(i)))

    def kv_cache_bytes(self, info, tokens: int) -> int:
        from .base import dtype_bytes, split_layers

        full, sliding_bytes = split_layers(info, tokens)
        # flushes leave residual..residual+group-1 tokens in full precision whatever the chunking
        q = max(0, (tokens - min(tokens, self.sink) - self.residual) // self.group * self.group)
        fp = tokens - q
        hd = info.kv_heads * info.head_dim
        per_layer = (
            fp * 2 * hd * dtype_bytes(info)  # sink + residual, keys and values
            + q * 2 * hd * self.bits // 8  # packed codes
            + (q // self.group) * hd * 2 * 2  # key scale + min (float16) per group and channel
            + q * info.kv_heads * 2 * 2  # value scale + min per token
            # sparse outliers: a fraction of each flushed block per head, int32 index + value (rounded per
            # block: chunked prefill may differ by a few entries)
            + 2 * info.kv_heads * round(self.outliers * q * info.head_dim) * (4 + dtype_bytes(info))
            + (2 * (1 << self.bits) * 4 if self._nuq else 0)  # float32 key + value codebooks
        )
        # pre-RoPE: one rotation table per rotary (shared by the layers of its type), compact: an int32
        # position per token (rows, half cos + half sin per token, only when positions do not reproduce them)
        table = len(_rotary_types(info)) * (tokens * 4 + info.head_dim * 2) if self._pre_rope else 0
        return full * per_layer + sliding_bytes + table


def _rotary_types(info) -> list[str]:
    """Layer types whose layers are compressed (all but the sliding-window ones)."""
    return sorted({t for t in info.layer_types if t != "sliding_attention"})
