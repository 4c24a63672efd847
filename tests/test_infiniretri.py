"""InfiniRetri: streaming sentence chunking, the scoring layer's attention against eager attention,
sentence retention, determinism and the whole reader through ``longreach.ask``."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longreach
from longreach.engine import Engine
from longreach.errors import InputError, SpecError
from longreach.readers import Request
from longreach.readers.infiniretri import question_attention, resolve_layer, select_sentences, token_scores
from longreach.readers.sentences import Sentence, iter_chunks, iter_sentences, iter_text
from longreach.spec import Plan, build_method, parse_spec

SPEC = "infiniretri:chunk=64,top_k=16"
text_chars = st.sampled_from(list("ab cd.!?\n\t'\"。") + ["xyz", "  ", ". ", "\n\n"])
texts = st.lists(text_chars, max_size=60).map("".join)


def _doc(n: int = 60, key: str = "12345", at: int = 30) -> str:
    parts = [f"Filler sentence number {i} is here." for i in range(n)]
    parts.insert(at, f"The pass key is {key}. Remember it.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------- sentences, chunks
@given(texts, st.lists(st.integers(1, 60), max_size=8), st.sampled_from([5, 12, 4096]))
def test_sentences_rejoin_and_ignore_piece_boundaries(text, cuts, max_chars):
    bounds = sorted({c for c in cuts if c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)])]
    whole = list(iter_sentences([text], max_chars))
    assert "".join(whole) == text
    assert list(iter_sentences(pieces, max_chars)) == whole
    assert all(s for s in whole)


def test_sentences_are_cut_after_punctuation_and_before_newlines():
    got = list(iter_sentences(["One. Two!  Three?\n\nFour\nFive。六。 End"]))
    assert got == ["One.", " Two!", "  Three?", "\n\nFour", "\nFive。", "六。", " End"]


def test_overlong_run_is_cut_at_spaces():
    got = list(iter_sentences(["aaaa bbbb cccc dddd"], max_chars=10))
    assert "".join(got) == "aaaa bbbb cccc dddd" and all(len(s) <= 10 for s in got)


@settings(max_examples=15, deadline=None)
@given(texts.filter(str.strip), st.integers(16, 40))
def test_chunks_cover_every_token_exactly_once(text, chunk):
    from conftest import byte_tokenizer

    tok = byte_tokenizer()
    chunks = list(iter_chunks(iter_sentences(iter_text(text, block_chars=7)), tok, chunk))
    sentences = [s for c in chunks for s in c]
    assert "".join(s.text for s in sentences) == text
    assert [t for s in sentences for t in s.ids] == tok(text, add_special_tokens=False).input_ids  # bytes
    assert all(0 < sum(len(s.ids) for s in c) <= chunk for c in chunks)
    assert [s.index for s in sentences] == list(range(len(sentences)))


def test_file_is_streamed_in_blocks(tmp_path):
    path = tmp_path / "doc.txt"
    text = "Héllo wörld. " * 300  # multi-byte characters straddle the block boundaries
    path.write_text(text, encoding="utf-8")
    pieces = list(iter_text(path, block_chars=100))
    assert len(pieces) > 10 and max(map(len, pieces)) <= 100 and "".join(pieces) == text


def test_missing_or_unnameable_file_is_one_line(tmp_path):
    for path in (tmp_path / "absent.txt", tmp_path / ("x" * 400)):  # the second: ENAMETOOLONG from stat
        with pytest.raises(InputError, match="no such file") as exc:
            list(iter_text(path))
        assert "\n" not in str(exc.value)


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc\x00def")
    with pytest.raises(InputError, match="binary"):
        list(iter_text(path))


# ------------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize("first_row", [0, 37, 59])
def test_scoring_attention_equals_eager(tiny, first_row):
    ids = torch.randint(0, 256, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    layer = resolve_layer(tiny.info, -1)
    with Engine(tiny).session(SPEC) as s:
        ours = question_attention(s, ids, layer, first_row)  # (H, Q, T)
    tiny.model.set_attn_implementation("eager")
    with torch.inference_mode():
        ref = tiny.model(torch.tensor([ids]), output_attentions=True).attentions[layer][0, :, first_row:]
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-6)


def test_scoring_layer_choice(gemma, llama):
    assert resolve_layer(gemma.info, -1) == 2  # the last full-attention layer
    assert resolve_layer(llama.info, -1) == 1 and resolve_layer(llama.info, 0) == 0
    with pytest.raises(SpecError, match="sliding-window layer"):
        resolve_layer(gemma.info, 0)
    with pytest.raises(SpecError, match="out of range"):
        resolve_layer(llama.info, 5)


def test_earlier_scoring_layer_matches_eager(llama):
    ids = list(range(40))
    with Engine(llama).session(SPEC) as s:
        ours = question_attention(s, ids, 0, 30)
    llama.model.set_attn_implementation("eager")
    with torch.inference_mode():
        ref = llama.model(torch.tensor([ids]), output_attentions=True).attentions[0][0, :, 30:]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


def test_token_scores_against_loops():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(2, 3, 20, generator=g)  # (H, Q, T): the last 3 positions are the question
    ctx, window = slice(4, 17), 4
    got = token_scores(attn, ctx, window)
    a = attn.sum(0)
    want = torch.zeros(13)
    for i in range(3):
        w = a[i, 17:].sum()
        for j in range(13):  # box of width 4 around j: offsets -2..+1
            want[j] += w * sum(a[i, 4 + jj] for jj in range(j - 2, j + 2) if 0 <= jj < 13)
    torch.testing.assert_close(got, want)


def test_select_keeps_whole_sentences_in_order_within_budget():
    sents = [Sentence(f"s{i}", [i] * n, i) for i, n in enumerate([3, 2, 4, 1])]
    scores = torch.tensor([0, 0, 0, 0, 9, 0, 0, 0, 0, 5.0])  # best tokens in sentences 1 and 3
    assert [s.index for s in select_sentences(sents, scores, 2, 100)] == [1, 3]
    assert [s.index for s in select_sentences(sents, scores, 2, 2)] == [1]  # budget: best first
    assert [s.index for s in select_sentences(sents, scores, 1, 100)] == [1]


# ------------------------------------------------------------------------------------------- reader
def test_ask_reads_far_past_the_window_and_retains_whole_sentences(tiny):
    text = _doc(30)  # ~1.2k byte tokens, past twice the tiny windows (256 / 512)
    a = longreach.ask(text=text, question="What is the pass key?", model=tiny, method=SPEC, max_new_tokens=4)
    assert a.reach is None and a.input_tokens > 2 * tiny.info.window
    sentences = [s.strip() for s in iter_sentences([text])]
    assert a.evidence and all(e in sentences for e in a.evidence)
    b = longreach.ask(text=text, question="What is the pass key?", model=tiny, method=SPEC, max_new_tokens=4)
    assert (a.answer, a.evidence) == (b.answer, b.evidence)  # deterministic


def test_streamed_file_gives_the_same_result_as_text(llama, tmp_path):
    text = _doc(25)
    path = tmp_path / "doc.txt"
    path.write_text(text)
    reader = Plan.from_spec(SPEC).make_reader()
    plan = Plan.from_spec(SPEC)
    engine = Engine(llama)
    r1 = reader.read(engine, plan, Request(text, "What is the pass key?", max_new_tokens=3))
    r2 = reader.read(engine, plan, Request(path, "What is the pass key?", max_new_tokens=3))
    r3 = reader.read(engine, plan, Request(iter(text[i:i + 50] for i in range(0, len(text), 50)),
                                          "What is the pass key?", max_new_tokens=3))
    assert r1.evidence == r2.evidence == r3.evidence and r1.answer == r2.answer == r3.answer
    assert r1.extra["passes"] > 3 and r1.extra["longest_pass_tokens"] <= llama.info.window


def test_no_question_uses_the_tail_and_streams_need_one(llama):
    reader = Plan.from_spec(SPEC).make_reader()
    r = reader.read(Engine(llama), Plan.from_spec(SPEC), Request(_doc(30), "", max_new_tokens=2))
    assert r.evidence
    with pytest.raises(InputError, match="pass a question"):
        reader.read(Engine(llama), Plan.from_spec(SPEC), Request(iter(["a. b."]), "", max_new_tokens=2))


def test_spec_validation(llama, gemma):
    m = build_method(parse_spec("infiniretri:chunk=2k,top_k=50,window=4,layer=-1")[0])
    assert (m.chunk, m.top_k, m.window, m.layer) == (2048, 50, 4, -1)
    for bad in ("infiniretri:chunk=8", "infiniretri:top_k=0", "infiniretri:window=0"):
        with pytest.raises(SpecError):
            Plan.from_spec(bad)
    with pytest.raises(SpecError, match="sliding-window"):
        Plan.from_spec("infiniretri:layer=0").check(gemma.info)
    with pytest.raises(SpecError, match="no room"):  # the tiny llama window is 256 tokens
        longreach.ask(text=_doc(5), question="q?", model=llama, method="infiniretri:chunk=240")


def test_random_documents_never_break_the_reader(llama):
    rng = random.Random(0)
    for n in (1, 30):
        words = [rng.choice(["alpha", "beta.", "gamma!", "\n", "delta?", "x" * 150]) for _ in range(n)]
        a = longreach.ask(text=" ".join(words), question="Which?", model=llama, method=SPEC, max_new_tokens=2)
        assert a.input_tokens > 0


def test_stream_is_consumed_lazily(llama):
    """The first pass runs before the stream is exhausted: the document is never tokenized whole."""
    pulled, at_first_pass = [0], []

    def pieces():
        for i in range(60):
            pulled[0] += 1
            yield f"Sentence {i} of the stream. "

    def first_pass(*_):
        if not at_first_pass:
            at_first_pass.append(pulled[0])

    handle = llama.model.register_forward_pre_hook(first_pass)
    try:
        reader = Plan.from_spec(SPEC).make_reader()
        reader.read(Engine(llama), Plan.from_spec(SPEC), Request(pieces(), "Which sentence?", max_new_tokens=1))
    finally:
        handle.remove()
    assert pulled[0] == 60 and at_first_pass[0] < 15


def test_composes_with_a_rope_method_and_a_cache_method(llama):
    """A rope method widens the pass (chunk 300 > the 256-token window); scores still match eager."""
    with pytest.raises(SpecError, match="no room"):
        longreach.ask(text=_doc(12), question="Which?", model=llama, method="infiniretri:chunk=300")
    spec = "pi:factor=2+kv-int8+infiniretri:chunk=300,top_k=8"
    a = longreach.ask(text=_doc(12), question="Which?", model=llama, method=spec, max_new_tokens=2)
    assert a.evidence and a.input_tokens > llama.info.window
    plan = Plan.from_spec(spec)
    ids = [i % 256 for i in range(300)]
    with Engine(llama).session(plan) as s:
        ours = question_attention(s, ids, 1, 290)
        llama.model.set_attn_implementation("eager")  # the reference (pi still installed)
        with torch.inference_mode():
            ref = llama.model(torch.tensor([ids]), output_attentions=True).attentions[1][0, :, 290:]
        llama.model.set_attn_implementation("sdpa")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cache_spec", ["snapkv:budget=32,window=4", "h2o:budget=32,window=4",
                                        "knorm:budget=32,window=4"])
def test_answer_pass_compresses_as_if_the_question_were_unknown(llama, monkeypatch, cache_spec):
    """The answer pass prepares a question-agnostic cache like the chunked reader does: the question
    (and the answer) are kept after the compressed evidence, never scored with nor evicted."""
    from longreach.kv.evict import EvictingLayer, EvictionMethod

    made, real = [], EvictionMethod.make_cache

    def spy(self, model, info):
        made.append(real(self, model, info))
        return made[-1]

    monkeypatch.setattr(EvictionMethod, "make_cache", spy)
    question = "What is the pass key?"
    r = Engine(llama).run(f"{cache_spec}+{SPEC}", Request(_doc(20), question, max_new_tokens=3))
    (cache,) = made  # the answer pass's cache
    prompt_tokens = r.extra["answer_prompt_tokens"]
    assert cache.context_end is not None and 0 < cache.context_end < prompt_tokens
    asked = prompt_tokens - cache.context_end  # question + template tail, after the evidence
    assert asked >= len(llama.tokenizer(question, add_special_tokens=False).input_ids)
    layers = [layer for layer in cache.layers if isinstance(layer, EvictingLayer)]
    assert layers and all(layer.tail >= asked for layer in layers)  # none of them evicted
    assert all(layer.keys.shape[-2] <= 32 + layer.tail for layer in layers)  # the evidence was compressed


def test_the_request_prompt_format_is_honoured(llama, monkeypatch):
    """Scoring passes and the answer pass build the prompt in the request's format (auto / chat / plain)."""
    import longreach.readers.infiniretri as reader_module

    seen = []
    real = reader_module.build_prompt
    monkeypatch.setattr(reader_module, "build_prompt", lambda *a, **k: seen.append(a[4:] + tuple(k.values()))
                        or real(*a, **k))
    Engine(llama).run(SPEC, Request(_doc(10), "Which?", max_new_tokens=1, prompt="plain"))
    assert len(seen) == 2 and all(fmt == ("plain",) for fmt in seen)


