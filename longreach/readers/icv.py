"""ICV reader: an in-context vector computed from the document's demonstrations steers the model instead of them.

Paper: "In-context Vectors: Making In Context Learning More Effective and Controllable Through Latent Space
Steering", Liu et al. 2023 (arXiv 2311.06668).

1. **Parse** the document into a preamble (every line that is not part of a demonstration, e.g. the list of
   labels) and demonstration pairs (:func:`parse_demonstrations`, layouts in :data:`LAYOUTS`).
2. **Vector**: one forward pass per pair over ``x_i + y_i`` (``"Sentence: ...\\nLabel:" + " crimson-ancient"``;
   plain text with BOS, the outer plan's other methods installed). Each decoder layer's output at the last
   token of ``x_i`` and at the last token of ``x_i + y_i`` gives the difference d_i,l (a second pass over
   ``x_i`` alone when its tokens are not a prefix of the pair's). Per layer l, the first principal direction
   u_l of the differences (PCA: SVD of the centred (n, hidden) matrix; with one pair, the difference's own
   direction), its sign turned towards the mean difference, scaled by the mean difference's projection on
   it: ``v_l = (mean_i d_i,l . u_l) u_l`` (hidden-state units: ``strength=1`` adds the typical shift once).
   The vector (layers, hidden) is kept in memory per (document hash, model, plan), so a sweep of
   questions over one document computes it once (:func:`vector_for`).
3. **Steer and answer**: a forward hook on every chosen decoder layer adds ``strength * v_l`` to its output
   at every position (prompt and decoded tokens) and rescales each hidden state to its norm before the
   addition (:func:`steer`); the prompt is the preamble + ``demos`` of the demonstrations (the most
   relevant to the question first: :func:`rank_demos`) + the question. The hooks are removed in a
   ``finally``: the model is exactly as loaded after the read.

A document without demonstration pairs: with ``fallback`` (default) a plain read of the whole document
(``extra["icv"]["pairs"] = 0`` and the reason under ``"fallback"``), else a one-line :class:`InputError`.
``extra["icv"]``: ``pairs``, ``demos`` (kept in the prompt), ``layers``, ``prompt_tokens``, ``vector_seconds``
(0 when cached), ``cached``, ``vector_tokens``. ``input_tokens`` = the prompt's tokens + the tokens of the
vector passes when they ran in this request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..answers import strip_instruction
from ..errors import InputError, SpecError
from ..prompt import encode
from ..qk import attention_modules
from ..retrieval.bm25 import lucene_idf, stopwords, terms
from ..spec import Plan
from . import EngineLike, ReadResult, Request
from .chunked import ChunkedReader
from .route import full_text, materialize

# ------------------------------------------------------------------------------------- demonstrations
#: "Key: x" then "Label: y" on the next line (many-label-icl writes "Sentence: ..." / "Label: ...")
_BLOCK = re.compile(r"^(?P<k1>Sentence|Input|Text|Question|Q)\s*:[ \t]*(?P<x>\S[^\n]*)\n"
                    r"(?P<k2>Label|Output|Answer|A)\s*:[ \t]*(?P<y>\S[^\n]*)$", re.MULTILINE | re.IGNORECASE)
#: one "x => y" pair per line
_ARROW = re.compile(r"^[ \t]*(?P<x>\S[^\n]*?)[ \t]*=>[ \t]*(?P<y>\S[^\n]*?)[ \t]*$", re.MULTILINE)
LAYOUTS = ("'Sentence: <text>' / 'Input: <text>' followed by a 'Label: <label>' line (many-label-icl's layout; "
           "also Text/Question/Q and Output/Answer/A), or one '<text> => <label>' pair per line")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One demonstration: the input ``x``, its label ``y``, and the texts of a forward pass."""

    x: str
    y: str
    prompt: str  # x with its label cue, e.g. "Sentence: I saw ...\nLabel:"
    completion: str  # " y"
    text: str  # the demonstration as it stands in the document


@dataclasses.dataclass(frozen=True)
class Demonstrations:
    """A document split into its preamble (every other line, in order) and its demonstration pairs."""

    preamble: str
    pairs: tuple[Pair, ...]

    def document(self, chosen: list[int] | None = None) -> str:
        """The preamble + the demonstrations ``chosen`` (indices, shown in document order)."""
        keep = sorted(chosen or [])
        parts = [self.preamble.strip(), *(self.pairs[i].text for i in keep)]
        return "\n\n".join(p for p in parts if p)


