"""Benchmark tasks: exact sizing with the tokenizer, depths, determinism, and scorers on hand-written answers."""

from __future__ import annotations

import pytest
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.bench.cache import cached_sample
from longreach.bench.passkey import ANSWER_PREFIX, QUESTION, make_passkey_document, score_passkey
from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens, string_match_all, task_names
from longreach.bench.tasks.needlebench import atc_match, boxed

TOK = byte_tokenizer()
GENERATE = [n for n in task_names() if n not in ("ppl", "dataset")]  # dataset: needs a user's file


def oracle_answer(sample: Sample) -> str:
    return ", ".join(sample.references)


def test_registry_lists_every_family():
    names = set(task_names())
    assert {"passkey", "niah", "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1",
            "niah_multikey_2", "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe",
            "kv-retrieval", "needlebench-srt", "needlebench-mrt", "needlebench-mrs", "atc", "passage-count",
            "passage-retrieval", "longins", "many-label-icl", "ppl", "lara_location", "lara_reasoning",
            "lara_comparison", "lara_hallucination", "html-to-tsv", "path-traversal", "countdown",
            "loogle-timeline", "loogle-computation", "babilong", "code-definition", "code-callchain",
            "code-changed", "tool-choice", "ehr-sequence", "dataset", "beliefs", "tool-conversation",
            "multihop", "aggregate"} <= names


@pytest.mark.parametrize("name", GENERATE)
@pytest.mark.parametrize("length", [1500, 4000])
def test_prompt_fits_close_to_length_and_scores(name, length):
    task = make_task(name)
    s = task.generate(TOK, length, seed=3, depth=0.4)
    budget = length - task.max_new_tokens
    real = prompt_tokens(TOK, s)
    assert s.meta["tokens"] == real <= budget
    if not (name == "atc" and task.needles) and name != "fwe":
        assert real >= 0.85 * budget, (real, budget)  # close to the request, not silently short
    assert s.meta["seed"] == 3 and s.meta["length"] == length
    assert task.score(s, oracle_answer(s)) == 1.0
    assert task.score(s, "I could not find it.") == 0.0


@pytest.mark.parametrize("name", GENERATE)
def test_generation_is_deterministic_and_seeded(name):
    task = make_task(name)
    a, b = (task.generate(TOK, 2000, seed=7, depth=0.3) for _ in range(2))
    assert a == b
    c = task.generate(TOK, 2000, seed=8, depth=0.3)
    assert (c.context, c.references) != (a.context, a.references)


@pytest.mark.parametrize("name", ["passkey", "niah", "niah_single_1", "niah_single_2", "needlebench-srt",
                                  "kv-retrieval"])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_needle_lands_at_the_requested_depth(name, depth):
    s = make_task(name).generate(TOK, 6000, seed=1, depth=depth)
    assert s.meta["depth"] == depth
    assert abs(s.meta["depth_actual"][0] - depth) < 0.06, s.meta["depth_actual"]


@settings(max_examples=25, deadline=None)
@given(length=st.integers(200, 5000), depth=st.floats(0, 1), seed=st.integers(0, 10**6))
def test_passkey_sizing_property(length, depth, seed):
    task = make_task("passkey:instruction=false")  # the byte tokenizer spends ~150 tokens on the instruction
    s = task.generate(TOK, length, seed=seed, depth=depth)
    budget = length - task.max_new_tokens
    assert budget - 40 <= s.meta["tokens"] <= budget  # a noise sentence is < 40 byte tokens
    assert s.references[0] in s.context
    # the needle goes to the nearest sentence boundary: off by at most half of the longest noise sentence
    # (22 of a mean 18 characters), which is a coarse step when only a few sentences fit
    assert abs(s.meta["depth_actual"][0] - depth) <= max(0.1, 0.7 / s.meta["haystack_units"])


def test_passkey_opens_with_the_instruction_line():
    from longreach.bench.passkey import INSTRUCTION

    with_line = make_task("passkey").generate(TOK, 1500, seed=3, depth=0.5)
    without = make_task("passkey:instruction=false").generate(TOK, 1500, seed=3, depth=0.5)
    assert with_line.context.startswith(INSTRUCTION + "\n")
    assert INSTRUCTION not in without.context
    assert with_line.references == without.references


def test_too_short_raises_a_one_line_error():
    with pytest.raises(BenchError, match="too short"):
        make_task("passkey").generate(TOK, 20, seed=0)
    with pytest.raises(BenchError, match="longer length"):
        make_task("needlebench-mrt").generate(TOK, 300, seed=0)


def test_task_specs_are_validated():
    assert make_task("niah_multikey_1:keys=2").keys == 2
    assert make_task("niah_multiquery").queries == 4 and make_task("niah_single_1").haystack == "noise"
    with pytest.raises(BenchError, match="no parameter 'nope'"):
        make_task("passkey:nope=1")
    with pytest.raises(BenchError, match="unknown task"):
        make_task("passkeys")
    with pytest.raises(BenchError, match="digits"):
        make_task("passkey:digits=40")
    with pytest.raises(BenchError, match="no such file"):
        make_task("niah:haystack=/no/such/file.txt").generate(TOK, 1000)


def test_user_haystack_file(tmp_path):
    f = tmp_path / "hay.txt"
    f.write_text("Zebras graze at dawn. " * 50 + "Owls hunt at night. " * 50)
    s = make_task(f"niah:haystack={f}").generate(TOK, 1500, seed=0, depth=0.5)
    assert "Zebras graze" in s.context and "juniper" in s.context


