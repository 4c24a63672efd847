"""ContextWindow (DeepMiner's dynamic context window, arXiv 2510.08276): the budget is never exceeded (property
test over random transcripts and budgets, counted independently: the byte tokenizer makes tokens = UTF-8
bytes), placeholders replace exactly the older tool outputs, assistant and user turns stay verbatim, truncation
vs the dynamic window on a constructed case, chat-template counting and one-line errors."""

from __future__ import annotations

import pytest
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import longreach
from longreach.context import (
    DEFAULT_PLACEHOLDER,
    ContextBudgetError,
    ContextWindow,
    count_tokens,
    render_transcript,
)
from longreach.errors import InputError

TOK = byte_tokenizer()


def nbytes(messages: list[dict]) -> int:
    """Independent count for the byte tokenizer (no chat template, no BOS): UTF-8 bytes of the plain rendering,
    written out here rather than taken from render_transcript."""
    parts = []
    for m in messages:
        role = f"tool {m['name']}" if m["role"] == "tool" and m.get("name") else m["role"]
        lines = [f"[{role}] {m.get('content') or ''}".rstrip()]
        for c in m.get("tool_calls") or []:
            lines.append(f"-> call {c['function']['name']}({c['function']['arguments']})")
        parts.append("\n".join(lines))
    return len("\n\n".join(parts).encode("utf-8"))


def turn(t: int, output: str, intent: str = "") -> list[dict]:
    call = {"id": f"c{t}", "type": "function", "function": {"name": "read_file", "arguments": f'{{"path": "f{t}"}}'}}
    return [{"role": "assistant", "content": intent or f"step {t}", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{t}", "name": "read_file", "content": output}]


def window(messages: list[dict], **kw) -> ContextWindow:
    w = ContextWindow(TOK, **kw)
    w.extend(messages)
    return w


# ------------------------------------------------------------------------------- the budget, as a property
texts = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x24F), max_size=120)


@st.composite
def transcripts(draw) -> list[dict]:
    msgs: list[dict] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(texts)})
    for t in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["user", "assistant", "call"]))
        if kind == "call":
            msgs += turn(t, draw(texts), draw(texts))
            for extra in range(draw(st.integers(0, 2))):  # parallel calls answered by several tool messages
                msgs.append({"role": "tool", "tool_call_id": f"c{t}", "content": draw(texts) + f" #{extra}"})
        else:
            msgs.append({"role": kind, "content": draw(texts)})
    for k, m in enumerate(msgs):  # unique contents: a sent message is found in the transcript by its content
        m["content"] += f" @{k}"
    return msgs


def minimum(messages: list[dict], policy: str, keep_last: int) -> list[dict]:
    """The smallest transcript a policy may send, built independently: everything (full), else the system
    messages and the last user message."""
    if policy == "full":
        return messages
    users = [k for k, m in enumerate(messages) if m["role"] == "user"]
    return [m for k, m in enumerate(messages) if m["role"] == "system" or k in users[-1:]]


@settings(max_examples=300, deadline=None)
@given(msgs=transcripts(), budget=st.integers(1, 3000), keep_last=st.integers(0, 5),
       policy=st.sampled_from(["dynamic", "truncate", "full"]))
def test_the_budget_is_never_exceeded(msgs, budget, keep_last, policy):
    w = window(msgs, budget=budget, keep_last=keep_last, policy=policy)
    try:
        sent = w.messages()
    except ContextBudgetError as exc:
        assert nbytes(minimum(msgs, policy, keep_last)) > budget
        assert "\n" not in str(exc) and exc.budget == budget and exc.needed > budget
        return
    assert nbytes(sent) <= budget and w.tokens() == nbytes(sent)
    # sent = the transcript's messages in order, some turns dropped; system and last user message always there
    ids = [_slot(msgs, m) for m in sent]
    assert ids == sorted(set(ids))
    users = [k for k, m in enumerate(msgs) if m["role"] == "user"]
    must = {k for k, m in enumerate(msgs) if m["role"] == "system"} | set(users[-1:])
    assert must <= set(ids)
    for s in sent:  # user, system and assistant turns verbatim; tool outputs verbatim or a placeholder
        if s["role"] != "tool":
            assert any(s == m for m in msgs)
    for k, s in enumerate(sent):  # a tool output is never sent without the call it answers
        if s["role"] == "tool":
            assert k > 0 and sent[k - 1]["role"] in ("assistant", "tool")
    tools = [k for k, m in enumerate(msgs) if m["role"] == "tool"]
    for k, s in zip(ids, sent):
        if s["role"] == "tool":
            i = tools.index(k) + 1
            if policy == "dynamic" and i <= len(tools) - keep_last:  # older: its placeholder, sized in tokens
                assert s["content"] == f"[tool output {i} omitted: {len(msgs[k]['content'].encode())} tokens]"
            else:
                assert s == msgs[k]
    if policy == "full":
        assert sent == msgs
    if policy == "truncate" and len(sent) < len(msgs):  # the newest turns that fit: one more would not fit
        newest = max(k for k in range(len(msgs)) if k not in set(ids))
        # the newest dropped turn starts at the first non-tool message at or before it
        start = newest
        while msgs[start]["role"] == "tool":
            start -= 1
        end = start + 1
        while end < len(msgs) and msgs[end]["role"] == "tool":
            end += 1
        back = [m for k, m in enumerate(msgs) if k in set(ids) or start <= k < end]
        assert nbytes(back) > budget