def parse_demonstrations(text: str) -> Demonstrations:
    """Split ``text`` into a preamble and demonstration pairs (layouts: :data:`LAYOUTS`); InputError (one
    line) when there is no pair."""
    spans: list[tuple[int, int, Pair]] = []
    for m in _BLOCK.finditer(text):
        k1, k2, x, y = m["k1"], m["k2"], m["x"].strip(), m["y"].strip()
        spans.append((m.start(), m.end(), Pair(x, y, f"{k1}: {x}\n{k2}:", f" {y}", m.group(0))))
    taken = [(a, b) for a, b, _ in spans]
    for m in _ARROW.finditer(text):
        if not any(a <= m.start() < b for a, b in taken):
            x, y = m["x"].strip(), m["y"].strip()
            spans.append((m.start(), m.end(), Pair(x, y, f"{x} =>", f" {y}", m.group(0).strip())))
    if not spans:
        raise InputError(f"no demonstration pairs found in the document; icv / dynaicl expect {LAYOUTS}")
    spans.sort(key=lambda s: s[0])
    rest, last = [], 0
    for a, b, _ in spans:
        rest.append(text[last:a])
        last = b
    rest.append(text[last:])
    preamble = "\n".join(line for line in "".join(rest).splitlines() if line.strip())
    return Demonstrations(preamble, tuple(p for _, _, p in spans))


def rank_demos(demos: Demonstrations, query: str) -> list[int]:
    """Pair indices, the most relevant to ``query`` first: the idf-weighted overlap of their input's terms with
    the query's (stop words dropped; ties keep document order)."""
    stop = stopwords()
    docs = [set(terms(p.x, stop)) for p in demos.pairs]
    q = set(terms(strip_instruction(query), stop))
    df: dict[str, int] = {}
    for d in docs:
        for t in d & q:
            df[t] = df.get(t, 0) + 1
    idf = dict(zip(df, lucene_idf(np.array(list(df.values())), len(docs)))) if df else {}
    scores = [sum(idf.get(t, 0.0) for t in d & q) for d in docs]
    return sorted(range(len(docs)), key=lambda i: (-scores[i], i))


# ------------------------------------------------------------------------------------------ the model
def decoder_layers(model: Any) -> list[Any]:
    """Every decoder layer of a Hugging Face causal LM, in order: the parent of each self-attention module
    (``model.layers[i]``, GPT-2's ``transformer.h[i]``)."""
    attn = {id(m) for m in attention_modules(model)}
    names = [n for n, m in model.named_modules() if id(m) in attn]
    layers = [model.get_submodule(n.rsplit(".", 1)[0]) for n in names if "." in n]
    if not layers:
        raise SpecError(f"icv found no decoder layers in {type(model).__name__}")
    return layers


def parse_layers(spec: str) -> tuple[int, int] | None:
    """``all`` -> None; ``A-B`` -> (A, B) inclusive; ``N`` -> (N, N). ValueError (one line) otherwise."""
    if spec == "all":
        return None
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
        raise ValueError(f"layers={spec!r} must be all, a layer index N or a range A-B (0-based, inclusive, A <= B)")
    return int(m[1]), int(m[2] if m[2] is not None else m[1])


def resolve_layers(spec: str, n_layers: int) -> list[int]:
    """The layer indices ``spec`` names on a model of ``n_layers``; SpecError (one line) past its last layer."""
    span = parse_layers(spec)
    if span is None:
        return list(range(n_layers))
    if span[1] >= n_layers:
        raise SpecError(f"icv layers={spec} is past the model's last layer ({n_layers - 1}); use all or a range "
                        f"within 0-{n_layers - 1}")
    return list(range(span[0], span[1] + 1))


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def capture(layers: list[Any]) -> Iterator[list[torch.Tensor | None]]:
    """Forward hooks that keep each layer's latest output (1, T, hidden) while the block runs; removed after."""
    box: list[torch.Tensor | None] = [None] * len(layers)

    def make(i: int) -> Callable[..., None]:
        def hook(module: Any, args: Any, out: Any) -> None:
            box[i] = _output(out).detach()

        return hook

    handles = [layer.register_forward_hook(make(i)) for i, layer in enumerate(layers)]
    try:
        yield box
    finally:
        for h in handles:
            h.remove()


