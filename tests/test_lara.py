"""LaRA-style tasks: sizing with real and tiny tokenizers, facts placed (and the hallucination's attribute
absent), answers derived independently from the fact sentences, and the four scorers on hand-written answers."""

from __future__ import annotations

import random
import re

import pytest
from conftest import byte_tokenizer

from longreach.answers import UNANSWERABLE_INSTRUCTION
from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks import lara

TASKS = ["lara_location", "lara_reasoning", "lara_comparison", "lara_hallucination"]
TOK = byte_tokenizer()
WEEK = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


@pytest.fixture(scope="module")
def smollm2():
    from longreach.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _sample(refs: list[str], **meta) -> Sample:
    return Sample("", "q", "", refs, meta)


# ------------------------------------------------------------------------------------------- sizing
@pytest.mark.parametrize("length", [2048, 4096])
def test_fits_the_length_with_the_packaged_tokenizer(smollm2, length):
    for name in TASKS:
        task = make_task(name)
        s = task.generate(smollm2, length, seed=5, depth=0.6)
        budget = length - task.max_new_tokens
        assert s.meta["tokens"] == prompt_tokens(smollm2, s)
        assert budget - 100 <= s.meta["tokens"] <= budget, (name, s.meta["tokens"], budget)  # < 1 essay sentence short
        assert abs(s.meta["depth_actual"][0] - 0.6) < 0.05, s.meta["depth_actual"]
        assert all(f in s.context for f in s.meta["facts"])


@pytest.mark.parametrize("length", [1500, 3000])
def test_fits_the_length_with_a_tiny_tokenizer(length):
    for name in TASKS:
        task = make_task(name)
        s = task.generate(TOK, length, seed=2, depth=0.2)
        budget = length - task.max_new_tokens
        assert s.meta["tokens"] == prompt_tokens(TOK, s)
        assert 0.85 * budget <= s.meta["tokens"] <= budget


def test_too_short_raises():
    with pytest.raises(BenchError, match="longer length"):
        make_task("lara_reasoning").generate(TOK, 150, seed=0)


# --------------------------------------------------------------------------------- what goes in a sample
@pytest.mark.parametrize("name", TASKS)
def test_sample_shape(name):
    task = make_task(name)
    assert task.family == "LaRA" and task.uses_depth and task.max_new_tokens == 32
    s = task.generate(TOK, 2000, seed=4, depth=0.7)
    assert s.question.endswith(" " + UNANSWERABLE_INSTRUCTION) and s.answer_prefix == ""
    facts, depths = s.meta["facts"], s.meta["depths"]
    assert len(facts) == len(depths) == len(s.meta["depth_actual"]) == (1 if name == "lara_location" else 2)
    assert depths[0] == 0.7 and all(s.context.count(f) == 1 for f in facts)
    if len(depths) == 2:
        assert abs(depths[1] - depths[0]) >= 0.1 - 1e-9
    assert s.meta["depth"] == 0.7 and s.meta["type"]


#: how each attribute of a town is worded in its fact (written here, not taken from lara.py)
PHRASES = {"bridge": "main bridge of {t}", "founder": "{t} was founded by", "festival": "lantern festival of {t}",
           "gift": "In {t}, the traditional wedding gift", "librarian": "librarian of {t}",
           "bread": "bakers of {t}", "well": "well in the square of {t}", "bell": "great bell of {t}"}


@pytest.mark.parametrize("seed", range(6))
def test_hallucination_attribute_is_absent(seed):
    s = make_task("lara_hallucination").generate(TOK, 2000, seed=seed, depth=0.5)
    town, asked, present = s.meta["entity"], s.meta["type"], s.meta["present"]
    assert set(PHRASES) == set(lara.ATTRIBUTES) and asked not in present and len(present) == 2
    assert s.references == ["unanswerable"] and s.meta["absent_fact"] not in s.context
    assert PHRASES[asked].format(t=town) not in s.context
    assert all(PHRASES[k].format(t=town) in s.context for k in present)
    assert s.context.count(town) == 2  # only in its two facts; the question names it: it looks answerable
    assert town in s.question


def test_deterministic_per_seed_and_seeds_differ():
    for name in TASKS:
        task = make_task(name)
        a, b = (task.generate(TOK, 1500, seed=11, depth=0.4) for _ in range(2))
        assert a == b
        c = task.generate(TOK, 1500, seed=12, depth=0.4)
        assert c.meta["facts"] != a.meta["facts"] and c.context != a.context


def test_the_depth_moves_the_facts_but_not_what_they_say():
    task = make_task("lara_comparison")
    a, b = (task.generate(TOK, 2000, seed=3, depth=d) for d in (0.1, 0.9))
    assert a.meta["facts"] == b.meta["facts"] and a.references == b.references
    assert a.meta["depth_actual"][0] < 0.2 < 0.8 < b.meta["depth_actual"][0]


def test_templates_are_parameters():
    for name, names in [("lara_location", lara.ATTRIBUTES), ("lara_reasoning", lara.REASONING),
                        ("lara_comparison", tuple(lara.COMPARISONS)), ("lara_hallucination", lara.ATTRIBUTES)]:
        seen = {make_task(name).generate(TOK, 1200, seed=s).meta["type"] for s in range(12)}
        assert len(seen) >= 3 and seen <= set(names)  # "any" varies the template with the seed
        for t in names:
            s = make_task(f"{name}:template={t}").generate(TOK, 1200, seed=0)
            assert s.meta["type"] == t and s.meta["template"] == t
    with pytest.raises(BenchError, match="template must be any or one of"):
        make_task("lara_reasoning:template=nope")


