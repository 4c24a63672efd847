"""MCPToolBench-style tool choice: schemas, sizing, the right tool at the depth, the retrieval comparison,
the JSON-call parser and the scorer on hand-written calls."""

from __future__ import annotations

import json

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks import mcptoolbench as mcp

TOK = byte_tokenizer()


def _schemas(context: str) -> list[dict]:
    return [json.loads(line) for line in context.splitlines()[1:]]


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_fills_the_length_with_the_right_tool_at_the_depth(depth):
    task = make_task("tool-choice")
    s = task.generate(TOK, 9000, seed=2, depth=depth)
    budget = 9000 - task.max_new_tokens
    assert 0.9 * budget <= s.meta["tokens"] == prompt_tokens(TOK, s) <= budget
    schemas = _schemas(s.context)
    names = [x["name"] for x in schemas]
    gold = json.loads(s.references[0])
    assert len(names) == len(set(names)) == s.meta["tools"] > 10 and names.count(gold["name"]) == 1
    assert names.index(gold["name"]) == s.meta["position"] == round(depth * (len(names) - 1))
    # the request names the service and object; the gold arguments are the schema's and hold its required ones
    service, _, obj = gold["name"].split("_", 2)
    assert f"the {service} service" in s.question and obj in s.question
    schema = schemas[names.index(gold["name"])]["inputSchema"]
    assert set(schema["required"]) <= set(gold["arguments"]) <= set(schema["properties"])
    for k, v in gold["arguments"].items():
        assert "enum" not in schema["properties"][k] or v in schema["properties"][k]["enum"]
    near = [n for n in names if n != gold["name"] and sum(a == b for a, b in zip(n.split("_", 2), gold["name"].split("_", 2))) == 2]
    assert len(near) >= 5  # the confusable tools come first


def test_exact_tool_counts_and_limits():
    s = make_task("tool-choice:tools=10").generate(TOK, 9000, seed=1)
    assert s.meta["tools"] == 10 and len(_schemas(s.context)) == 10
    with pytest.raises(BenchError, match="fewer tools"):
        make_task("tool-choice:tools=100").generate(TOK, 9000, seed=1)
    with pytest.raises(BenchError, match="tools must be"):
        make_task("tool-choice:tools=5")


def test_retrieve_first_keeps_the_pool_and_shows_the_top_k():
    full = make_task("tool-choice").generate(TOK, 9000, seed=3)
    task = make_task("tool-choice:retrieve=true,top_k=3")
    s = task.generate(TOK, 9000, seed=3)
    assert s.meta["pool"] == full.meta["tools"] and s.meta["tools"] == 3
    assert s.question == full.question and s.references == full.references
    names = [x["name"] for x in _schemas(s.context)]
    gold = json.loads(s.references[0])["name"]
    assert s.meta["retrieved"] == (gold in names) and (s.meta["gold_rank"] <= 3) == s.meta["retrieved"]
    big = make_task("tool-choice:tools=1000,retrieve=true").generate(TOK, 9000, seed=3)  # pool beyond the length
    assert big.meta["pool"] == 1000 and big.meta["tools"] == 5 and big.meta["tokens"] <= 9000 - task.max_new_tokens
    cm = task.cell_metrics([{"meta": s.meta}, {"meta": {**s.meta, "retrieved": False}}])
    assert cm == {"tools": 3.0, "retrieved": 0.5}


def test_bm25_ranks_the_matching_document_first():
    docs = ["billing create invoice", "weather get forecast for a city", "billing delete invoice"]
    assert mcp.bm25_rank("what is the forecast in my city", docs)[0] == 1
    assert mcp.bm25_rank("delete the invoice in billing", docs)[0] == 2


# ---------------------------------------------------------------------------------------------- scoring
GOLD = {"name": "billing_create_invoice", "arguments": {"customer_name": "Orla Vesna", "amount": 420.5,
                                                         "currency": "EUR", "notify": True}}


def _s() -> Sample:
    return Sample("", "q", "Tool call:", [json.dumps(GOLD)], {})


def test_scorer_on_hand_written_calls():
    t, s = make_task("tool-choice"), _s()
    right = json.dumps(GOLD)
    assert t.score(s, right) == 1.0
    assert t.score(s, "Sure! Here is the call:\n```json\n" + right + "\n```\nLet me know.") == 1.0  # verbose
    assert t.score(s, json.dumps({**GOLD, "name": "billing_update_invoice"})) == 0.0  # wrong tool
    half = {"name": GOLD["name"], "arguments": {"customer_name": "orla  vesna", "amount": "420.50"}}
    assert t.score(s, json.dumps(half)) == pytest.approx(0.5 + 0.5 * 2 / 4)  # partial: 2 of 4 right
    extra = {"name": GOLD["name"], "arguments": {**GOLD["arguments"], "urgent": False}}
    assert t.score(s, json.dumps(extra)) == pytest.approx(0.5 + 0.5 * 4 / 5)  # an invented argument costs
    wrong_bool = {"name": GOLD["name"], "arguments": {**GOLD["arguments"], "notify": "false"}}
    assert t.score(s, json.dumps(wrong_bool)) == pytest.approx(0.5 + 0.5 * 3 / 4)
    assert t.score(s, json.dumps({"name": GOLD["name"], "arguments": {}})) == 0.5
    assert t.score(s, "I could not find it.") == 0.0
    assert t.score(s, "billing_create_invoice") == 0.0  # no JSON call


def test_parse_call_shapes():
    args = {"a": 1}
    assert mcp.parse_call('{"name": "x", "arguments": {"a": 1}}') == {"name": "x", "arguments": args}
    assert mcp.parse_call('{"name": "x", "arguments": "{\\"a\\": 1}"}') == {"name": "x", "arguments": args}
    assert mcp.parse_call('{"type": "function", "function": {"name": "x", "parameters": {"a": 1}}}') == \
        {"name": "x", "arguments": args}
    assert mcp.parse_call("{'name': 'x', 'arguments': {'a': 1, 'b': True}}")["arguments"] == {"a": 1, "b": True}
    assert mcp.parse_call('{"note": 1} then {"tool": "x", "args": {"a": 1}}') == {"name": "x", "arguments": args}
    assert mcp.parse_call("{broken") is None and mcp.parse_call("none") is None