def steered(hidden: torch.Tensor, v: torch.Tensor, strength: float) -> torch.Tensor:
    """``hidden`` (B, T, H) + ``strength * v`` (H,), each position rescaled to its norm before the addition."""
    h = hidden.float()  # (B, T, H)
    norm = h.norm(dim=-1, keepdim=True)  # (B, T, 1)
    moved = h + strength * v.float()  # (B, T, H)
    return (moved * (norm / moved.norm(dim=-1, keepdim=True).clamp_min(1e-12))).to(hidden.dtype)


@contextmanager
def steer(model: Any, vector: torch.Tensor, strength: float, layers: list[int]) -> Iterator[None]:
    """Forward hooks adding ``strength * vector[l]`` (then the norm rescale, :func:`steered`) to the output
    of decoder layer l for every l in ``layers`` (none for ``strength`` 0); removed when the block ends, even
    on an error."""
    blocks = decoder_layers(model)
    handles = []

    def make(v: torch.Tensor) -> Callable[..., Any]:
        def hook(module: Any, args: Any, out: Any) -> Any:
            h = steered(_output(out), v, strength)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    try:
        for layer in layers if strength else []:  # strength 0: no hook at all (an exact control)
            v = vector[layer].to(device=_output_device(blocks[layer]))  # (H,)
            handles.append(blocks[layer].register_forward_hook(make(v)))
        yield
    finally:
        for h in handles:
            h.remove()


def _output_device(module: Any) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def principal_vector(diffs: torch.Tensor) -> torch.Tensor:
    """The in-context vector of one layer from the differences (n, H): the first principal direction of the
    centred differences (SVD), signed towards their mean and scaled by the mean's projection on it; (H,)."""
    d = diffs.double()  # (n, H)
    mean = d.mean(0)  # (H,)
    centred = d - mean
    if d.shape[0] < 2 or float(centred.norm()) <= 1e-9 * max(1.0, float(d.norm())):
        u = mean / mean.norm().clamp_min(1e-12)  # one pair (or all alike): the difference's own direction
    else:
        u = torch.linalg.svd(centred, full_matrices=False).Vh[0]  # (H,)
    scale = float(mean @ u)
    if scale < 0:
        u, scale = -u, -scale
    return (scale * u).float()


@torch.inference_mode()
def pair_differences(engine: EngineLike, plan: Plan, pairs: tuple[Pair, ...]) -> tuple[torch.Tensor, int]:
    """The differences (n, layers, H) float32 on CPU: each decoder layer's output at the last token of
    ``x + y`` minus at the last token of ``x``; and the tokens read."""
    tok = engine.tokenizer
    rows: list[torch.Tensor] = []
    read = 0
    items = []
    for p in pairs:
        x_ids, xy_ids = encode(tok, p.prompt), encode(tok, p.prompt + p.completion)
        items.append((x_ids, xy_ids))
    longest = max(len(xy) + len(x) for x, xy in items)
    engine.check_request(plan, longest, 0)
    with engine.session(plan, longest) as s:
        blocks = decoder_layers(s.model)
        with capture(blocks) as box:
            for x_ids, xy_ids in items:
                s.prefill(xy_ids, s.make_cache(), len(xy_ids))
                at_xy = torch.stack([b[0, -1] for b in box])  # type: ignore[index]  # (L, H)
                read += len(xy_ids)
                if xy_ids[: len(x_ids)] == x_ids and len(xy_ids) > len(x_ids):
                    at_x = torch.stack([b[0, len(x_ids) - 1] for b in box])  # type: ignore[index]
                else:  # the label changed the prompt's last tokens: read x alone
                    s.prefill(x_ids, s.make_cache(), len(x_ids))
                    at_x = torch.stack([b[0, -1] for b in box])  # type: ignore[index]
                    read += len(x_ids)
                rows.append((at_xy.float() - at_x.float()).cpu())
    return torch.stack(rows), read  # (n, L, H)


def in_context_vector(diffs: torch.Tensor) -> torch.Tensor:
    """(n, L, H) differences -> (L, H) vector, one :func:`principal_vector` per layer."""
    return torch.stack([principal_vector(diffs[:, layer]) for layer in range(diffs.shape[1])])


