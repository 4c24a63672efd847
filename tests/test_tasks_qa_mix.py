"""qa-mix (issue 16): scorer on hand-written answers, keywords unique in the document and absent from the
question, the needle once, sizing with the packaged SmolLM2 tokenizer, determinism, variety across seeds,
every haystack kind, and code needles that keep the Python file valid."""

from __future__ import annotations

import ast
import collections
import functools
import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks import qa_mix

TOK = byte_tokenizer()


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from longreach.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@functools.lru_cache(maxsize=1)
def samples_1k() -> list[Sample]:
    task = make_task("qa-mix")
    return [task.generate(smollm2_tokenizer(), 1024, seed=s, depth=(s % 5) / 4) for s in range(24)]


def words(text: str) -> list[str]:
    """Whole words of ``text`` (hyphenated codes kept together), lower-cased: the test's own reference."""
    return [w.lower() for w in re.findall(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*", text)]


def test_scorer_on_hand_written_answers():
    task = make_task("qa-mix")
    one = Sample("...", "How many steps does the lighthouse of Orrin have?", "", ["417"], {})
    two = Sample("...", "Who leads the choir of Orrin?", "", ["Quelmere", "Dorvik"], {})
    code = Sample("...", "What is the access code of the Orrin gate?", "", ["amber-falcon-42"], {})
    assert task.score(one, "417") == 1.0
    assert task.score(one, "The lighthouse of Orrin has 417 steps, as the surveyors counted.") == 1.0  # verbose
    assert task.score(one, "4170") == 0.0 and task.score(one, "1417 steps") == 0.0  # numbers exact
    assert task.score(one, "It has 418 steps.") == 0.0  # wrong
    assert task.score(one, "The text does not mention the number of steps.") == 0.0  # declines
    assert task.score(one, "") == 0.0
    assert task.score(two, "quelmere dorvik") == 1.0  # case-insensitive
    assert task.score(two, "Quelmere") == 0.0  # partial: one of two keywords
    assert task.score(two, "Quelmeres Dorvik") == 0.0  # whole words only
    assert task.score(code, "The access code is amber-falcon-42.") == 1.0
    assert task.score(code, "amber-falcon") == 0.0
    assert task.score(code, "The code amber-falcon-42 is not mentioned in the text.") == 0.0  # a decline wins


def test_keywords_unique_needle_once_and_prompt_within_budget():
    budget = 1024 - make_task("qa-mix").max_new_tokens
    for s in samples_1k():
        m = s.meta
        assert s.references == m["keywords"] and 1 <= len(s.references) <= 2
        assert s.context.count(m["needle"]) == 1, m["needle"]
        doc = words(s.context)
        for k in s.references:
            assert doc.count(k.lower()) == 1, (m["seed"], k)  # in the needle and nowhere else
            assert k.lower() in words(m["needle"])
            assert k.lower() not in words(s.question), (k, s.question)
        assert s.answer_prefix == ""
        assert m["tokens"] == prompt_tokens(smollm2_tokenizer(), s) <= budget
        assert m["tokens"] >= 0.9 * budget
        assert 0.0 <= m["depth_actual"][0] <= 1.02  # token depth: tokens before / (tokens - needle)


def test_variety_over_seeds():
    metas = [s.meta for s in samples_1k()]
    combos = {(m["haystack"], m["phrasing"], m["style"]) for m in metas}
    assert len(combos) >= 12, combos
    assert {m["haystack"] for m in metas} == set(qa_mix.HAYSTACKS)
    assert {m["style"] for m in metas} == {"direct", "paraphrase"}
    assert {m["form"] for m in metas} == {"question", "imperative"}
    assert len({m["fact"] for m in metas}) >= 4
    assert len({m["phrasing"] for m in metas}) >= 5
    assert max(collections.Counter(s.question.split()[0] for s in samples_1k()).values()) <= 12  # no one template


def test_deterministic_and_seeded():
    task = make_task("qa-mix")
    a, b = (task.generate(TOK, 2000, seed=11, depth=0.3) for _ in range(2))
    assert a == b
    c = task.generate(TOK, 2000, seed=12, depth=0.3)
    assert (c.context, c.question) != (a.context, a.question)


@pytest.mark.parametrize("haystack", qa_mix.HAYSTACKS)
def test_each_haystack_generates_at_the_depth(haystack):
    task = make_task(f"qa-mix:haystack={haystack}")
    for seed, depth in ((1, 0.1), (2, 0.5), (3, 0.9)):
        s = task.generate(TOK, 4000, seed=seed, depth=depth)
        assert s.meta["haystack"] == haystack and s.meta["phrasing"] in qa_mix.PHRASINGS[haystack]
        assert prompt_tokens(TOK, s) <= 4000 - task.max_new_tokens
        assert abs(s.meta["depth_actual"][0] - depth) < 0.12, (seed, depth, s.meta["depth_actual"])
        assert task.score(s, " and ".join(s.references)) == 1.0
        if haystack == "code":
            assert s.context.startswith("# file: ") and s.meta["source"].startswith("python")
        if haystack == "lists":  # the row sits in a register of its own kind, after a row of the same shape
            lines = s.context.splitlines()
            at = lines.index(s.meta["needle"])
            assert lines[at - 1].startswith("- ")
            header = next(line for line in reversed(lines[:at]) if line.endswith(":") and not line.startswith("- "))
            title = qa_mix.LIST_TITLES[s.meta["fact"]].split(",")[0].split(" (")[0]
            assert header.startswith(title), (header, title)
        if haystack in ("essays", "prose"):
            assert "\n" not in s.meta["needle"] and s.meta["needle"].endswith(".")


@pytest.mark.parametrize("phrasing", ["constant", "active"])
def test_code_needle_keeps_the_file_valid_python(phrasing):
    """Insert the needle at every place the code haystack allows in two real files: each still parses."""
    fact = qa_mix.make_fact("code", __import__("random").Random(0))
    for module in ("textwrap", "heapq"):
        stream = qa_mix.CodeStream(0)
        stream.units, stream.tags, stream.constant_ok = [], [], []
        stream.modules, stream.next = [module], 0
        stream._more()  # the header and the lines of one file
        n = len(stream.units)
        slots = stream.slots(n, fact, phrasing)
        assert len(slots) > 20
        for at in slots[::4]:
            needle = stream.needle(fact.phrasings[phrasing], at, phrasing)
            tree = ast.parse("".join(stream.units[:at] + [needle] + stream.units[at:]))
            if phrasing == "constant":  # a module-level or class-level constant, never inside a function
                bodies = [tree.body] + [c.body for c in ast.walk(tree) if isinstance(c, ast.ClassDef)]
                names = [t.id for body in bodies for st in body if isinstance(st, ast.Assign)
                         for t in st.targets if isinstance(t, ast.Name)]
                assert fact.phrasings["constant"].split(" = ")[0] in names


def test_filters_and_bad_parameters():
    task = make_task("qa-mix:haystack=code,phrasing=constant,style=paraphrase")
    for seed in range(4):
        m = task.generate(TOK, 1500, seed=seed).meta
        assert (m["haystack"], m["phrasing"], m["style"]) == ("code", "constant", "paraphrase")
        assert re.fullmatch(r"[A-Z0-9_]+ = .+", m["needle"])
    assert make_task("qa-mix:phrasing=row").generate(TOK, 1500, seed=5).meta["haystack"] == "lists"
    with pytest.raises(BenchError, match="haystack must be mix or one of"):
        make_task("qa-mix:haystack=novels")
    with pytest.raises(BenchError, match="use haystack=code"):
        make_task("qa-mix:haystack=prose,phrasing=constant")
    with pytest.raises(BenchError, match="style must be"):
        make_task("qa-mix:style=casual")


def test_sizes_to_32k_with_the_real_tokenizer():
    tok = smollm2_tokenizer()
    s = make_task("qa-mix:haystack=lists").generate(tok, 32768, seed=4, depth=0.6)
    assert 0.97 * (32768 - 32) <= s.meta["tokens"] == prompt_tokens(tok, s) <= 32768 - 32
    for k in s.references:
        assert words(s.context).count(k.lower()) == 1
