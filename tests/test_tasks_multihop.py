"""Multi-hop and aggregation tasks: chains that need every hop, distractors, sizing, determinism, scorers by hand."""

from __future__ import annotations

import re

import pytest
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.bench.task import BenchError, Sample, describe_tasks, make_task, prompt_tokens
from longreach.bench.tasks.multihop import LINKS, first_number, first_sentence

TOK = byte_tokenizer()
SPECS = ["multihop", "multihop:hops=3", "multihop:hops=3,distractors=5", "aggregate", "aggregate:op=compare",
         "aggregate:op=count,items=12"]


def _sample(question: str, refs: list[str], **meta) -> Sample:
    return Sample("ctx", question, "", refs, meta)


# ------------------------------------------------------------------------------------------ scorers
def test_multihop_scorer_by_hand():
    t = make_task("multihop")
    s = _sample("Which river runs through the town where Orla Tansy lives?", ["Ostrel"],
                candidates=["Ostrel", "Vardle", "Mirren"])
    assert t.score(s, "Ostrel.") == 1.0  # right
    assert t.score(s, "the ostrel, which flows east") == 1.0  # case-insensitive
    assert t.score(s, "Orla Tansy lives in Brasket, and the river Ostrel runs through Brasket.") == 1.0  # verbose
    assert t.score(s, "Vardle.") == 0.0  # wrong: a distractor chain's river
    assert t.score(s, "Brasket.") == 0.0  # partial: stopped at the bridge town
    assert t.score(s, "Ostrel or Vardle.") == 0.0  # hedge naming another river
    assert t.score(s, "Vardle. No wait, Ostrel.") == 0.0  # only the first sentence counts
    assert t.score(s, "Ostrelton.") == 0.0  # whole words only
    assert t.score(s, "The text does not mention the river Ostrel.") == 0.0  # declines
    assert t.score(s, "") == 0.0
    person = _sample("Who is the mayor of the town where Orla Tansy works?", ["Idris Vantreck"],
                     candidates=["Idris Vantreck", "Lars Ashgrove"])
    assert t.score(person, "Idris Vantreck.") == 1.0
    assert t.score(person, "Idris.") == 0.0  # partial name
    assert t.score(person, "Orla Tansy works in Brasket, whose mayor is Idris Vantreck.") == 1.0
    # the subject named in the question is never counted as another candidate
    founder = _sample("Who founded the observatory where Orla Tansy works?", ["Idris Vantreck"],
                      candidates=["Idris Vantreck", "Orla Tansy", "Lars Ashgrove"])
    assert t.score(founder, "Orla Tansy's observatory was founded by Idris Vantreck.") == 1.0
    assert t.score(founder, "Idris Vantreck and Lars Ashgrove.") == 0.0


def test_count_scorer_by_hand():
    t = make_task("aggregate")
    s = _sample("How many storms did the lighthouse keeper of Varnholm log in the text?", ["6"], op="count")
    assert t.score(s, "6") == 1.0
    assert t.score(s, " six storms.") == 1.0  # words accepted
    assert t.score(s, "Six.") == 1.0
    assert t.score(s, "The keeper logged 6 storms, on 3 March, 9 May, ...") == 1.0  # verbose: first number
    assert t.score(s, "7") == 0.0  # wrong
    assert t.score(s, "sixteen") == 0.0  # not "six"
    assert t.score(s, "3 March, 9 May and four others: 6 in all") == 0.0  # the first number counts
    assert t.score(s, "several storms") == 0.0  # no number
    assert t.score(s, "The text does not say how many: 6?") == 0.0  # declines
    big = _sample("q", ["21"], op="count")
    assert t.score(big, "twenty-one storms") == 1.0 and t.score(big, "Twenty one") == 1.0
    assert t.score(big, "twenty") == 0.0  # partial


