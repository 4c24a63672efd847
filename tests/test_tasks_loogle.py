"""LooGLE-style tasks: the events and figures scattered in the text, the gold order and the gold number
re-derived here from the context alone, sizing, and both scorers on hand-written answers."""

from __future__ import annotations

import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens

TOK = byte_tokenizer()


def _sample(refs: list[str]) -> Sample:
    return Sample("", "q", "", refs, {})


# -------------------------------------------------------------------------------------------- timeline
def test_timeline_gold_is_the_order_of_the_years_in_the_text():
    task = make_task("loogle-timeline")
    assert task.family == "LooGLE" and task.events == 6
    for seed in range(10):
        s = task.generate(TOK, 3000, seed=seed)
        listed = dict(re.findall(r"^(E\d+): (.+)\.$", s.question, re.MULTILINE))
        assert sorted(listed) == sorted(s.references) and len(listed) == 6
        year_of = {}
        sentences = s.meta["events"]  # the event sentences, each checked to be in the context below
        assert all(s.context.count(x) == 1 for x in sentences)
        for label, text in listed.items():  # the one event sentence holding all the event's words
            words = set(text.lower().split())
            found = [x for x in sentences if words <= set(x.lower().rstrip(".").replace(",", "").split())]
            assert len(found) == 1, (label, text)
            year_of[label] = int(re.search(r"\b(1[6-9]\d\d)\b", found[0]).group(1))
        assert s.references == sorted(year_of, key=year_of.get)
        in_text = [int(re.search(r"\b(1[6-9]\d\d)\b", e).group(1)) for e in s.meta["events"]]
        assert sorted(in_text) == sorted(year_of.values()) and in_text != sorted(in_text)  # not in date order
        at = [s.context.index(e) for e in s.meta["events"]]
        assert at == sorted(at)  # meta["events"] is the text order


def test_timeline_scorer_on_hand_written_answers():
    task = make_task("loogle-timeline")
    s = _sample(["E3", "E1", "E6", "E2", "E5", "E4"])
    assert task.score(s, "E3, E1, E6, E2, E5, E4") == 1.0  # right
    assert task.score(s, "e3,e1,e6,e2,e5,e4") == 1.0  # case, no spaces
    assert task.score(s, "E4, E5, E2, E6, E1, E3") == 0.0  # reversed
    assert task.score(s, "E1, E3, E6, E2, E5, E4") == pytest.approx(13 / 15)  # one adjacent swap
    assert task.score(s, "E3, E1, E6") == pytest.approx(3 / 15)  # partial: the pairs among the three listed
    verbose = ("First came E3 (in 1701), then E1 (1755); E6 followed in 1802, before E2, E5 and finally E4. "
               "So E3 is earliest.")
    assert task.score(s, verbose) == 1.0  # verbose: first mentions count, years ignored
    assert task.score(s, "E3, E3, E1, E6, E2, E5, E4, E9") == 1.0  # repeats and unknown labels ignored
    assert task.score(s, "I could not find it.") == 0.0
    assert task.score(s, "") == 0.0


def test_timeline_sizes_and_limits():
    task = make_task("loogle-timeline:events=12")
    s = task.generate(TOK, 5000, seed=4)
    assert len(s.references) == 12 and task.max_new_tokens == 16 + 5 * 12
    assert s.meta["tokens"] == prompt_tokens(TOK, s) and 0.9 * (5000 - 76) <= s.meta["tokens"] <= 5000 - 76
    with pytest.raises(BenchError, match="longer length"):
        task.generate(TOK, 1200, seed=0)
    with pytest.raises(BenchError, match="events must be"):
        make_task("loogle-timeline:events=2")


# ----------------------------------------------------------------------------------------- computation
SALE = re.compile(r"([\d,]+) (\w+) were sold by (the [\w ]+?) in (\d{4})|In (\d{4}), (the [\w ]+?) sold ([\d,]+) |"
                  r"(The [\w ]+?)'s? sales in (\d{4}) came to ([\d,]+) |During (\d{4}), (the [\w ]+?) sold ([\d,]+) ")


def figures_in(context: str) -> dict[tuple[str, int], int]:
    """(company, year) -> units sold, read from the context alone."""
    out = {}
    for m in SALE.finditer(context):
        g = m.groups()
        if g[0]:
            who, year, n = g[2], g[3], g[0]
        elif g[4]:
            who, year, n = g[5], g[4], g[6]
        elif g[7]:
            who, year, n = g[7], g[8], g[9]
        else:
            who, year, n = g[11], g[10], g[12]
        key = (who.lower().removeprefix("the "), int(year))
        assert key not in out
        out[key] = int(n.replace(",", ""))
    return out


@pytest.mark.parametrize("op", ["sum", "difference"])
def test_computation_gold_follows_from_the_figures_in_the_text(op):
    task = make_task(f"loogle-computation:op={op}")
    for seed in range(10):
        s = task.generate(TOK, 3000, seed=seed)
        figures = figures_in(s.context)
        assert len(figures) == 12  # 6 years of the company and 6 of its rival
        if op == "sum":
            company, y0, y1 = re.match(r"How many \w+ did the (.+?) sell in total from (\d+) to (\d+)\?",
                                       s.question).groups()
            gold = sum(figures[(company.lower(), y)] for y in range(int(y0), int(y1) + 1))
        else:
            company, hi, lo = re.match(r"How many more \w+ did the (.+?) sell in (\d+) than in (\d+)\?",
                                       s.question).groups()
            gold = figures[(company.lower(), int(hi))] - figures[(company.lower(), int(lo))]
            assert gold > 0
        assert s.references == [str(gold)]


def test_computation_without_distractor_and_more_years():
    s = make_task("loogle-computation:distractor=false,years=10").generate(TOK, 4000, seed=2)
    assert len(figures_in(s.context)) == 10
    assert s.meta["tokens"] == prompt_tokens(TOK, s) <= 4000 - 32
    with pytest.raises(BenchError, match="op must be"):
        make_task("loogle-computation:op=mean")


def test_computation_scorer_on_hand_written_answers():
    task = make_task("loogle-computation")
    s = _sample(["23241"])
    assert task.score(s, "23241") == 1.0  # right
    assert task.score(s, " 23,241 harps.") == 1.0  # thousands separator
    assert task.score(s, "3,036 + 2,351 + 462 + 8,069 + 9,095 + 228 = 23,241") == 1.0  # verbose working
    assert task.score(s, "23,214") == 0.0  # wrong
    assert task.score(s, "3,036 + 2,351 + 462 = 5,849") == 0.0  # partial sum
    assert task.score(s, "232410") == 0.0  # digits of the answer inside another number
    assert task.score(s, "I could not find it.") == 0.0


def test_fits_with_the_packaged_tokenizer():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    for name in ("loogle-timeline", "loogle-computation"):
        task = make_task(name)
        s = task.generate(tok, 2048, seed=3)
        budget = 2048 - task.max_new_tokens
        assert s.meta["tokens"] == prompt_tokens(tok, s) and budget - 60 <= s.meta["tokens"] <= budget
