"""``passkey`` (InfiniteBench / Landmark Attention): a 5-digit key hidden in repeated filler.

Needle: "The pass key is {key}. Remember it. {key} is the pass key." at the sample's depth; question
"What is the pass key?"; answer prefix "The pass key is". Scorer: the first integer of the prediction
equals the key (InfiniteBench).

The document opens with the InfiniteBench instruction line ("There is an important info hidden inside a
lot of irrelevant text. ...") unless ``instruction=false``.

Parameters: ``haystack`` (noise | essays | path, default noise), ``digits`` (key length, default 5),
``instruction`` (default true).
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from ..haystack import Haystack
from ..passkey import ANSWER_PREFIX, INSTRUCTION, NEEDLE, QUESTION, score_passkey
from ..task import Sample, Task, register_task
from ._haystack_doc import needle_sample


@register_task
class Passkey(Task):
    name = "passkey"
    family = "InfiniteBench"
    paper = ("Landmark Attention (arXiv 2305.16300), the pass-key test as in InfiniteBench (arXiv "
             "2402.13718)")
    summary = "a numeric pass key hidden in filler text at a depth"
    scorer = "first integer in the answer == key (0/1)"
    uses_depth = True
    max_new_tokens = 12
    version: ClassVar[int] = 2  # 2: the document opens with the InfiniteBench instruction line


    haystack: str = "noise"
    digits: int = 5
    instruction: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 12:
            raise ValueError(f"digits must be within 1..12, got {self.digits}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"passkey-{seed}")
        key = str(rng.randint(10 ** (self.digits - 1), 10**self.digits - 1))
        hay = Haystack(self.haystack, seed)
        return needle_sample(tokenizer, budget, hay, [NEEDLE.format(key=key)], [depth], QUESTION,
                             ANSWER_PREFIX, [key], preamble=INSTRUCTION if self.instruction else "")

    def score(self, sample: Sample, prediction: str) -> float:
        return score_passkey(prediction, sample.references[0])