def test_a_pass_too_big_for_memory_narrows_instead_of_refusing(llama):
    """A scoring pass is one forward of chunk + retained sentences: where a whole-window pass does not fit
    the memory (Gemma 3's 32k window on a 24 GiB machine), the retained sentences get less room instead of
    every sample being refused; only a chunk that does not fit alone is refused, in one line."""
    from longreach.errors import MemoryBudgetError
    from longreach.memory import estimate_request

    plan, info = Plan.from_spec(SPEC), llama.info
    span = plan.pass_span(info)

    def need(tokens: int, chunk: int) -> int:
        return estimate_request(info, tokens, chunk, plan.kv_cache_bytes(info, tokens)).total

    part = 3 * span // 4
    limit = need(part, part)
    assert need(span, 16) <= limit < need(span, span)  # the pre-check (16-token chunks) passes, a whole pass not
    kwargs = dict(text=_doc(120), question="What is the pass key?", model=llama, method=SPEC, max_new_tokens=3,
                  chunk_size=16)
    free = longreach.ask(**kwargs)
    assert free.extra["longest_pass_tokens"] > part  # unbounded by memory, passes grow past 3/4 of the window
    narrow = longreach.ask(**kwargs, memory_limit=limit)
    assert narrow.extra["longest_pass_tokens"] <= part
    assert narrow.evidence and narrow.extra["passes"] >= free.extra["passes"]
    hint = r"one infiniretri pass: .* tokens need about .* smaller infiniretri:chunk \(now 64\)"
    with pytest.raises(MemoryBudgetError, match=hint):
        longreach.ask(**kwargs, memory_limit=need(64, 64))  # not even the 64-token chunk fits