def test_multi_needle_tasks_hold_every_needle():
    s = make_task("niah_multivalue").generate(TOK, 3000, seed=2, depth=0.5)
    assert len(s.references) == 4 and all(v in s.context for v in s.references)
    s = make_task("niah_multikey_3").generate(TOK, 3000, seed=2, depth=0.5)
    assert s.context.count("One of the special magic uuids") > 5  # the haystack is distractor needles
    s = make_task("vt").generate(TOK, 3000, seed=2)
    assert len(s.references) == 5 and all(f"VAR {v} =" in s.context for v in s.references)


# ------------------------------------------------------------------------------- scorers, by hand
def _sample(refs, prefix="", **meta):
    return Sample("ctx", "q", prefix, refs, meta)


def test_passkey_scorer():
    t = make_task("passkey")
    s = _sample(["48213"])
    assert t.score(s, "48213") == 1.0
    assert t.score(s, "48213. Remember it. 48213 is the pass key.") == 1.0  # verbose
    assert t.score(s, "48231") == 0.0  # wrong
    assert t.score(s, "4821") == 0.0  # partial key is wrong
    assert t.score(s, "is 7 or maybe 48213") == 0.0  # first integer counts (InfiniteBench)
    assert t.score(s, "") == 0.0
    assert score_passkey("The pass key is 99", "99") == 1.0
    assert QUESTION and ANSWER_PREFIX  # kept importable for the demo


def test_string_match_all_partial_and_case():
    refs = ["1234567", "7654321", "Silent-Harbor", "42"]
    assert string_match_all("1234567 and 7654321, also silent-harbor; 42", refs) == 1.0
    assert string_match_all("1234567 and SILENT-HARBOR", refs) == 0.5
    assert string_match_all("nothing here", refs) == 0.0


def test_ruler_niah_scorer_partial():
    t = make_task("niah_multivalue")
    s = _sample(["1111111", "2222222", "3333333", "4444444"])
    assert t.score(s, "1111111, 2222222, 3333333 and 4444444.") == 1.0
    assert t.score(s, "The numbers are 1111111 and 3333333, I think.") == 0.5
    assert t.score(s, "5555555") == 0.0


def test_atc_scorer():
    assert boxed("so the answer is \\boxed{Ilse}.") == "Ilse"
    assert boxed("no box") is None
    t = make_task("atc")
    s = _sample(["Ilse"], prefix="The answer is \\boxed{")
    assert t.score(s, "Ilse}") == 1.0  # continues the prefix's box
    assert t.score(s, "ilse} because ...") == 1.0  # case and trailing text after the box
    assert t.score(s, "Ilse Tarnwick}") == 0.0  # another person
    assert t.score(s, "Magnus}") == 0.0
    assert atc_match("The answer is \\boxed{\\text{Ilse}}", "", "Ilse") == 1.0
    assert atc_match("Ilse.", "", "Ilse") == 1.0  # no box: the first line, cleaned


def test_needlebench_scorers():
    srt = make_task("needlebench-srt")
    s = _sample(["ivory", "telescope"])
    assert srt.score(s, "ivory telescope") == 1.0
    assert srt.score(s, "a telescope") == 0.5
    mrt = make_task("needlebench-mrt")
    s = _sample(["ochre quill", "teal atlas", "azure hourglass", "jade harp"])
    assert mrt.score(s, "1. ochre quill 2. teal atlas 3. an hourglass") == 0.5
    mrs = make_task("needlebench-mrs")
    s = _sample(["Aurelia"], prefix="The eldest relative is \\boxed{")
    assert mrs.score(s, "Aurelia}") == 1.0 and mrs.score(s, "Odile}") == 0.0


def test_other_scorers():
    li = make_task("longins")
    s = _sample(["5", "18", "30"])
    assert li.score(s, "5, 18, 30") == 1.0
    assert li.score(s, "5, 18") == pytest.approx(0.8)  # P=1, R=2/3
    assert li.score(s, "1, 2") == 0.0
    assert li.score(_sample([]), "none") == 1.0  # nothing wrong, nothing listed
    pc = make_task("passage-count")
    assert pc.score(_sample(["7"]), "7 unique paragraphs") == 1.0 and pc.score(_sample(["7"]), "8") == 0.0
    pr = make_task("passage-retrieval")
    assert pr.score(_sample(["4"]), " 4") == 1.0 and pr.score(_sample(["4"]), "Paragraph 14") == 0.0
    icl = make_task("many-label-icl")
    s = _sample(["teal-bold"], label_names=["teal-bold", "jade-wise"])
    assert icl.score(s, "teal-bold") == 1.0
    assert icl.score(s, "jade-wise, not teal-bold") == 0.0  # the first label named counts


def test_ppl_sample_is_raw_text_of_the_length():
    t = make_task("ppl")
    s = t.generate(TOK, 1200, seed=0)
    assert 1150 <= s.meta["tokens"] <= 1200 and s.question == ""
    assert t.score(s, "100.0 50") == pytest.approx(7.389, rel=1e-3)  # exp(2)


def test_legacy_passkey_document_still_works():
    doc = make_passkey_document(TOK, 500, depth=0.5, seed=1)
    assert doc.tokens <= 500 and doc.key in doc.text


def test_sample_cache_reuses_generated_samples(tmp_path, monkeypatch):
    task = make_task("niah_single_1")
    a = cached_sample(task, TOK, 1500, 4, 0.5, root=tmp_path)
    assert len(list(tmp_path.glob("*/*.json"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a cached sample")

    monkeypatch.setattr(type(task), "generate", boom)
    assert cached_sample(task, TOK, 1500, 4, 0.5, root=tmp_path) == a
    with pytest.raises(AssertionError):  # another seed is another key
        cached_sample(task, TOK, 1500, 5, 0.5, root=tmp_path)