def _slot(msgs: list[dict], sent: dict) -> int:
    """Index in the transcript of a sent message (contents are unique; a placeholder names its tool output)."""
    if sent["role"] == "tool" and sent["content"].startswith("[tool output "):
        i = int(sent["content"].split()[2])
        return [k for k, m in enumerate(msgs) if m["role"] == "tool"][i - 1]
    return next(k for k, m in enumerate(msgs) if m == sent)


# --------------------------------------------------------------------------------------- placeholders
def six_outputs() -> list[dict]:
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    for t in range(6):
        msgs += turn(t, f"output number {t} " + "x" * (10 * t))
    return msgs


def test_placeholders_replace_exactly_the_older_tool_outputs():
    msgs = six_outputs()
    sent = window(msgs, budget=10**6, keep_last=2).messages()
    assert len(sent) == len(msgs)
    tools_in = [m for m in msgs if m["role"] == "tool"]
    tools_out = [m for m in sent if m["role"] == "tool"]
    for i, (a, b) in enumerate(zip(tools_in, tools_out), start=1):
        if i <= 4:
            n = len(a["content"].encode())  # byte tokenizer: its tokens are its bytes
            assert b["content"] == f"[tool output {i} omitted: {n} tokens]"
        else:
            assert b["content"] == a["content"]
        assert b["tool_call_id"] == a["tool_call_id"] and b["name"] == a["name"]
    assert [m for m in sent if m["role"] != "tool"] == [m for m in msgs if m["role"] != "tool"]  # verbatim
    assert DEFAULT_PLACEHOLDER == "[tool output {i} omitted: {n} tokens]"


@pytest.mark.parametrize("keep_last,omitted", [(0, 6), (1, 5), (3, 3), (6, 0), (9, 0)])
def test_keep_last_counts_tool_outputs(keep_last, omitted):
    sent = window(six_outputs(), budget=10**6, keep_last=keep_last, placeholder="<gone {i}>").messages()
    gone = [m["content"] for m in sent if m["role"] == "tool" and m["content"].startswith("<gone")]
    assert gone == [f"<gone {i}>" for i in range(1, omitted + 1)]


def test_other_policies_keep_tool_outputs_and_the_stored_transcript_is_untouched():
    msgs = six_outputs()
    for policy in ("truncate", "full"):
        assert window(msgs, budget=10**6, policy=policy).messages() == msgs
    w = window(msgs, budget=10**6, keep_last=1)
    w.messages()
    assert w.transcript == msgs and len(w) == len(msgs)


# ------------------------------------------------------------------------------ dynamic vs truncation
def test_dynamic_keeps_old_reasoning_that_truncation_drops():
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Find the key."}]
    for t in range(10):
        intent = "the vault code is 7731, noted" if t == 1 else f"reading file {t}"
        msgs += turn(t, f"file {t}: " + "lorem ipsum " * 25 + f"fact-{t}", intent)
    budget = 1800  # all 10 turns with placeholders take 1781 bytes, verbatim 4013
    dyn = window(msgs, budget=budget, keep_last=2).messages()
    trunc = window(msgs, budget=budget, policy="truncate").messages()
    text_d, text_t = render_transcript(dyn), render_transcript(trunc)
    assert nbytes(dyn) <= budget and nbytes(trunc) <= budget
    assert "7731" in text_d and "7731" not in text_t  # an old assistant turn: kept verbatim only by dynamic
    assert "fact-9" in text_d and "fact-8" in text_d and "fact-7" not in text_d  # keep_last=2 outputs in full
    assert "fact-9" in text_t and "fact-1" not in text_t
    calls = lambda ms: [m["tool_calls"][0]["id"] for m in ms if m.get("tool_calls")]  # noqa: E731
    assert calls(dyn) == [f"c{t}" for t in range(10)]
    assert calls(trunc) == [f"c{t}" for t in range(10 - len(calls(trunc)), 10)] and len(calls(trunc)) < 5
    assert trunc[:2] == msgs[:2]  # system and task message survive truncation
    with pytest.raises(ContextBudgetError, match="full transcript takes .* use policy dynamic"):
        window(msgs, budget=budget, policy="full").messages()


