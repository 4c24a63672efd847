"""``tool-conversation`` (DeepMiner, arXiv 2510.08276): the gold read back independently from the generated
conversation, recent vs old questions under the three policies, sizing with a tiny and the packaged tokenizer,
and the scorer on hand-written answers."""

from __future__ import annotations

import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks.tool_conversation import score_value

TOK = byte_tokenizer()


@pytest.fixture(scope="module")
def smollm2():
    from longreach.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def gold_from_text(context: str, question: str) -> str | None:
    """The answer read out of a rendered transcript with regexes, independently of the generator's records."""
    m = re.search(r"read the file (\S+)\. What value did that file set for (\w+)\?", question)
    if m:
        path, key = m.groups()
        block = re.search(rf"\[tool read_file\] # {re.escape(path)}\n(.*?)(?:\n\n|$)", context, re.S)
        found = block and re.search(rf"^{key} = (\d+)$", block.group(1), re.M)
        return found.group(1) if found else None
    m = re.search(r'searched for "([^"]+)"\. What was the document id of the result titled "([^"]+)"\?', question)
    assert m, question
    query, title = m.groups()
    block = re.search(rf'\[tool search\] Results for "{re.escape(query)}":\n(.*?)(?:\n\n|$)', context, re.S)
    found = block and re.search(rf"\[doc (\d+)\] {re.escape(title)} - ", block.group(1))
    return found.group(1) if found else None


# ---------------------------------------------------------------------------------------------- gold
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("ask", ["recent", "old"])
def test_gold_is_the_value_in_the_asked_tool_output(seed, ask):
    s = make_task(f"tool-conversation:policy=full,ask={ask}").generate(TOK, 40000, seed=seed)
    gold = s.references[0]
    assert gold_from_text(s.context, s.question) == gold and len(gold) == 6
    # the gold is in exactly one place: its tool output, never in an assistant turn or the question
    assert len(re.findall(rf"(?<!\d){gold}(?!\d)", s.context)) == 1 and gold not in s.question
    for block in s.context.split("\n\n"):
        if block.startswith(("[assistant]", "[user]", "[system]")):
            assert gold not in block
    outputs = [b for b in s.context.split("\n\n") if b.startswith("[tool ")]
    assert len(outputs) == s.meta["turns"] == 100
    at = next(k for k, b in enumerate(outputs) if gold in b)
    assert at + 1 == s.meta["target_turn"]
    if ask == "recent":
        assert s.meta["turns_from_end"] <= 3
    else:
        assert at < 50 and s.meta["turns_from_end"] > 3
    assert s.meta["gold_in_context"] and s.meta["omitted_outputs"] == 0


@pytest.mark.parametrize("ask", ["recent", "old"])
def test_the_conversation_is_the_same_under_every_policy(ask):
    full = make_task(f"tool-conversation:policy=full,ask={ask}").generate(TOK, 40000, seed=9)
    for policy, length in [("dynamic", 20000), ("truncate", 8000), ("dynamic", 4000)]:
        s = make_task(f"tool-conversation:policy={policy},ask={ask}").generate(TOK, length, seed=9)
        assert (s.question, s.references) == (full.question, full.references)
        for block in s.context.split("\n\n"):  # every block sent is in the full transcript, or is a placeholder
            assert block in full.context or re.fullmatch(r"\[tool \w+\] \[tool output \d+ omitted: \d+ tokens\]",
                                                         block), block


def test_dynamic_keeps_recent_outputs_and_replaces_old_ones():
    recent = make_task("tool-conversation").generate(TOK, 20000, seed=4)  # all 100 turns fit with placeholders
    old = make_task("tool-conversation:ask=old").generate(TOK, 20000, seed=4)
    assert recent.meta["kept_turns"] == old.meta["kept_turns"] == 100
    assert recent.meta["omitted_outputs"] == 97 and recent.context.count("omitted:") == 97
    assert recent.meta["gold_in_context"] and recent.references[0] in recent.context
    assert not old.meta["gold_in_context"] and old.references[0] not in old.context
    assert gold_from_text(recent.context, recent.question) == recent.references[0]
    # truncation at a length that holds only the newest turns: recent kept, old dropped with its turn
    t_recent = make_task("tool-conversation:policy=truncate").generate(TOK, 8000, seed=4)
    t_old = make_task("tool-conversation:policy=truncate,ask=old").generate(TOK, 8000, seed=4)
    assert t_recent.meta["gold_in_context"] and not t_old.meta["gold_in_context"]
    assert t_old.meta["kept_turns"] < 100 - t_old.meta["target_turn"] + 1
    assert t_recent.meta["omitted_outputs"] == 0


