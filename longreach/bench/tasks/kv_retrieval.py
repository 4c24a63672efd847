"""``kv-retrieval`` (InfiniteBench kv_retrieval): a JSON object of uuid -> uuid pairs; return the value of
one key. The asked pair sits at the sample's depth. Scorer: the value appears in the answer (0/1).
Parameters: none beyond the sweep (the number of pairs grows with the length). ``--query-agnostic K``:
the asked key, then K - 1 other keys of the JSON spread over it (``questions``).
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from ..task import Sample, Task, ask_also, fit_units, register_task, spread, string_match_all

QUESTION = 'Key: "{key}"\nThe value associated with the specified key is:'
JSON_MARK = "JSON data:\n"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@register_task
class KVRetrieval(Task):
    name = "kv-retrieval"
    family = "InfiniteBench"
    paper = "InfiniteBench: Extending Long Context Evaluation Beyond 100K Tokens (arXiv 2402.13718)"
    summary = "JSON of uuid pairs: give the value of one key"
    scorer = "value in answer (0/1)"
    uses_depth = True
    max_new_tokens = 40

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        pairs: list[tuple[str, str]] = []

        def pair(i: int) -> tuple[str, str]:
            while len(pairs) <= i:
                rng = random.Random(f"kv-{seed}-{len(pairs)}")
                pairs.append((_uuid(rng), _uuid(rng)))
            return pairs[i]

        def build(n: int) -> Sample:
            n = max(n, 1)
            items = [pair(i) for i in range(n)]
            at = min(n - 1, round((n - 1) * depth))
            key, value = items[at]
            data = json.dumps(dict(items), indent=None)
            context = ("Extract the value corresponding to the specified key in the JSON object below.\n\n"
                       f"{JSON_MARK}{data}")
            return Sample(context, QUESTION.format(key=key), "", [value], {"pairs": n, "position": at})

        n, sample, tokens = fit_units(build, tokenizer, budget, what="key-value pairs")
        sample.meta["tokens"] = tokens
        sample.meta["depth_actual"] = [round(sample.meta["position"] / max(1, n - 1), 4)]
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return string_match_all(prediction, sample.references)

    def questions(self, sample: Sample, k: int) -> list[Sample]:
        """The asked key first, then ``k - 1`` other keys of the JSON spread evenly over it."""
        items = list(json.loads(sample.context.split(JSON_MARK, 1)[1]).items())
        at = int(sample.meta["position"])
        others = [i for i in range(len(items)) if i != at]
        picks = [at] + [others[j] for j in spread(len(others), k - 1)]
        last = max(1, len(items) - 1)
        return [ask_also(sample, q, QUESTION.format(key=items[i][0]), "", [items[i][1]], position=i,
                         depth_actual=[round(i / last, 4)]) for q, i in enumerate(picks)]
