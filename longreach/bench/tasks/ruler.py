"""RULER's non-retrieval synthetic tasks (arXiv 2404.06654): ``vt``, ``cwe``, ``fwe``.

``vt`` variable tracking: a chain "VAR AAAAA = 12345", "VAR BBBBB = VAR AAAAA", ... (``hops`` links,
``chains`` chains) spread evenly through repeated noise; the model lists every variable bound to the
value. ``cwe`` common words: a numbered word list where ``common`` words appear ``freq_common`` times
and the rest ``freq_rare`` times; the model names the common words. ``fwe`` frequent words: coded words
with Zipf-shaped counts (count of rank r = N / r**alpha, strictly decreasing), the most frequent shown as
"..." (noise, as in RULER); the model names ranks 2..4. All scored with string_match_all.
"""

from __future__ import annotations

import random
import string
from typing import Any

from ..haystack import Haystack
from ..task import BenchError, Sample, Task, fit_units, register_task, string_match_all
from ..words import ADJECTIVES, NOUNS
from ._haystack_doc import needle_sample


@register_task
class VariableTracking(Task):
    name = "vt"
    family = "RULER"
    paper = "RULER: What's the Real Context Size of Your Long-Context Language Models? (arXiv 2404.06654)"
    summary = "variable tracking: follow VAR X = VAR Y chains through noise"
    scorer = "string_match_all over the variables bound to the value"
    max_new_tokens = 40

    hops: int = 4
    chains: int = 1
    haystack: str = "noise"

    def __post_init__(self) -> None:
        if not (1 <= self.hops <= 16 and 1 <= self.chains <= 8):
            raise ValueError("need 1 <= hops <= 16 and 1 <= chains <= 8")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"vt-{seed}")
        names: set[str] = set()

        def var() -> str:
            while True:
                v = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
                if v not in names:
                    names.add(v)
                    return v

        chains, values = [], []
        for _ in range(self.chains):
            chain = [var() for _ in range(self.hops + 1)]
            value = str(rng.randint(10000, 99999))
            while value in values:
                value = str(rng.randint(10000, 99999))
            values.append(value)
            chains.append([f"VAR {chain[0]} = {value}."] +
                          [f"VAR {chain[i + 1]} = VAR {chain[i]}." for i in range(self.hops)])
            chains[-1].append(chain)  # keep the names at the end
        needles, depths = [], []
        for c, chain in enumerate(chains):
            statements = chain[:-1]
            for i, s in enumerate(statements):
                needles.append(s)
                depths.append((i + (c + 1) / (self.chains + 1)) / len(statements))
        asked = chains[0][-1]
        question = (f"Memorize and track the chain(s) of variable assignment hidden in the text above. "
                    f"Find all variables that are assigned the value {values[0]} in the text above.")
        prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, "
                  f"{len(asked)} variables are assigned the value {values[0]}, they are:")
        return needle_sample(tokenizer, budget, Haystack(self.haystack, seed), needles, depths, question,
                             prefix, list(asked), meta={"value": values[0]})

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)


def word_pool(rng: random.Random) -> list[str]:
    """Distinct words (~14,700): plain nouns and adjectives first, then adjective-noun compounds."""
    simple = sorted(set(NOUNS) | set(ADJECTIVES))
    rng.shuffle(simple)
    pool = list(simple)
    compounds = [f"{a}{b}" for a in ADJECTIVES for b in NOUNS]
    rng.shuffle(compounds)
    pool.extend(compounds)
    return pool


@register_task
class CommonWords(Task):
    name = "cwe"
    family = "RULER"
    paper = "RULER: What's the Real Context Size of Your Long-Context Language Models? (arXiv 2404.06654)"
    summary = "common words extraction: the words repeated most in a long numbered list"
    scorer = "string_match_all over the common words"
    max_new_tokens = 64

    common: int = 10
    freq_common: int = 0  # 0 = auto: 30, or fewer when the length is short (recorded in the sample)
    freq_rare: int = 3

    def __post_init__(self) -> None:
        if not (1 <= self.common <= 100 and 1 <= self.freq_rare <= 100 and 0 <= self.freq_common <= 1000):
            raise ValueError(f"need 1 <= common <= 100, 1 <= freq_rare <= 100 and freq_common 0 (auto) or up to "
                             f"1000; got common={self.common}, freq_rare={self.freq_rare}, "
                             f"freq_common={self.freq_common}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"cwe-{seed}")
        freq = self.freq_common or (30 if budget >= 4000 else max(self.freq_rare + 2, budget // 150))
        if freq <= self.freq_rare:
            raise BenchError(f"cwe: freq_common ({freq}) must exceed freq_rare ({self.freq_rare})")
        words = word_pool(rng)
        common, rare = words[: self.common], words[self.common:]
        order_rng_seed = f"cwe-order-{seed}"
        question = f"What are the {self.common} most common words in the above list?"
        prefix = f"Answer: The top {self.common} words that appear most often in the list are:"

        def build(n: int) -> Sample:
            items = [w for w in common for _ in range(freq)] + [w for w in rare[:n] for _ in range(self.freq_rare)]
            random.Random(order_rng_seed).shuffle(items)
            context = "Below is a numbered list of words. In these words, some appear more often than others. " \
                      "Memorize the ones that appear most often.\n" + \
                      " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
            return Sample(context, question, prefix, list(common), {"freq_common": freq, "rare_words": n})

        n, sample, tokens = fit_units(build, tokenizer, budget, limit=len(rare), what="list words")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)


@register_task
class FrequentWords(Task):
    name = "fwe"
    family = "RULER"
    paper = "RULER: What's the Real Context Size of Your Long-Context Language Models? (arXiv 2404.06654)"
    summary = "frequent words extraction: the 3 most frequent coded words (after the noise word)"
    scorer = "string_match_all over ranks 2..4"
    max_new_tokens = 40

    alpha: float = 2.0
    vocab: int = 200

    def __post_init__(self) -> None:
        if not (1.0 < self.alpha <= 10.0 and 6 <= self.vocab <= 5000):
            raise ValueError(f"need 1 < alpha <= 10 and 6 <= vocab <= 5000; got alpha={self.alpha}, vocab={self.vocab}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"fwe-{seed}")
        coded: list[str] = []
        while len(coded) < self.vocab:
            w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
            if w not in coded:
                coded.append(w)
        question = ("What are the three most frequently appeared coded words in the above coded text? "
                    "Do not provide any explanation.")
        prefix = "Answer: According to the coded text above, the three most frequently appeared words are:"

        def counts(n: int) -> list[int]:
            return [int(n / (r + 1) ** self.alpha) for r in range(self.vocab)]

        def build(n: int) -> Sample:
            c = counts(n)
            items = ["..." if r == 0 else coded[r] for r in range(self.vocab) for _ in range(c[r])]
            random.Random(f"fwe-order-{seed}-{n}").shuffle(items)
            context = ("Read the following coded text and track the frequency of each coded word. Find the "
                       "three most frequently appeared coded words.\n" + " ".join(items))
            return Sample(context, question, prefix, coded[1:4], {"top_count": n})

        n, sample, tokens = fit_units(build, tokenizer, budget, what="coded words")
        c = counts(n)
        if not (c[1] > c[2] > c[3] > c[4] > 0):
            raise BenchError(f"fwe: length too short for distinct Zipf counts ({c[:5]}); use a longer length")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)
