"""``many-label-icl`` (LongICLBench / LIConBench, arXiv 2404.02060, synthetic analogue): extreme-label
in-context classification. Each of ``labels`` arbitrary labels owns a cue word; demonstrations are short
sentences containing one cue word, labelled; the test sentence uses a cue word in a new sentence.
The number of demonstrations grows with the length (every label is shown before any repeats).
Scorer: the first label named in the answer is the right one (0/1). Parameters: ``labels`` (2..180),
``shots`` (0 = as many demonstrations as fit the length, the default; N = exactly N, the many-shot ICL curve
is a sweep over it, the length then only a ceiling; meta ``gold_demos`` counts the demonstrations of each
asked label) and ``queries`` (k test sentences in one prompt, answered as a numbered list; the score is the
mean over the k, and the cell's ``tokens_per_query`` = prompt tokens / k; default 1).
"""

from __future__ import annotations

import random
import re
from typing import Any

from ..task import BenchError, Sample, Task, fit_units, prompt_tokens, register_task
from ..words import ADJECTIVES, COLORS, NOUNS

FRAMES = ["I saw a {adj} {cue} near the gate.", "Someone left the {adj} {cue} on the table.",
          "They talked about a {adj} {cue} all evening.", "A {adj} {cue} appeared in the story.",
          "We bought a {adj} {cue} at the market.", "The {adj} {cue} was hard to forget."]


@register_task
class ManyLabelICL(Task):
    name = "many-label-icl"
    family = "LongICLBench"
    paper = "Long-context LLMs Struggle with Long In-context Learning (LongICLBench, arXiv 2404.02060)"
    summary = "classification with many arbitrary labels learned from in-context demonstrations"
    scorer = "first label in the answer == gold label (0/1); with queries=k, the mean over the k"

    labels: int = 20
    shots: int = 0
    queries: int = 1

    def __post_init__(self) -> None:
        if not 2 <= self.labels <= 180:
            raise ValueError(f"labels must be within 2..180, got {self.labels}")
        if not 0 <= self.shots <= 100_000:
            raise ValueError(f"shots must be 0 (fit the length) or within 1..100000, got {self.shots}")
        if not 1 <= self.queries <= 64:
            raise ValueError(f"queries must be within 1..64, got {self.queries}")

    @property
    def max_new_tokens(self) -> int:  # type: ignore[override]  # "12. crimson-ancient" is < 10 tokens
        return 12 if self.queries == 1 else 4 + 10 * self.queries

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"icl-{seed}")
        cues = rng.sample(NOUNS, self.labels)
        names = rng.sample([f"{c}-{a}" for c in COLORS for a in ADJECTIVES], self.labels)
        gold = rng.randrange(self.labels)
        test = rng.choice(FRAMES).format(adj=rng.choice(ADJECTIVES), cue=cues[gold])
        golds, tests = [gold], [test]
        for j in range(1, self.queries):  # more test sentences, from their own generators
            r = random.Random(f"icl-query-{seed}-{j}")
            golds.append(r.randrange(self.labels))
            tests.append(r.choice(FRAMES).format(adj=r.choice(ADJECTIVES), cue=cues[golds[-1]]))

        def label_of(i: int) -> int:
            return i % self.labels if i < self.labels else random.Random(f"icl-{seed}-{i}").randrange(self.labels)

        def demo(i: int) -> str:
            r = random.Random(f"icl-{seed}-{i}")
            lab = i % self.labels if i < self.labels else r.randrange(self.labels)
            return f"Sentence: {r.choice(FRAMES).format(adj=r.choice(ADJECTIVES), cue=cues[lab])}\nLabel: {names[lab]}"

        if self.queries == 1:
            question, prefix = f"Sentence: {test}\nWhat is its label?", "Label:"
        else:
            question = ("\n".join(f"Sentence {j + 1}: {t}" for j, t in enumerate(tests)) +
                        f"\nWhat is the label of each of these {self.queries} sentences? Answer as a numbered list, "
                        "one label per line (1. label).")
            prefix = "Labels:"

        def build(n: int) -> Sample:
            order = list(range(n))
            random.Random(f"icl-order-{seed}-{n}").shuffle(order)
            context = ("Classify each sentence with one of these labels: " + ", ".join(names) + ".\n\n" +
                       "\n\n".join(demo(i) for i in order))
            meta: dict[str, Any] = {"demos": n, "labels": self.labels, "label_names": names}
            if self.queries > 1:
                meta["queries"] = self.queries
            return Sample(context, question, prefix, [names[g] for g in golds], meta)

        if self.shots:
            sample = build(self.shots)
            tokens = prompt_tokens(tokenizer, sample)
            if tokens > budget:
                raise BenchError(f"{self.shots} demonstrations take {tokens} prompt tokens, more than the {budget} "
                                 "available; use a longer length or fewer shots")
            shown = [label_of(i) for i in range(self.shots)]
            sample.meta["gold_demos"] = [shown.count(g) for g in golds]
        else:
            _, sample, tokens = fit_units(build, tokenizer, budget, what="demonstrations")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        if len(sample.references) == 1:
            text = prediction.lower()
            hits = sorted((text.find(n.lower()), n) for n in sample.meta["label_names"] if n.lower() in text)
            return float(bool(hits) and hits[0][1].lower() == sample.references[0].lower())
        answers = batched_labels(prediction, sample.meta["label_names"], len(sample.references))
        return sum(a == r.lower() for a, r in zip(answers, sample.references)) / len(sample.references)

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``tokens_per_query``: mean prompt tokens / queries (query batching's cost per question)."""
        if not records or not any("queries" in r["meta"] for r in records):
            return {}
        return {"tokens_per_query": sum(r["meta"]["tokens"] / r["meta"].get("queries", 1) for r in records)
                / len(records)}


def batched_labels(prediction: str, names: list[str], k: int) -> list[str | None]:
    """The answer's label for each of ``k`` queries (lower case; None when missing): from numbered lines
    (``3. label`` / ``3) label`` / ``3: label``, on one line or many) when there are any, else the labels
    named, in order."""
    pattern = re.compile("|".join(re.escape(n.lower()) for n in sorted(names, key=len, reverse=True)))
    out: list[str | None] = [None] * k
    parts = re.split(r"(?<![\w-])(\d{1,2})\s*[.):]", prediction.lower())  # [before, num, text, num, text, ...]
    if len(parts) > 1:
        for num, rest in zip(parts[1::2], parts[2::2]):
            j = int(num) - 1
            m = pattern.search(rest)
            if 0 <= j < k and out[j] is None and m:
                out[j] = m.group(0)
        return out
    for j, m in enumerate(pattern.finditer(prediction.lower())):
        if j < k:
            out[j] = m.group(0)
    return out
