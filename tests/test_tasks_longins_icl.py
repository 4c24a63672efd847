"""LongIns settings (GIST / LIST / LIMT) and the many-shot ICL curve and query batching: defaults unchanged,
gold answers re-derived from the item texts, and the batched scorer on hand-written answers."""

from __future__ import annotations

import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens

TOK = byte_tokenizer()


def _solve(q: str) -> str:
    """The right answer of an item's question, computed here from its text."""
    if m := re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    if m := re.fullmatch(r"How many times does the letter '(.)' occur in '(\w+)'\?", q):
        return str(m[2].count(m[1]))
    if m := re.fullmatch(r"Which is larger, (\d+) or (\d+)\?", q):
        return str(max(int(m[1]), int(m[2])))
    if m := re.fullmatch(r"Sort ([\d, ]+) in ascending order\.", q):
        return ", ".join(map(str, sorted(int(x) for x in m[1].split(", "))))
    if m := re.fullmatch(r"Reverse the word '(\w+)'\.", q):
        return m[1][::-1]
    m = re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q)
    per = {("minutes", "hours"): 60, ("seconds", "minutes"): 60, ("hours", "days"): 24, ("metres", "kilometres"): 1000}
    return str(int(m[2]) * per[(m[1], m[3])])


def test_gist_is_the_default_and_unchanged():
    a = make_task("longins").generate(TOK, 3000, seed=1)
    b = make_task("longins:setting=gist").generate(TOK, 3000, seed=1)
    assert a == b or (a.context, a.references) == (b.context, b.references)
    assert a.context.startswith("Below are numbered question-answer items. Some answers are wrong.\nItem 1. Q: ")
    assert "Segment" not in a.context and "setting" not in a.meta


@pytest.mark.parametrize("setting", ["gist", "list", "limt"])
def test_settings_gold_from_the_items(setting):
    task = make_task(f"longins:setting={setting},wrong=0.3")
    s = task.generate(TOK, 6000, seed=2)
    assert 0.9 * (6000 - task.max_new_tokens) <= s.meta["tokens"] == prompt_tokens(TOK, s)
    items = re.findall(r"^Item (\d+)\. Q: (.*?) A: (.*)$", s.context, flags=re.M)
    assert [int(n) for n, _, _ in items] == list(range(1, len(items) + 1)) == list(range(1, s.meta["items"] + 1))
    wrong = [n for n, q, a in items if _solve(q) != a]
    assert wrong == s.references and wrong
    segments = s.context.count("Segment ")
    if setting == "gist":
        assert segments == 0
    else:
        assert segments == s.meta["segments"] == -(-len(items) // 8)
        assert (s.meta["task_types"] == 1) == (setting == "list")
    if setting == "limt":
        assert s.meta["task_types"] >= 3


def test_icl_shots_curve_and_limits():
    s = make_task("many-label-icl:shots=30").generate(TOK, 8000, seed=1)
    assert s.meta["demos"] == 30 == s.context.count("\nLabel: ") and s.meta["tokens"] == prompt_tokens(TOK, s)
    assert s.meta["gold_demos"] == [sum(1 for line in s.context.splitlines() if line == f"Label: {s.references[0]}")]
    fill = make_task("many-label-icl").generate(TOK, 8000, seed=1)
    assert fill.meta["demos"] > 30 and "gold_demos" not in fill.meta
    with pytest.raises(BenchError, match="fewer shots"):
        make_task("many-label-icl:shots=5000").generate(TOK, 8000, seed=1)


def test_icl_query_batching():
    task = make_task("many-label-icl:queries=4")
    assert make_task("many-label-icl").max_new_tokens == 12 and task.max_new_tokens == 44
    s = task.generate(TOK, 6000, seed=2)
    assert len(s.references) == 4 and s.question.count("Sentence ") == 4 and s.meta["queries"] == 4
    assert 0.9 * (6000 - 44) <= s.meta["tokens"] <= 6000 - 44
    r = s.references
    names = s.meta["label_names"]
    other = next(n for n in names if n not in r)
    assert task.score(s, "\n".join(f"{i + 1}. {x}" for i, x in enumerate(r))) == 1.0
    assert task.score(s, " ".join(f"{i + 1}) {x}" for i, x in enumerate(r))) == 1.0  # one line
    assert task.score(s, "The labels are " + ", ".join(r) + ".") == 1.0  # verbose, unnumbered
    assert task.score(s, f"1. {r[0]}\n2. {other}\n3. {r[2]}\n4. {other}") == 0.5  # partial
    assert task.score(s, f"2. {r[1]}\n1. {r[0]}") == 0.5  # out of order, two missing
    assert task.score(s, "I could not find it.") == 0.0
    recs = [{"meta": s.meta}, {"meta": {**s.meta, "tokens": s.meta["tokens"] + 400}}]
    assert task.cell_metrics(recs) == {"tokens_per_query": pytest.approx((2 * s.meta["tokens"] + 400) / 8)}
    single = Sample("", "q", "Label:", [r[0]], {"label_names": names})
    assert make_task("many-label-icl").score(single, f"{r[0]}") == 1.0