@dataclasses.dataclass
class _Entry:
    vector: torch.Tensor  # (L, H) float32, CPU
    tokens: int
    seconds: float


_VECTORS: OrderedDict[tuple, _Entry] = OrderedDict()
_VECTORS_LOCK = threading.Lock()
MAX_CACHED_VECTORS = 32


def vector_for(engine: EngineLike, plan: Plan, demos: Demonstrations) -> tuple[_Entry, bool]:
    """The in-context vector of ``demos`` under ``plan`` (from the in-memory cache when this document, model and
    plan were seen before: then True)."""
    digest = hashlib.sha256("\x00".join(p.prompt + p.completion for p in demos.pairs).encode()).hexdigest()
    model = getattr(engine, "model", None)
    key = (digest, engine.info.name, id(model), plan.spec)
    with _VECTORS_LOCK:
        if key in _VECTORS:
            _VECTORS.move_to_end(key)
            return _VECTORS[key], True
    t0 = time.perf_counter()
    diffs, read = pair_differences(engine, plan, demos.pairs)
    entry = _Entry(in_context_vector(diffs), read, time.perf_counter() - t0)
    with _VECTORS_LOCK:
        _VECTORS[key] = entry
        while len(_VECTORS) > MAX_CACHED_VECTORS:
            _VECTORS.popitem(last=False)
    return entry, False


def clear_vectors() -> None:
    """Forget every cached vector."""
    with _VECTORS_LOCK:
        _VECTORS.clear()


# ------------------------------------------------------------------------------------------- the reader
def plain_read(engine: EngineLike, plan: Plan, request: Request, progress: bool, key: str, why: str) -> ReadResult:
    """The fallback of a document without demonstrations: the plan's other methods read it whole."""
    result = engine.run(plan, request, progress=progress)
    result.extra[key] = {"pairs": 0, "prompt_tokens": result.input_tokens, "fallback": why}
    return result


def answer_with(engine: EngineLike, plan: Plan, request: Request, document: str, progress: bool,
                hooks: Callable[[Any], Any] | None = None) -> ReadResult:
    """Prefill + greedy decode of ``document`` + the request's question under ``plan`` (the chunked
    reader); ``hooks(model)``: a context manager entered around the passes (ICV's steering)."""
    return ChunkedReader(hooks).read(engine, plan, dataclasses.replace(request, document=document), progress)


@dataclasses.dataclass
class IcvReader:
    """Parse, compute (or reuse) the in-context vector, answer steered by it (see the module docstring)."""

    strength: float = 0.1
    demos: int = 0
    layers: str = "all"
    pairs: int = 0  # 0 = every pair; N = the first N (document order) compute the vector
    fallback: bool = True
    name = "icv"

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        carried = Plan.from_spec([m for m in getattr(plan, "methods", []) if m.slot != "reader"])
        text = full_text(materialize(request.document))
        try:
            demos = parse_demonstrations(text)
        except InputError as exc:
            if not self.fallback:
                raise
            return plain_read(engine, carried, dataclasses.replace(request, document=text), progress, "icv",
                              f"{exc}; read the whole document instead (icv:fallback=false refuses)")
        used = Demonstrations(demos.preamble, demos.pairs[: self.pairs] if self.pairs else demos.pairs)
        entry, cached = vector_for(engine, carried, used)
        layers = resolve_layers(self.layers, entry.vector.shape[0])
        chosen = rank_demos(demos, request.question)[: self.demos]
        result = answer_with(
            engine, carried, request, demos.document(chosen), progress,
            hooks=lambda model: steer(model, entry.vector, self.strength, layers))
        vector_seconds = 0.0 if cached else entry.seconds
        prompt_tokens = result.input_tokens  # the answer prompt alone; the vector's tokens are added below
        result.input_tokens += 0 if cached else entry.tokens
        result.prefill_seconds = math.fsum([result.prefill_seconds, vector_seconds])
        result.extra["icv"] = {"pairs": len(used.pairs), "demos": len(chosen), "layers": len(layers),
                               "strength": self.strength, "prompt_tokens": prompt_tokens,
                               "vector_seconds": round(vector_seconds, 4), "vector_tokens": entry.tokens,
                               "cached": cached}
        return result