def test_compare_scorer_by_hand():
    t = make_task("aggregate:op=compare")
    s = _sample("Which ship carried more crates in total, the Amber Tern or the Marrow Wren?", ["Marrow Wren"],
                op="compare", loser="Amber Tern")
    assert t.score(s, "Marrow Wren.") == 1.0
    assert t.score(s, "Marrow Wren, with 372 crates against the Amber Tern's 287.") == 1.0  # verbose
    assert t.score(s, "Amber Tern.") == 0.0  # wrong
    assert t.score(s, "Amber Tern carried less than the Marrow Wren.") == 0.0  # loser named first
    assert t.score(s, "Wren") == 0.0  # partial name
    assert t.score(s, "It cannot be determined from the text.") == 0.0  # declines


def _words(n: int) -> str:
    """An independent spelling of 0..99 (written out, not the parser's tables)."""
    small = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
             9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen", 15: "fifteen",
             16: "sixteen", 17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty", 30: "thirty",
             40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty", 90: "ninety"}
    if n in small:
        return small[n]
    return f"{small[n - n % 10]}-{small[n % 10]}"


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 99), big=st.integers(0, 10**9), case=st.sampled_from([str.lower, str.title, str.upper]),
       sep=st.sampled_from(["-", " "]), lead=st.sampled_from(["", "I count ", "Answer: ", "(", "\n"]),
       tail=st.sampled_from(["", " storms.", ", then 3 more", "."]))
def test_number_parser_reads_digits_and_words(n, big, case, sep, lead, tail):
    assert first_number(lead + case(_words(n)).replace("-", sep) + tail) == n
    assert first_number(lead + str(big) + tail) == big
    assert first_number(lead + f"{big:,}" + tail) == big  # thousands separators
    assert first_number(lead + "many storms" + tail) == (3 if "3" in tail else None)


def test_first_sentence():
    assert first_sentence(" It is 3.5 km. Then more") == "It is 3.5 km"
    assert first_sentence("Ostrel\nVardle") == "Ostrel"


# ------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("spec", SPECS)
def test_sample_fits_the_budget_and_is_deterministic(spec):
    task = make_task(spec)
    a = task.generate(TOK, 3000, seed=5)
    assert a.meta["tokens"] == prompt_tokens(TOK, a) <= 3000 - task.max_new_tokens
    assert a.meta["tokens"] >= 0.85 * (3000 - task.max_new_tokens)
    assert a.max_new_tokens == 32 and task.uses_depth is False and a.meta["depth"] is None
    assert task.generate(TOK, 3000, seed=5) == a
    b = task.generate(TOK, 3000, seed=6)
    assert (b.context, b.question) != (a.context, a.question)
    assert task.score(a, a.references[0]) == 1.0


@pytest.mark.parametrize("spec", ["multihop", "multihop:hops=3,distractors=0", "aggregate", "aggregate:op=compare"])
def test_filler_false_keeps_the_facts_question_and_answer_without_the_essays(spec):
    """The control: the same facts, question, prefix and reference as with the essays, and nothing else."""
    full = make_task(spec).generate(TOK, 3000, seed=3)
    bare = make_task(spec + ("," if ":" in spec else ":") + "filler=false").generate(TOK, 3000, seed=3)
    facts = full.meta.get("facts") or full.meta["hop_facts"] + full.meta["distractor_facts"]
    assert (bare.question, bare.answer_prefix, bare.references) == (full.question, full.answer_prefix,
                                                                    full.references)
    assert bare.meta["haystack_units"] == 0 < full.meta["haystack_units"]
    preamble, body = bare.context.split("\n", 1)
    assert full.context.startswith(preamble + "\n")
    assert sorted(body.split(" ")) == sorted(" ".join(facts).split(" "))  # the facts, every word, nothing else
    assert sorted(facts, key=body.index) == sorted(facts, key=full.context.index)  # the long text's order
    assert bare.meta["tokens"] < full.meta["tokens"] / 3
    assert "filler=false" in bare.meta["spec"]