# ---------------------------------------------------------------------------------------------- sizing
@pytest.mark.parametrize("policy", ["dynamic", "truncate"])
@pytest.mark.parametrize("length", [1500, 3000, 6000])
def test_prompt_fits_and_truncate_fills(policy, length):
    task = make_task(f"tool-conversation:policy={policy}")
    s = task.generate(TOK, length, seed=2)
    budget = length - task.max_new_tokens
    assert s.meta["tokens"] == prompt_tokens(TOK, s) <= budget
    assert s.meta["tokens"] >= budget - 450  # within one turn (a full tool output + its call) of the length
    assert s.meta["gold_in_context"]


def test_smollm2_keeps_100_turns_within_8k_and_full_needs_more(smollm2):
    dyn = make_task("tool-conversation").generate(smollm2, 8192, seed=1)
    assert dyn.meta["tokens"] == prompt_tokens(smollm2, dyn) <= 8192 - 32
    assert dyn.meta["kept_turns"] == 100 and dyn.meta["gold_in_context"]
    with pytest.raises(BenchError, match="full 100-turn conversation takes \\d+ prompt tokens.*longer length"):
        make_task("tool-conversation:policy=full").generate(smollm2, 8192, seed=1)
    full = make_task("tool-conversation:policy=full").generate(smollm2, 32768, seed=1)
    assert 8192 < full.meta["tokens"] == prompt_tokens(smollm2, full) <= 32768 - 32
    trunc = make_task("tool-conversation:policy=truncate").generate(smollm2, 8192, seed=1)
    assert 8192 - 32 - 400 <= trunc.meta["tokens"] <= 8192 - 32 and trunc.meta["kept_turns"] < 100


def test_too_short_and_bad_parameters():
    with pytest.raises(BenchError, match="system and task messages alone take .*longer length"):
        make_task("tool-conversation").generate(TOK, 300, seed=0)
    for spec, match in [("policy=summary", "policy"), ("ask=middle", "ask"), ("turns=5", "turns"),
                        ("keep_last=0", "keep_last"), ("turns=10,keep_last=5", "turns")]:
        with pytest.raises(BenchError, match=match):
            make_task(f"tool-conversation:{spec}")
    assert make_task("tool-conversation:turns=30,keep_last=5").generate(TOK, 4000, seed=0).meta["turns"] == 30


def test_deterministic_per_seed():
    a, b = (make_task("tool-conversation:ask=old").generate(TOK, 3000, seed=11) for _ in range(2))
    assert a == b
    c = make_task("tool-conversation:ask=old").generate(TOK, 3000, seed=12)
    assert c.references != a.references


# ---------------------------------------------------------------------------------------------- scorer
@pytest.mark.parametrize("prediction,expected", [
    ("482913", 1.0),  # right
    ("The value of retry_limit is 482913.", 1.0),  # verbose
    ("doc 482913, I think", 1.0),
    ("482914", 0.0),  # wrong
    ("48291", 0.0),  # partial
    ("1482913", 0.0),  # inside a longer number
    ("4829130", 0.0),
    ("I could not find it.", 0.0),
    ("", 0.0),
])
def test_scorer(prediction, expected):
    task = make_task("tool-conversation")
    s = Sample("ctx", "q", "Answer:", ["482913"], {})
    assert task.score(s, prediction) == expected == score_value(prediction, "482913")


def test_cell_metrics():
    task = make_task("tool-conversation")
    records = [{"meta": {"gold_in_context": True, "kept_turns": 100}},
               {"meta": {"gold_in_context": False, "kept_turns": 50}}]
    assert task.cell_metrics(records) == {"gold_in_context": 0.5, "kept_turns": 75}
    assert task.cell_metrics([]) == {}
