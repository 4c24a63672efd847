"""Needle in a haystack: the classic ``niah`` and RULER's eight variants.

``niah`` (the picture people expect): one fictional fact hidden at a depth of Paul Graham's essays;
scored by keyword (every answer keyword present). Parameters: ``haystack``, ``needle``, ``question``,
``answer`` (keywords separated by ``|``), ``answer_prefix``.

RULER variants (NVIDIA RULER, arXiv 2404.06654): needles "One of the special magic {numbers} for
{key} is: {value}."; question "What are all the special magic {numbers} for {key} mentioned in the
provided text?"; scorer string_match_all (mean over expected values of value-in-answer).

| task | haystack | key | value | needles |
|---|---|---|---|---|
| niah_single_1 | noise | word | 7-digit number | 1 |
| niah_single_2 | essays | word | number | 1 |
| niah_single_3 | essays | word | uuid | 1 |
| niah_multikey_1 | essays | word | number | 4 keys, 1 asked |
| niah_multikey_2 | distractor needles | word | number | haystack made of needles |
| niah_multikey_3 | distractor needles | uuid | uuid | haystack made of needles |
| niah_multivalue | essays | word | number | 4 values for the asked key |
| niah_multiquery | essays | word | number | 4 keys, all asked |

Parameters of every RULER variant: ``haystack`` (noise | essays | needles | path), ``key_type`` /
``value_type`` (words | numbers | uuids), ``keys`` (needles with distinct keys), ``values`` (values per
key), ``queries`` (keys asked). The asked key's first needle sits at the sample's depth, the others at
seeded random depths. ``--query-agnostic K``: the asked key(s), then other keys whose needles are in the
context (``questions``; multikey_1's other keys, multikey_2/3's distractors).
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

from ..haystack import Haystack
from ..task import Sample, Task, ask_also, register_task, spread, string_match_all
from ..words import ADJECTIVES, NOUNS
from ._haystack_doc import needle_sample

NEEDLE = "One of the special magic {kind} for {key} is: {value}."
PREAMBLE = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {kind} afterwards.")
QUESTION = "What are all the special magic {kind} for {keys} mentioned in the provided text?"
PREFIX = "The special magic {kind} for {keys} mentioned in the provided text are"
KINDS = {"numbers": "numbers", "words": "words", "uuids": "uuids"}


def draw(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


@register_task
class RulerNiah(Task):
    name = "niah_single_2"
    family = "RULER"
    paper = "RULER: What's the Real Context Size of Your Long-Context Language Models? (arXiv 2404.06654)"
    summary = "RULER NIAH: essays haystack, word key, 7-digit number value"
    scorer = "string_match_all: mean over expected values of (value in answer)"
    uses_depth = True
    max_new_tokens = 48

    haystack: str = "essays"
    key_type: str = "words"
    value_type: str = "numbers"
    keys: int = 1
    values: int = 1
    queries: int = 1

    def __post_init__(self) -> None:
        for field in ("key_type", "value_type"):
            if getattr(self, field) not in KINDS:
                raise ValueError(f"{field} must be one of {', '.join(KINDS)}, got {getattr(self, field)!r}")
        if not (1 <= self.keys <= 64 and 1 <= self.values <= 16 and 1 <= self.queries <= self.keys):
            raise ValueError("need 1 <= keys <= 64, 1 <= values <= 16 and 1 <= queries <= keys")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"{self.name}-{seed}")
        keys: list[str] = []
        while len(keys) < self.keys:
            k = draw(rng, self.key_type)
            if k not in keys:
                keys.append(k)
        kind = self.value_type
        needles, depths, values = [], [], {k: [draw(rng, kind) for _ in range(self.values)] for k in keys}
        for i, k in enumerate(keys):
            for j, v in enumerate(values[k]):
                needles.append(NEEDLE.format(kind=kind, key=k, value=v))
                depths.append(depth if (i, j) == (0, 0) else rng.random())
        asked = keys[: self.queries]
        refs = [v for k in asked for v in values[k]]
        question = QUESTION.format(kind=kind, keys=join_keys(asked))
        prefix = PREFIX.format(kind=kind, keys=join_keys(asked))
        preamble = PREAMBLE.format(kind=kind)
        meta = {"keys": keys, "asked": asked}
        if self.haystack == "needles":
            return needle_sample(tokenizer, budget, Haystack("noise", seed), needles, depths, question,
                                 prefix, refs, preamble, meta, units=self._distractors(seed, set(keys)))
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed), needles, depths, question,
                             prefix, refs, preamble, meta)

    def _distractors(self, seed: int, taken: set[str]):
        """Haystack of needles for other keys (RULER multikey_2/3); unit i depends only on (seed, i)."""
        cache: list[str] = []

        def units(n: int) -> list[str]:
            while len(cache) < n:
                rng = random.Random(f"{self.name}-{seed}-distractor-{len(cache)}")
                key = draw(rng, self.key_type)
                while key in taken:
                    key = draw(rng, self.key_type)
                cache.append(NEEDLE.format(kind=self.value_type, key=key,
                                           value=draw(rng, self.value_type)))
            return cache[:n]

        return units

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)

    def questions(self, sample: Sample, k: int) -> list[Sample]:
        """The asked key(s) first, then up to ``k - 1`` other keys whose needles are in the context (the
        other keys of ``niah_multikey_1``, the distractor needles of ``niah_multikey_2/3``), spread evenly
        over the context, ``queries`` keys per question; each question's references: every value of its
        keys in the context. A context with no other key gives the one question."""
        kind = self.value_type
        pattern = re.escape(NEEDLE).replace(r"\{kind\}", re.escape(kind))
        pattern = pattern.replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"([^\s.]+)")
        found: dict[str, list[str]] = {}
        for key, value in re.findall(pattern, sample.context):
            found.setdefault(key, []).append(value)
        asked = list(sample.meta["asked"])
        others = [key for key in found if key not in asked]
        groups = [others[i:i + self.queries] for i in range(0, len(others) - self.queries + 1, self.queries)]
        out = [ask_also(sample, 0, sample.question, sample.answer_prefix, sample.references, asked=asked)]
        for q, g in enumerate(spread(len(groups), k - 1), start=1):
            keys = groups[g]
            out.append(ask_also(sample, q, QUESTION.format(kind=kind, keys=join_keys(keys)),
                                PREFIX.format(kind=kind, keys=join_keys(keys)),
                                [v for key in keys for v in found[key]], asked=keys))
        return out


def _variant(name: str, summary: str, **defaults: Any) -> type:
    """Register a RULER variant: the same generator with other defaults."""
    ns: dict[str, Any] = {"name": name, "summary": summary, **defaults,
                          "__annotations__": {k: type(v) for k, v in defaults.items()}}
    return register_task(type(name.title().replace("_", ""), (RulerNiah,), ns))


_variant("niah_single_1", "RULER NIAH: repeated noise haystack, word key, number value", haystack="noise")
_variant("niah_single_3", "RULER NIAH: essays, word key, uuid value", value_type="uuids")
_variant("niah_multikey_1", "RULER NIAH: 4 keys in essays, one asked", keys=4)
_variant("niah_multikey_2", "RULER NIAH: the haystack is distractor needles (word keys)", haystack="needles")
_variant("niah_multikey_3", "RULER NIAH: distractor-needle haystack, uuid keys and values",
         haystack="needles", key_type="uuids", value_type="uuids")
_variant("niah_multivalue", "RULER NIAH: 4 values for the asked key", values=4)
_variant("niah_multiquery", "RULER NIAH: 4 keys, all asked", keys=4, queries=4)


@register_task
class Niah(Task):
    name = "niah"
    family = "NIAH"
    paper = ("Needle In A Haystack: pressure testing LLMs (G. Kamradt, 2023, "
             "github.com/gkamradt/LLMTest_NeedleInAHaystack)")
    summary = "classic needle in a haystack: one fictional fact in the essays at a depth"
    scorer = "keywords: fraction of answer keywords present"
    uses_depth = True
    max_new_tokens = 32

    haystack: str = "essays"
    needle: str = ("The secret ingredient of the Velmora harbour soup is a spoonful of crushed juniper "
                   "berries.")
    question: str = "What is the secret ingredient of the Velmora harbour soup?"
    answer: str = "juniper"
    answer_prefix: str = "The secret ingredient of the Velmora harbour soup is"

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        refs = [a.strip() for a in self.answer.split("|") if a.strip()]
        if not refs:
            raise ValueError("niah needs at least one answer keyword")
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed), [self.needle], [depth],
                             self.question, self.answer_prefix, refs)

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)