@pytest.mark.parametrize("spec", ["multihop:hops=3,distractors=8", "aggregate:items=40",
                                  "aggregate:op=compare,items=40"])
def test_facts_that_do_not_fit_raise(spec):
    with pytest.raises(BenchError, match="facts alone do not fit"):
        make_task(spec).generate(TOK, 600, seed=0)


@pytest.mark.parametrize("hops", [2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_multihop_chain_needs_every_hop(hops, seed):
    s = make_task(f"multihop:hops={hops}").generate(TOK, 2500, seed=seed)
    m, answer, subject = s.meta, s.references[0], s.meta["subject"]
    hop_facts, bridges = m["hop_facts"], m["bridges"]
    assert m["hops"] == hops == len(hop_facts) and len(bridges) == hops - 1
    chain = [subject, *bridges, answer]
    for fact in hop_facts + m["distractor_facts"]:
        assert s.context.count(fact) == 1  # every fact exactly once
    for i, fact in enumerate(hop_facts):  # hop i links entity i to entity i+1
        assert chain[i].removeprefix("the ") in fact and chain[i + 1].removeprefix("the ") in fact
    for bridge in bridges:  # the bridge entities never appear in the question or the answer prefix
        assert bridge not in s.question and bridge.removeprefix("the ") not in s.question + s.answer_prefix
        distinctive = bridge.removeprefix("the ").split()[0]
        assert distinctive not in s.question
    assert answer not in s.question and subject in s.question
    # one fact is never enough: no fact names both the subject and the answer
    facts = hop_facts + m["distractor_facts"]
    assert not any(subject in f and answer in f for f in facts)
    # retrieval by the question's names finds hop 1 (and the decoy), never a later hop
    names = set(re.findall(r"\b[A-Z][a-z]+\b", s.question)) - {"Which", "Who", "In"}
    assert names and not any(n in f for f in hop_facts[1:] for n in names)
    # distractors: 2 chains of the same relations; the first leaves the subject through a decoy relation
    assert len(m["distractor_facts"]) == 2 * hops
    decoy = m["distractor_facts"][0]
    assert decoy.startswith(subject) and decoy not in hop_facts
    assert any(re.fullmatch(re.escape(t).replace(r"\{a\}", ".+").replace(r"\{b\}", ".+"), decoy)
               for t in LINKS[m["chain"][0]][3])
    # the distractor chains end in other entities of the answer's type
    wrong = m["distractor_answers"]
    assert len(wrong) == 2 and answer not in wrong and set(wrong) <= set(m["candidates"])
    assert all(any(w.removeprefix("the ") in f for f in m["distractor_facts"]) for w in wrong)
    assert all(make_task(f"multihop:hops={hops}").score(s, w) == 0.0 for w in wrong)
    # facts spread over the text, the hops' depths recorded
    assert len(m["hop_depths"]) == hops and all(0.0 <= d <= 1.0 for d in m["hop_depths_actual"])
    assert min(m["depths"]) == pytest.approx(0.05) and max(m["depths"]) == pytest.approx(0.95)


def test_multihop_uses_several_relations_and_distractor_counts():
    chains = {tuple(make_task("multihop:hops=3").generate(TOK, 2000, seed=k).meta["chain"]) for k in range(20)}
    assert len(chains) >= 3
    s = make_task("multihop:distractors=0").generate(TOK, 2000, seed=1)
    assert s.meta["distractor_facts"] == [] and s.meta["candidates"] == [s.references[0]]


_EVENT_RE = re.compile(r"(?:[Tt]he (?P<role1>[a-z ]+) of (?P<town1>[A-Z]\w+) \w+ an? (?P<event1>[a-z ]+) on \d+ \w+\."
                       r"|On \d+ \w+, the (?P<role2>[a-z ]+) of (?P<town2>[A-Z]\w+) \w+ an? (?P<event2>[a-z ]+)\."
                       r"|An? (?P<event3>[a-z ]+) was \w+ by the (?P<role3>[a-z ]+) of (?P<town3>[A-Z]\w+) on)")


@pytest.mark.parametrize("seed", range(8))
def test_count_matches_an_independent_count_of_the_context(seed):
    s = make_task("aggregate:items=6").generate(TOK, 3000, seed=seed)
    q = re.match(r"How many (.+) did the (.+) of (\w+) \w+ in the text\?", s.question)
    assert q
    plural, role, town = q.groups()
    found = []
    for m in _EVENT_RE.finditer(s.context):
        i = next(k for k in "123" if m.group(f"event{k}"))
        found.append((m.group(f"role{i}"), m.group(f"town{i}"), m.group(f"event{i}")))
    assert len(found) == s.meta["count"] + 6  # the events + items distractors, nothing else matches
    asked = [f for f in found if f[:2] == (role, town) and f[2] == s.meta["event"]]
    assert str(len(asked)) == s.references[0] == str(s.meta["count"])
    assert plural.startswith(s.meta["event"][:3]) and 3 <= s.meta["count"] <= 9
    assert any(f[1] != town and f[2] == s.meta["event"] for f in found)  # same event, another town
    assert any(f[1] == town and f[2] != s.meta["event"] for f in found)  # same official, another event


_CARGO_RE = re.compile(r"(?:[Tt]he (?P<s1>[A-Z][\w ]+?) carried (?P<n1>\d+) (?P<g1>\w+) to"
                       r"|the (?P<s2>[A-Z][\w ]+?) delivered (?P<n2>\d+) (?P<g2>\w+) to"
                       r"|(?P<n3>\d+) (?P<g3>\w+) came into \w+ aboard the (?P<s3>[A-Z][\w ]+?) in)")


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("items", [4, 7])
def test_compare_totals_from_the_context(seed, items):
    s = make_task(f"aggregate:op=compare,items={items}").generate(TOK, 3000, seed=seed)
    crates: dict[str, list[int]] = {}
    goods = set()
    for m in _CARGO_RE.finditer(s.context):
        i = next(k for k in "123" if m.group(f"s{k}"))
        goods.add(m.group(f"g{i}"))
        if m.group(f"g{i}") == "crates":
            crates.setdefault(m.group(f"s{i}"), []).append(int(m.group(f"n{i}")))
    winner, loser = s.references[0], s.meta["loser"]
    assert winner in s.question and loser in s.question
    assert sorted(crates[winner] + crates[loser]) == sorted(s.meta["crates"][winner] + s.meta["crates"][loser])
    assert len(crates[winner]) + len(crates[loser]) == items
    assert sum(crates[winner]) == s.meta["totals"][winner] > sum(crates[loser]) == s.meta["totals"][loser]
    assert max(crates[loser]) > max(crates[winner])  # the largest single shipment is the loser's
    assert len(crates) == 3 and goods == {"crates", "barrels"}  # a third ship's crates, barrels as distractors


def test_sizing_with_the_packaged_smollm2_tokenizer():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    for spec in ["multihop:hops=3", "aggregate:op=compare"]:
        task = make_task(spec)
        s = task.generate(tok, 1024, seed=2)
        assert s.meta["tokens"] == prompt_tokens(tok, s) <= 1024 - 32
        assert all(f in s.context for f in s.meta.get("hop_facts", s.meta.get("facts", [])))


def test_parameters_are_validated_and_listed():
    for bad, msg in [("multihop:hops=4", "hops must be 2 or 3"), ("multihop:distractors=9", "distractors"),
                     ("aggregate:op=sum", "op must be count or compare"), ("aggregate:items=1", "items"),
                     ("aggregate:op=compare,items=3", "items must be within 4..40")]:
        with pytest.raises(BenchError, match=msg):
            make_task(bad)
    rows = {r["name"]: r for r in describe_tasks()}
    assert rows["multihop"]["family"] == rows["aggregate"]["family"] == "Multi-hop"
    assert "2407.11963" in make_task("multihop").paper and "arXiv" in make_task("aggregate").paper
