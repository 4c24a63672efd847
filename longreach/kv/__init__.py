"""KV-cache compression: ``Cache`` subclasses that really hold fewer bytes.

- :mod:`~longreach.kv.quant`: bit packing, asymmetric uniform and non-uniform (codebook) quantization.
- :mod:`~longreach.kv.base`: :class:`CompressedCache`, one compressed layer per full-attention layer
  (sliding-window layers keep transformers' own bounded layer), ``nbytes()``, query capture hooks.
- :mod:`~longreach.kv.quantized`: KIVI / KVQuant layout layer.
- :mod:`~longreach.kv.rotary`: KVQuant's pre-RoPE keys: rotation table + the pre-hook that fills it.
- :mod:`~longreach.kv.calibrate`: KVQuant's non-uniform datatype: Fisher-weighted k-means codebooks.
- :mod:`~longreach.kv.evict`: score-and-drop layer (SnapKV, H2O, Knorm).
- :mod:`~longreach.kv.cluster`: Chelsea-style chunked soft-matching merge layer.

The methods that build them live in :mod:`longreach.methods.cache`.
"""