def test_noise_haystack():
    s = make_task("lara_location:haystack=noise").generate(TOK, 1500, seed=0)
    assert s.meta["haystack"] == "noise" and s.meta["facts"][0] in s.context


# ------------------------------------------------------------- answers derived independently of lara.py
def _derive(kind: str, facts: list[str]) -> str:
    """The answer worked out from the two fact sentences alone."""
    nums = [int(n) for f in facts for n in re.findall(r"\b\d+\b", f)]
    if kind == "years":
        return str(nums[0] + nums[1] if " after " in facts[1] else nums[0] - nums[1])
    if kind in ("height", "age"):
        return str(nums[0] + nums[1])
    if kind == "weekday":
        day = re.search(r"every (\w+)\.", facts[0]).group(1).lower()
        gap = {"two": 2, "three": 3, "four": 4}[re.search(r"week, (\w+) days", facts[1]).group(1)]
        return WEEK[(WEEK.index(day) + gap) % 7]
    assert kind == "location"
    return re.search(r"stands in (\w+)\.$", facts[1]).group(1)


@pytest.mark.parametrize("template", lara.REASONING)
def test_reasoning_answer_matches_an_independent_derivation(template):
    for seed in range(40):
        facts, question, refs, meta = lara._reasoning(random.Random(seed), template)
        assert meta["type"] == template and len(facts) == 2
        assert refs[0].lower() == _derive(template, facts).lower(), (facts, refs)
        if template != "location":  # a derived value, not copied from a fact
            assert all(refs[0] not in re.findall(r"\w+", f) for f in facts)


@pytest.mark.parametrize("template", sorted(lara.COMPARISONS))
def test_comparison_answer_matches_the_values(template):
    firsts = set()
    for seed in range(40):
        facts, question, refs, meta = lara._comparison(random.Random(seed), template)
        (ta, va), (tb, vb) = [(re.search(r"([A-Z]\w+)", f.replace("The ", "")).group(1),
                               int(re.search(r"\b(\d+)\b", f).group(1))) for f in facts]
        assert va != vb
        pick = min if template == "age" else max  # older = founded earlier
        right = ta if pick(va, vb) == va else tb
        assert refs == [right] and meta["wrong"] == ({ta, tb} - {right}).pop()
        assert ta in question and tb in question
        firsts.add(question.index(right) < question.index(meta["wrong"]))
    assert firsts == {True, False}  # the right town is asked first sometimes, second other times


# ----------------------------------------------------------------------------------------- scorers
def test_location_scorer():
    task = make_task("lara_location")
    s = _sample(["March", "14"])
    assert task.score(s, "March 14") == 1.0
    assert task.score(s, "The lantern festival of Velmora is held every year on the 14th of March.") == 1.0  # verbose
    assert task.score(s, "It is held in March.") == 0.0  # partial: all keywords or nothing, as LaRA's judge
    assert task.score(s, "April 14") == 0.0
    assert task.score(s, "March 4") == 0.0 and task.score(s, "March 140") == 0.0  # whole numbers only
    assert task.score(s, "The text does not mention it; maybe March 14.") == 0.0  # declines
    g = _sample(["crimson", "harp"])
    assert task.score(g, "A Crimson harp.") == 1.0
    assert task.score(g, "a crimson harpsichord") == 0.0  # whole words
    assert task.score(_sample(["1250"]), "It is 1,250 metres long.") == 1.0  # thousands separator


def test_reasoning_scorer():
    task = make_task("lara_reasoning")
    s = _sample(["1861"])
    assert task.score(s, "1861") == 1.0
    assert task.score(s, "Mirefield was founded in 1857, so Yarrowdale, four years later, in 1861.") == 1.0
    assert task.score(s, "Yarrowdale was founded in 1857.") == 0.0  # the base fact, not the derived value
    assert task.score(s, "18610") == 0.0
    assert task.score(s, "unanswerable") == 0.0
    assert task.score(_sample(["Wednesday"]), "The fair is held on wednesday.") == 1.0
    assert task.score(_sample(["Wednesday"]), "Monday") == 0.0


def test_comparison_scorer():
    task = make_task("lara_comparison")
    s = _sample(["Ashcombe"], wrong="Brenmoor")
    assert task.score(s, "Ashcombe") == 1.0
    assert task.score(s, "Ashcombe has a longer main bridge than Brenmoor.") == 1.0  # verbose, right first
    assert task.score(s, "Brenmoor") == 0.0
    assert task.score(s, "Brenmoor's bridge is shorter than Ashcombe's.") == 0.0  # rule: the first town named
    assert task.score(s, "Neither.") == 0.0
    assert task.score(s, "Ashcombes") == 0.0  # whole words
    assert task.score(s, "The text does not say whether Ashcombe is longer.") == 0.0  # declines


def test_hallucination_scorer():
    task = make_task("lara_hallucination")
    s = _sample(["unanswerable"])
    assert task.score(s, "unanswerable") == 1.0
    assert task.score(s, "The text does not mention how long the main bridge of Velmora is.") == 1.0  # verbose
    assert task.score(s, "The main bridge of Velmora is 410 metres long.") == 0.0  # invents a value
    assert task.score(s, "It is not 410 metres but 380.") == 0.0
    assert task.score(s, "") == 0.0


def test_tasks_command_lists_the_family(capsys):
    from longreach.cli import main

    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert re.search(rf"^{name}\s+\(LaRA\) \[depth\]", out, re.M), name