def test_dynamic_drops_the_oldest_turns_when_placeholders_are_not_enough():
    msgs = [{"role": "user", "content": "task"}]
    for t in range(40):
        msgs += turn(t, "y" * 200)
    w = window(msgs, budget=700, keep_last=1)
    sent = w.messages()
    ids = [m["tool_calls"][0]["id"] for m in sent if m.get("tool_calls")]
    assert sent[0] == msgs[0] and ids == [f"c{t}" for t in range(40 - len(ids), 40)] and 1 <= len(ids) < 40
    assert sent[-1]["content"] == "y" * 200 and w.tokens() <= 700


def test_a_later_user_message_is_kept_and_earlier_ones_may_go():
    msgs = [{"role": "user", "content": "first question " * 10}]
    for t in range(5):
        msgs += turn(t, "z" * 100)
    msgs.append({"role": "user", "content": "second question"})
    msgs += turn(9, "last output")
    sent = window(msgs, budget=300, policy="truncate").messages()
    assert msgs[-3] in sent and msgs[0] not in sent and sent[-1]["content"] == "last output"


# --------------------------------------------------------------------------------------------- counting
def test_plain_count_is_the_bytes_of_the_rendering():
    msgs = six_outputs() + [{"role": "user", "content": "héllo"}]
    assert count_tokens(TOK, msgs) == nbytes(msgs)


def test_chat_template_is_used_when_the_tokenizer_has_one():
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    msgs = six_outputs()
    expected = "".join(f"<{m['role']}>{m['content']}\n" for m in msgs) + "<assistant>"
    assert count_tokens(tok, msgs) == len(expected.encode())
    w = ContextWindow(tok, budget=len(expected.encode()) - 1, policy="truncate")
    w.extend(msgs)
    sent = w.messages()
    assert len(sent) < len(msgs) and count_tokens(tok, sent) <= w.budget


def test_a_template_that_cannot_render_the_transcript_is_a_one_line_error():
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('roles must "
                         "alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    w = ContextWindow(tok, budget=100)
    w.extend(six_outputs())
    with pytest.raises(InputError, match="chat template cannot render .*roles must alternate.*counter="):
        w.messages()


def test_a_custom_counter_sets_the_budget():
    msgs = six_outputs()
    w = window(msgs, budget=6, policy="truncate", counter=len)  # count messages instead of tokens
    assert len(w.messages()) == 6 and w.tokens() == 6
    assert w.messages()[:2] == msgs[:2] and w.messages()[2:] == msgs[-4:]


def test_smollm2_template_fits_a_long_conversation():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Audit it."}]
    for t in range(60):
        msgs += turn(t, f"setting_{t} = {100000 + t}\n" + "value line\n" * 30)
    w = ContextWindow(tok, budget=2048)
    w.extend(msgs)
    whole = count_tokens(tok, msgs)
    sent = w.messages()
    assert whole > 2048 >= w.tokens()
    text = tok.apply_chat_template(sent, tokenize=False, add_generation_prompt=True)
    assert len(tok(text, add_special_tokens=False).input_ids) == w.tokens()
    assert "setting_59 = 100059" in text and "setting_0 =" not in text


# ----------------------------------------------------------------------------------------------- errors
def test_the_minimum_that_cannot_fit_is_a_one_line_error():
    msgs = [{"role": "system", "content": "s" * 50}, {"role": "user", "content": "u" * 50}] + turn(0, "x")
    with pytest.raises(ContextBudgetError, match="even the system message and the last user message") as exc:
        window(msgs, budget=60).messages()
    assert "\n" not in str(exc.value) and exc.value.needed == nbytes(msgs[:2])


@pytest.mark.parametrize("kw,match", [({"budget": 0}, "budget"), ({"budget": 10, "keep_last": -1}, "keep_last"),
                                      ({"budget": 10, "policy": "summary"}, "unknown context policy"),
                                      ({"budget": 10, "placeholder": "[{x}]"}, "placeholder"),
                                      ({"budget": 10, "placeholder": "[{i} {"}, "placeholder")])
def test_bad_settings(kw, match):
    with pytest.raises(InputError, match=match):
        ContextWindow(TOK, **kw)


@pytest.mark.parametrize("message", [{"role": "bot", "content": "x"}, {"role": "user", "content": None},
                                     {"role": "user", "content": [{"type": "text", "text": "x"}]}, "hello"])
def test_bad_messages(message):
    with pytest.raises(InputError, match="message"):
        ContextWindow(TOK, budget=10).add(message)


def test_exported_from_the_package():
    assert longreach.ContextWindow is ContextWindow