def test_auto_is_the_default_and_a_window_without_room_to_calibrate_scores_with_the_last_layer(llama, caplog):
    from longreach.readers import infiniretri_layer as cal

    cal.forget()
    assert Plan.from_spec("infiniretri").methods[0].layer == "auto"
    plan = Plan.from_spec("infiniretri:chunk=16,top_k=8")
    reader = plan.make_reader()
    # max_new_tokens=150 leaves ~20 of the 256-token window for a calibration document (needs 32)
    with caplog.at_level("WARNING", logger="longreach.readers.infiniretri"):
        r = reader.read(Engine(llama), plan, Request(_doc(5), "What is the pass key?", max_new_tokens=150))
    assert r.extra["scoring_layer"] == resolve_layer(llama.info, -1)
    assert "scoring_layer_mrr" not in r.extra
    assert any("layer=-1" in rec.getMessage() for rec in caplog.records)
    # with room (byte-level tokens: a needle sentence is ~50), auto calibrates and reports the layers' quality
    plan = Plan.from_spec(SPEC)
    r = plan.make_reader().read(Engine(llama), plan, Request(_doc(5), "What is the pass key?", max_new_tokens=2))
    assert set(r.extra["scoring_layer_mrr"]) == {0, 1} and r.extra["scoring_layer"] in (0, 1)
    cal.forget()
