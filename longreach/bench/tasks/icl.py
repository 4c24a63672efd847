"""``many-label-icl`` (LongICLBench / LIConBench, arXiv 2404.02060, synthetic analogue): extreme-label
in-context classification. Each of ``labels`` arbitrary labels owns a cue word; demonstrations are short
sentences containing one cue word, labelled; the test sentence uses a cue word in a new sentence.
The number of demonstrations grows with the length (every label is shown before any repeats).
Scorer: the first label named in the answer is the right one (0/1). Parameters: ``labels`` (2..180).
"""

from __future__ import annotations

import random
from typing import Any

from ..task import Sample, Task, fit_units, register_task
from ..words import ADJECTIVES, COLORS, NOUNS

FRAMES = ["I saw a {adj} {cue} near the gate.", "Someone left the {adj} {cue} on the table.",
          "They talked about a {adj} {cue} all evening.", "A {adj} {cue} appeared in the story.",
          "We bought a {adj} {cue} at the market.", "The {adj} {cue} was hard to forget."]


@register_task
class ManyLabelICL(Task):
    name = "many-label-icl"
    family = "LongICLBench"
    summary = "classification with many arbitrary labels learned from in-context demonstrations"
    scorer = "first label in the answer == gold label (0/1)"
    max_new_tokens = 12

    labels: int = 20

    def __post_init__(self) -> None:
        if not 2 <= self.labels <= 180:
            raise ValueError(f"labels must be within 2..180, got {self.labels}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        rng = random.Random(f"icl-{seed}")
        cues = rng.sample(NOUNS, self.labels)
        names = rng.sample([f"{c}-{a}" for c in COLORS for a in ADJECTIVES], self.labels)
        gold = rng.randrange(self.labels)
        test = rng.choice(FRAMES).format(adj=rng.choice(ADJECTIVES), cue=cues[gold])

        def demo(i: int) -> str:
            r = random.Random(f"icl-{seed}-{i}")
            lab = i % self.labels if i < self.labels else r.randrange(self.labels)
            return f"Sentence: {r.choice(FRAMES).format(adj=r.choice(ADJECTIVES), cue=cues[lab])}\nLabel: {names[lab]}"

        def build(n: int) -> Sample:
            order = list(range(n))
            random.Random(f"icl-order-{seed}-{n}").shuffle(order)
            context = ("Classify each sentence with one of these labels: " + ", ".join(names) + ".\n\n" +
                       "\n\n".join(demo(i) for i in order))
            return Sample(context, f"Sentence: {test}\nWhat is its label?", "Label:", [names[gold]],
                          {"demos": n, "labels": self.labels, "label_names": names})

        _, sample, tokens = fit_units(build, tokenizer, budget, what="demonstrations")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        text = prediction.lower()
        hits = sorted((text.find(n.lower()), n) for n in sample.meta["label_names"] if n.lower() in text)
        return float(bool(hits) and hits[0][1].lower() == sample.references[0].lower())
