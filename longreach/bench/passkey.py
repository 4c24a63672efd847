"""Pass-key documents (the InfiniteBench / Landmark-Attention prompt), sized with the model's tokenizer.

The document opens with the InfiniteBench instruction ("There is an important info hidden inside a lot
of irrelevant text. ..."), then the filler "The grass is green. The sky is blue. The sun is yellow. Here
we go. There and back again." repeated, with the needle "The pass key is {key}. Remember it. {key} is
the pass key." at a relative depth.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
               "I will quiz you about the important information there.")
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"


@dataclasses.dataclass
class PasskeyDoc:
    text: str
    key: str
    depth: float
    tokens: int  # tokens of the document alone, measured with the tokenizer
    seed: int


def make_passkey_document(tokenizer: Any, tokens: int, depth: float = 0.5, seed: int = 0,
                          key: str | None = None, instruction: bool = True) -> PasskeyDoc:
    """A filler document of at most ``tokens`` tokens (the largest that fits) with the needle at ``depth``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    rng = random.Random(seed)
    key = key or str(rng.randint(10000, 99999))
    needle = NEEDLE.format(key=key)

    def build(units: int) -> str:
        at = round(units * depth)
        parts = [FILLER] * units
        parts.insert(at, needle)
        body = " ".join(parts)
        return f"{INSTRUCTION}\n{body}" if instruction else body

    def count(units: int) -> int:
        return len(tokenizer(build(units), add_special_tokens=False).input_ids)

    lo, hi = 0, max(1, tokens // 8)
    while count(hi) <= tokens:  # grow until too long
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # largest number of filler units that fits
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= tokens else (lo, mid)
    text = build(lo)
    return PasskeyDoc(text, key, depth, count(lo), seed)


def score_passkey(prediction: str, key: str) -> float:
    """1.0 if the first integer in the prediction is the key (InfiniteBench scoring), else 0.0."""
    m = re.search(r"\d+", prediction)
    return float(m is not None and m.group(0) == key)
