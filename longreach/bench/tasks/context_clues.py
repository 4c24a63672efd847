"""``ehr-sequence`` (Context Clues, arXiv 2412.16178, synthetic analogue): a generated patient timeline of
coded events (invented ICD-like diagnosis ``DX-K21.7``, LOINC-like lab ``LB-4821`` with a value, drug
``RX-0932`` and procedure ``PR-315`` codes), visits at irregular gaps (log-normal, mean ``gap`` days), a share
``repeat`` of events drawn from a small set of chronic codes that keep coming back (the rest from a large
pool, rarely repeated). The timeline fills the length. Questions (``question``):

- ``next``: a motif of three reserved codes recurs periodically (every few visits, in order, on one visit);
  the timeline ends with its first two codes; which code comes next? Deterministic: the motif is the only
  place those codes occur. Scorer: the first code in the answer is the right one (0/1).
- ``copy``: a reserved lab code is measured periodically with changing values; what was its last value
  (copy-forward)? Scorer: the first number in the answer (dates skipped) equals it (0/1).

Meta: ``repetition`` (share of events whose code already occurred earlier in the timeline), ``mean_gap``
(mean days between visits), ``occurrences`` (motif repeats / measurements), ``since_days`` (copy: days
from the last measurement to the end), so results can be split by them; sweeping ``repeat`` and ``gap``
gives the controlled split. Parameters: ``question`` (next | copy), ``repeat`` (0..0.95, default 0.5),
``gap`` (mean days between visits, 1..365, default 30).
"""

from __future__ import annotations

import datetime
import math
import random
import re
from typing import Any

from ..task import BenchError, Sample, Task, fit_units, register_task

QUESTIONS = ("next", "copy")
START = datetime.date(2012, 1, 1)
_CODE_RE = re.compile(r"\b(?:DX|LB|RX|PR)-[A-Z0-9]+(?:\.[0-9]+)?")
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _code(r: random.Random, kind: str) -> str:
    if kind == "DX":
        return f"DX-{r.choice('ABCDEFGHJKLMNPRSTVWZ')}{r.randint(10, 99)}.{r.randint(0, 9)}"
    if kind == "LB":
        return f"LB-{r.randint(1000, 9999)}"
    if kind == "RX":
        return f"RX-{r.randint(1000, 9999):04d}"
    return f"PR-{r.randint(100, 999)}"


def _vocab(seed: int) -> tuple[list[str], list[str], list[str], str]:
    """Chronic codes (12), the large pool (400), the motif (3 codes) and the copy-forward lab, all distinct."""
    r = random.Random(f"ehr-vocab-{seed}")
    seen: set[str] = set()

    def fresh(kind: str) -> str:
        while True:
            c = _code(r, kind)
            if c not in seen:
                seen.add(c)
                return c

    kinds = ["DX", "LB", "RX", "PR"]
    motif = [fresh("DX"), fresh("PR"), fresh("RX")]
    lab = fresh("LB")
    chronic = [fresh(kinds[i % 4]) for i in range(12)]
    pool = [fresh(kinds[i % 4]) for i in range(400)]
    return chronic, pool, motif, lab


def _value(r: random.Random, code: str) -> str:
    h = int(code[3:7]) % 7
    lo, hi, unit = [(3.0, 6.0, "mmol/L"), (60, 140, "mg/dL"), (0.5, 1.4, "mg/dL"), (4.0, 11.0, "10^9/L"),
                    (120, 160, "g/L"), (35, 50, "g/L"), (5.0, 9.0, "%")][h]
    v = r.uniform(lo, hi)
    return f"{v:.1f} {unit}" if hi < 20 else f"{round(v)} {unit}"


