"""BABILong-style task: facts in story order in the haystack, the gold room re-derived here from the fact
sentences by an independent simulation, sizing, and the scorer on hand-written answers."""

from __future__ import annotations

import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens

TOK = byte_tokenizer()
MOVE = re.compile(r"^(\w+) (?:moved|went|journeyed|travelled|went back) to the (\w+)\.$")
TAKE = re.compile(r"^(\w+) (?:picked up|got|grabbed|took) the (\w+) there\.$")
DROP = re.compile(r"^(\w+) (?:dropped|put down|discarded|left) the (\w+)\.$")


def derive(facts: list[str], question: str) -> str:
    """The answer to ``question`` from the fact sentences alone (written here, not taken from babilong.py)."""
    room: dict[str, str] = {}
    holder: dict[str, str | None] = {}
    history: dict[str, list[str]] = {}
    for fact in facts:
        if m := MOVE.match(fact):
            person, place = m.groups()
            room[person] = place
            for thing, who in holder.items():
                if who == person:
                    history[thing].append(place)
        elif m := TAKE.match(fact):
            person, thing = m.groups()
            holder[thing] = person
            if not history.get(thing):
                history[thing] = [room[person]]
            assert history[thing][-1] == room[person], "picked up where it is not"
        elif m := DROP.match(fact):
            person, thing = m.groups()
            assert holder[thing] == person, "dropped by someone not holding it"
            holder[thing] = None
        else:
            raise AssertionError(f"unparsed fact {fact!r}")
    if m := re.match(r"Where is (\w+)\?", question):
        return room[m.group(1)]
    if m := re.match(r"Where is the (\w+)\?", question):
        return history[m.group(1)][-1]
    m = re.match(r"Where was the (\w+) before the (\w+)\?", question)
    seen = history[m.group(1)]
    assert seen.count(m.group(2)) == 1
    return seen[seen.index(m.group(2)) - 1]


@pytest.mark.parametrize("qa", [1, 2, 3])
def test_gold_follows_from_the_facts_in_order(qa):
    task = make_task(f"babilong:qa={qa}")
    assert task.family == "BABILong" and not task.uses_depth
    for seed in range(12):
        s = task.generate(TOK, 2500, seed=seed)
        facts = s.meta["facts"]
        assert len(facts) == {1: 8, 2: 16, 3: 24}[qa]
        at = -1
        for fact in facts:  # every fact present, in story order
            at = s.context.index(fact, at + 1)
        assert s.references == [derive(facts, s.question)]
        if qa == 2:
            assert re.match(r"Where is the \w+\?", s.question)
        if qa == 3:
            assert "before the" in s.question and s.references[0] not in s.question
        assert task.score(s, s.references[0]) == 1.0


def test_more_facts_and_sizing():
    task = make_task("babilong:qa=2,facts=60")
    s = task.generate(TOK, 6000, seed=1)
    assert len(s.meta["facts"]) == 60 and s.references == [derive(s.meta["facts"], s.question)]
    assert s.meta["tokens"] == prompt_tokens(TOK, s) and 0.9 * 5984 <= s.meta["tokens"] <= 5984
    assert s.meta["depths"] == sorted(s.meta["depths"])
    with pytest.raises(BenchError, match="longer length"):
        make_task("babilong:qa=3").generate(TOK, 600, seed=0)
    with pytest.raises(BenchError, match="qa must be"):
        make_task("babilong:qa=4")
    with pytest.raises(BenchError, match="facts must be"):
        make_task("babilong:facts=2")


def test_fits_with_the_packaged_tokenizer():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    s = make_task("babilong:qa=3").generate(tok, 2048, seed=2)
    assert s.meta["tokens"] == prompt_tokens(tok, s) and 2048 - 16 - 60 <= s.meta["tokens"] <= 2048 - 16


# ----------------------------------------------------------------------------------------------- scorer
def _sample(question: str, gold: str) -> Sample:
    return Sample("", question, "", [gold], {})


def test_scorer_on_hand_written_answers():
    task = make_task("babilong")
    s = _sample("Where is Mary? Answer with the room only.", "kitchen")
    assert task.score(s, "kitchen") == 1.0  # right
    assert task.score(s, " Kitchen.") == 1.0  # case, punctuation
    assert task.score(s, "Mary is in the kitchen. She was in the garden before.") == 1.0  # verbose: 1st sentence
    assert task.score(s, "garden") == 0.0  # wrong
    assert task.score(s, "the kitchen or the garden") == 0.0  # hedging: another room named
    assert task.score(s, "kitchenette") == 0.0  # whole words only
    assert task.score(s, "I could not find it.") == 0.0
    assert task.score(s, "") == 0.0
    qa3 = _sample("Where was the milk before the office? Answer with the room only.", "hallway")
    assert task.score(qa3, "Before the office, the milk was in the hallway.") == 1.0  # the question's room ignored
    assert task.score(qa3, "office") == 0.0
