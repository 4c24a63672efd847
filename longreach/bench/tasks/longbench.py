"""Synthetic analogues of LongBench's ``passage_count`` and ``passage_retrieval_en`` (arXiv 2308.14508),
built from haystack paragraphs so that no LongBench data is needed.

- ``passage-count``: numbered paragraphs, some repeated; "how many unique paragraphs?"; scorer: the
  first integer of the answer equals the count (0/1).
- ``passage-retrieval``: numbered paragraphs and one sentence quoted from one of them (at the sample's
  depth); "which paragraph is it from?"; scorer: the first "Paragraph N" / integer equals N (0/1).
Parameters: ``haystack`` (default essays), ``sentences`` per paragraph (default 3), ``repeat`` (share of
repeated slots in passage-count, default 0.3).
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..haystack import Haystack
from ..task import Sample, Task, fit_units, register_task


def paragraphs(hay: Haystack, n: int, size: int) -> list[str]:
    units = hay.take(n * size)
    return [" ".join(units[i * size:(i + 1) * size]) for i in range(n)]


def first_int(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


@register_task
class PassageCount(Task):
    name = "passage-count"
    family = "LongBench"
    paper = "LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding (arXiv 2308.14508)"
    summary = "count the unique paragraphs among numbered, partly repeated ones"
    scorer = "first integer in the answer == number of unique paragraphs (0/1)"
    max_new_tokens = 12

    haystack: str = "essays"
    sentences: int = 3
    repeat: float = 0.3

    def __post_init__(self) -> None:
        if not (1 <= self.sentences <= 50 and 0.0 <= self.repeat < 1.0):
            raise ValueError(f"need 1 <= sentences <= 50 and 0 <= repeat < 1; got sentences={self.sentences}, "
                             f"repeat={self.repeat}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        hay = Haystack(self.haystack, seed)
        pool = paragraphs(hay, 4096 // max(1, self.sentences), self.sentences)

        def slots(n: int) -> list[int]:
            """Paragraph index of each slot; slot i's choice depends only on (seed, i)."""
            out: list[int] = []
            for i in range(n):
                rng = random.Random(f"pc-{seed}-{i}")
                if out and rng.random() < self.repeat:
                    out.append(out[rng.randrange(len(out))])
                else:
                    out.append(len(set(out)))
            return out

        def build(n: int) -> Sample:
            idx = slots(n)
            context = "\n\n".join(f"Paragraph {i + 1}: {pool[j % len(pool)]}" for i, j in enumerate(idx))
            question = ("How many unique paragraphs are there after removing duplicates? "
                        "Answer with a single number.")
            return Sample(context, question, "The number of unique paragraphs is", [str(len(set(idx)))],
                          {"paragraphs": n})

        _, sample, tokens = fit_units(lambda n: build(n + 1), tokenizer, budget, what="paragraphs")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return float(first_int(prediction) == sample.references[0])


@register_task
class PassageRetrieval(Task):
    name = "passage-retrieval"
    family = "LongBench"
    paper = "LongBench: A Bilingual, Multitask Benchmark for Long Context Understanding (arXiv 2308.14508)"
    summary = "which numbered paragraph does a quoted sentence come from?"
    scorer = "first paragraph number in the answer == the right one (0/1)"
    uses_depth = True
    max_new_tokens = 12

    haystack: str = "essays"
    sentences: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.sentences <= 50:
            raise ValueError(f"need 1 <= sentences <= 50, got {self.sentences}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        hay = Haystack(self.haystack, seed)
        rng = random.Random(f"pr-{seed}")
        pick = rng.randrange(self.sentences)

        def build(n: int) -> Sample:
            n = n + 1
            units = hay.take(n * self.sentences)
            paras = [units[i * self.sentences:(i + 1) * self.sentences] for i in range(n)]
            target = min(n - 1, round((n - 1) * depth))
            quote = paras[target][pick]
            context = "\n\n".join(f"Paragraph {i + 1}: {' '.join(p)}" for i, p in enumerate(paras))
            question = (f'Which paragraph contains the sentence "{quote}"? '
                        'Answer with the paragraph number, e.g. "Paragraph 3".')
            return Sample(context, question, "The sentence comes from Paragraph", [str(target + 1)],
                          {"paragraphs": n, "depth_actual": [round(target / max(1, n - 1), 4)]})

        _, sample, tokens = fit_units(build, tokenizer, budget, what="paragraphs")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        m = re.search(r"(?:paragraph\s*)?(\d+)", prediction, flags=re.IGNORECASE)
        return float(m is not None and m.group(1) == sample.references[0])