@register_task
class EHRSequence(Task):
    """Context Clues (arXiv 2412.16178) analogue: next-event and copy-forward questions on a coded timeline."""

    name = "ehr-sequence"
    family = "Context Clues"
    paper = "Context Clues: Evaluating Long Context Models for Clinical Prediction Tasks on EHRs (arXiv 2412.16178)"
    summary = "generated patient timeline of repeated codes at irregular gaps: next code or last lab value"
    scorer = "first code (next) / first number (copy) in the answer is right (0/1)"
    max_new_tokens = 16

    question: str = "next"
    repeat: float = 0.5
    gap: float = 30.0

    def __post_init__(self) -> None:
        if self.question not in QUESTIONS:
            raise ValueError(f"question must be one of {', '.join(QUESTIONS)}, got {self.question!r}")
        if not 0.0 <= self.repeat <= 0.95:
            raise ValueError(f"repeat must be within 0..0.95, got {self.repeat}")
        if not 1.0 <= self.gap <= 365.0:
            raise ValueError(f"gap must be within 1..365 days, got {self.gap}")

    def _visit(self, seed: int, i: int, vocab: tuple[list[str], list[str], list[str], str]) -> tuple[int, list[str]]:
        """Visit ``i``: days since the previous visit and its (code, value) event lines, without the planted ones."""
        chronic, pool, _, _ = vocab
        r = random.Random(f"ehr-visit-{seed}-{i}")
        sigma = 0.8
        days = max(1, round(r.lognormvariate(math.log(self.gap) - sigma ** 2 / 2, sigma))) if i else 0
        events = []
        for _ in range(r.randint(1, 3)):
            code = r.choice(chronic) if r.random() < self.repeat else r.choice(pool)
            events.append(f"{code} = {_value(r, code)}" if code.startswith("LB") else code)
        return days, events

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        vocab = _vocab(seed)
        motif, lab = vocab[2], vocab[3]
        r = random.Random(f"ehr-{seed}")
        period, offset = r.randint(4, 7), r.randint(1, 3)
        nxt = self.question == "next"

        def build(n: int) -> Sample:
            day, lines, codes, gaps = 0, [], [], []
            last_value, last_day, occurrences = None, None, 0
            for i in range(n + 1):
                days, events = self._visit(seed, i, vocab)
                day += days
                if i:
                    gaps.append(days)
                if i % period == offset and i < n:  # the planted periodic event (never on the final visit)
                    occurrences += 1
                    if nxt:
                        events = events + motif
                    else:
                        vr = random.Random(f"ehr-lab-{seed}-{i}")
                        last_value, last_day = _value(vr, lab), day
                        events = events + [f"{lab} = {last_value}"]
                if i == n and nxt:
                    events = events + motif[:2]
                date = (START + datetime.timedelta(days=day)).isoformat()
                lines += [f"{date} {e}" for e in events]
                codes += [e.split(" ")[0] for e in events]
            seen: set[str] = set()
            repeated = 0
            for c in codes:
                repeated += c in seen
                seen.add(c)
            meta = {"visits": n + 1, "events": len(codes), "occurrences": occurrences,
                    "repetition": round(repeated / max(1, len(codes)), 4),
                    "mean_gap": round(sum(gaps) / len(gaps), 2) if gaps else 0.0}
            if nxt:
                question = ("The timeline ends in the middle of a visit. Which code is most likely the next event? "
                            "Answer with the code only.")
                refs = [motif[2]]
            else:
                question = f"What was the value of the patient's most recent {lab} measurement? Answer with the value."
                refs = [last_value.split(" ")[0] if last_value else ""]
                meta["since_days"] = day - last_day if last_day is not None else None
            context = ("Patient timeline, one coded event per line (date, code, and the value for lab codes), "
                       "oldest first:\n" + "\n".join(lines))
            return Sample(context, question, "Answer:", refs, meta)

        _, sample, tokens = fit_units(build, tokenizer, budget, what="visits")
        if sample.meta["occurrences"] < (2 if nxt else 1):
            raise BenchError(f"length too short for task {self.name!r}: the timeline holds too few visits; "
                             "use a longer length")
        sample.meta["tokens"] = tokens
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        gold = sample.references[0]
        if gold.startswith(("DX", "LB", "RX", "PR")):
            m = _CODE_RE.search(prediction.upper())
            return float(bool(m) and m.group(0) == gold)
        m = _NUM_RE.search(re.sub(r"\d{4}-\d{2}-\d{2}", " ", prediction))  # dates are not the value
        return float(bool(m) and math.isclose(float(m.group(0)), float(gold)))

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Mean ``repetition`` and ``mean_gap`` of the cell's timelines (to split results by them)."""
        if not records:
            return {}
        return {k: round(sum(r["meta"].get(k, 0.0) for r in records) / len(records), 4)
                for k in ("repetition", "mean_gap")}
