"""``infiniretri:layer=auto``: the multi-layer probe, the choice rule, the needle rank, the calibration
against eager attention, its cache, and the reader with the calibrated layer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import longreach
from longreach.engine import Engine
from longreach.errors import SpecError
from longreach.readers import Request
from longreach.readers import infiniretri_layer as cal
from longreach.readers.infiniretri import InfiniRetriReader, token_scores
from longreach.spec import Plan, build_method, parse_spec

SPEC = "infiniretri:chunk=128,top_k=16"


@pytest.fixture
def big_llama():
    """The tiny Llama with a 1k window: calibration documents of a few sentences."""
    from conftest import tiny_llama, wrap

    return wrap(tiny_llama(window=1024), "tiny-llama-1k")


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    cal.forget()
    yield
    cal.forget()


def _doc(n: int = 40) -> str:
    parts = [f"Filler sentence number {i} is here." for i in range(n)]
    parts.insert(n // 2, "The pass key is 12345. Remember it.")
    return " ".join(parts)


# ------------------------------------------------------------------------------------- the probe
def test_probe_of_several_layers_equals_one_probe_each(llama):
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    with Engine(llama).session(SPEC) as s:
        both = s.probe(ids, [1, 0], lambda m, h, c, si: h.clone())
        single = [s.probe(ids, i, lambda m, h, c, si: h.clone()) for i in (0, 1)]
    assert sorted(both) == [0, 1]
    torch.testing.assert_close(both[0], single[0])
    torch.testing.assert_close(both[1], single[1])
    assert not torch.equal(both[0], both[1])


def test_probe_stops_at_the_last_asked_layer(llama):
    reached = []
    handle = llama.model.get_decoder().norm.register_forward_pre_hook(lambda *_: reached.append(1))
    try:
        with Engine(llama).session(SPEC) as s:
            s.probe(list(range(20)), [0, 1], lambda *a: None)
    finally:
        handle.remove()
    assert reached == [] and not llama.model._forward_pre_hooks  # never past layer 1; hooks removed
    assert all(not m._forward_pre_hooks for m in llama.model.modules())


# ------------------------------------------------------------------------------------- the rule, the rank
@given(st.dictionaries(st.integers(0, 40), st.floats(0, 1), min_size=1, max_size=12), st.floats(0, 0.3))
def test_choice_is_the_earliest_layer_close_to_the_best(mrr, tol):
    chosen = cal.choose_layer(mrr, tol)
    best = max(mrr.values())
    assert mrr[chosen] >= best - tol
    assert all(mrr[layer] < best - tol for layer in mrr if layer < chosen)


def test_choice_examples():
    assert cal.choose_layer({5: 0.5, 11: 1.0, 17: 1.0}) == 11
    assert cal.choose_layer({5: 0.97, 11: 1.0, 17: 0.9}) == 5  # within 0.05 of the best
    assert cal.choose_layer({3: 0.2, 9: 0.3}, tolerance=0.0) == 9
    with pytest.raises(ValueError):
        cal.choose_layer({})


@settings(max_examples=60)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=8).flatmap(
    lambda sizes: st.tuples(st.just(sizes), st.lists(st.integers(0, 4), min_size=sum(sizes), max_size=sum(sizes)),
                            st.integers(0, len(sizes) - 1))))
def test_needle_rank_against_a_loop(case):
    sizes, values, needle = case
    bounds, at = [], 0
    for n in sizes:
        bounds.append((at, at + n))
        at += n
    scores = torch.tensor(values, dtype=torch.float32)
    best = [max(values[a:b]) for a, b in bounds]
    want = sum(1 for i, v in enumerate(best) if i != needle and v >= best[needle])  # ties count against
    assert cal.needle_rank(scores, bounds, needle) == want


def test_calibration_documents_hold_one_needle_within_the_length(big_llama):
    tok = big_llama.tokenizer
    docs = cal.calibration_documents(tok, 400)
    assert len(docs) == cal.DOCUMENTS
    for sentences, needle, question in docs:
        n = sum(len(tok(s, add_special_tokens=False).input_ids) for s in sentences)
        assert n <= 400 and len(sentences) >= 3
        (thing,) = [t for t in cal.THINGS if t in question]
        assert [i for i, s in enumerate(sentences) if thing in s] == [needle]
        assert any(ch.isdigit() for ch in sentences[needle])
    assert cal.calibration_documents(tok, 400) == docs  # deterministic
    assert len({q for _, _, q in docs}) == len(docs)


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(min_value=60, max_value=300))
def test_calibration_documents_never_exceed_the_room_the_needle_leaves(tokens):
    """A byte-level tokenizer makes essay sentences longer than a small room: they are shortened, not overflowed."""
    from longreach.bench.backends import byte_tokenizer

    tok = byte_tokenizer()
    for sentences, needle, _ in cal.calibration_documents(tok, tokens):
        need = len(tok(sentences[needle], add_special_tokens=False).input_ids)
        n = sum(len(tok(s, add_special_tokens=False).input_ids) for s in sentences)
        if need + 16 <= tokens:  # room for the needle and one shortened filler sentence
            assert n <= tokens
        assert len(sentences) >= 2


# ------------------------------------------------------------------------------------- calibration
def _eager_mrr(lm, tokens: int, window: int, fmt: str, layers: list[int]) -> dict[int, float]:
    """The same MRR from the eager attention weights of every layer (independent of the probe)."""
    tok = lm.tokenizer
    lm.model.set_attn_implementation("eager")
    ranks: dict[int, list[float]] = {i: [] for i in layers}
    try:
        for sentences, needle, question in cal.calibration_documents(tok, tokens):
            prefix, suffix = InfiniRetriReader._prompt_parts(tok, question, "", fmt)
            pieces = [tok(s, add_special_tokens=False).input_ids for s in sentences]
            ids = prefix + [t for p in pieces for t in p] + suffix
            with torch.inference_mode():
                att = lm.model(torch.tensor([ids]), output_attentions=True).attentions
            q0 = len(ids) - len(suffix)
            starts = [len(prefix) + sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
            for i in layers:
                scores = token_scores(att[i][0, :, q0:].float(), slice(len(prefix), q0), window)
                best = [scores[s - len(prefix): s - len(prefix) + len(p)].max().item() for s, p in zip(starts, pieces)]
                rank = sum(1 for j, v in enumerate(best) if j != needle and v >= best[needle])
                ranks[i].append(1 / (1 + rank))
    finally:
        lm.model.set_attn_implementation("sdpa")
    return {i: sum(v) / len(v) for i, v in ranks.items()}


def test_calibration_matches_eager_attention_and_is_cached(big_llama, tmp_path):
    engine = Engine(big_llama)
    with engine.session(SPEC) as s:
        got = cal.calibrated_layer(engine, s, [0, 1], 300, 8, "plain")
    want = _eager_mrr(big_llama, 300, 8, "plain", [0, 1])
    assert got.mrr == pytest.approx(want, abs=1e-3)
    assert got.layer == cal.choose_layer(got.mrr) and got.documents == cal.DOCUMENTS and got.tokens == 300
    files = list((tmp_path / "cache" / "infiniretri").glob("*.json"))
    assert len(files) == 1 and cal.Calibration.from_json(files[0].read_text()) == got

    def no_probe(*_a, **_k):
        raise AssertionError("calibrated again")

    cal.forget()  # memory gone: the file answers
    with engine.session(SPEC) as s:
        s.probe = no_probe
        assert cal.calibrated_layer(engine, s, [0, 1], 300, 8, "plain") == got
    files[0].write_text("{not json")  # a broken file: measured again, rewritten
    cal.forget()
    with engine.session(SPEC) as s:
        assert cal.calibrated_layer(engine, s, [0, 1], 300, 8, "plain") == got
    assert cal.Calibration.from_json(files[0].read_text()) == got


def test_other_weights_or_settings_are_calibrated_apart(big_llama):
    from conftest import tiny_llama, wrap

    other = wrap(tiny_llama(window=1024, seed=5), "tiny-llama-1k")
    assert cal.fingerprint(other.model, other.info) != cal.fingerprint(big_llama.model, big_llama.info)
    engine = Engine(big_llama)
    with engine.session(SPEC) as s:
        cal.calibrated_layer(engine, s, [0, 1], 300, 8, "plain")
        cal.calibrated_layer(engine, s, [0, 1], 200, 8, "plain")
    assert len(cal._MEMORY) == 2


def test_gemma_calibrates_full_attention_layers_only(gemma):
    a = longreach.ask(text=_doc(40), question="What is the pass key?", model=gemma,
                      method="infiniretri:chunk=128,top_k=16,layer=auto", max_new_tokens=2)
    assert a.extra["scoring_layer"] == 2 and set(a.extra["scoring_layer_mrr"]) == {2}


# ------------------------------------------------------------------------------------- the reader
def test_auto_reads_like_the_layer_it_chose(big_llama):
    question = "What is the pass key?"
    a = longreach.ask(text=_doc(80), question=question, model=big_llama, method=f"{SPEC},layer=auto",
                      max_new_tokens=3)
    layer = a.extra["scoring_layer"]
    assert layer in (0, 1) and set(a.extra["scoring_layer_mrr"]) == {0, 1} and a.extra["calibration_seconds"] >= 0
    b = longreach.ask(text=_doc(80), question=question, model=big_llama, method=f"{SPEC},layer={layer}",
                      max_new_tokens=3)
    assert (a.answer, a.evidence) == (b.answer, b.evidence)
    assert "scoring_layer_mrr" not in b.extra


def test_auto_scoring_pass_stops_at_the_chosen_layer(big_llama, monkeypatch):
    import longreach.readers.infiniretri as reader_module

    seen = []
    real = reader_module.question_attention

    def spy(sess, ids, layer, first_row):
        seen.append(layer)
        return real(sess, ids, layer, first_row)

    monkeypatch.setattr(reader_module, "question_attention", spy)
    monkeypatch.setattr(cal, "choose_layer", lambda mrr, tolerance=cal.TOLERANCE: 0)  # pretend layer 0 won
    reader = Plan.from_spec(f"{SPEC},layer=auto").make_reader()
    r = reader.read(Engine(big_llama), Plan.from_spec(f"{SPEC},layer=auto"), Request(_doc(60), "Which key?",
                                                                                       max_new_tokens=2))
    assert r.extra["scoring_layer"] == 0 and seen and set(seen) == {0}


def test_spec_accepts_auto_and_refuses_words(gemma):
    m = build_method(parse_spec("infiniretri:layer=auto")[0])
    assert m.layer == "auto"
    Plan.from_spec("infiniretri:layer=auto").check(gemma.info)
    with pytest.raises(SpecError, match=r"infiniretri:layer: .*a layer number .* or auto \(got 'best'\)"):
        Plan.from_spec("infiniretri:layer=best")
    assert build_method(parse_spec("infiniretri:layer=-2")[0]).layer == -2


def test_a_window_too_small_to_calibrate_is_refused(llama):
    engine = Engine(llama)
    with engine.session(SPEC) as s, pytest.raises(SpecError, match="give a layer number"):
        cal.calibrated_layer(engine, s, [0, 1], 10, 8, "plain")


# ------------------------------------------------------------------------------------- retrieval only
def test_answer_false_retains_the_same_sentences_without_an_answer_pass(big_llama):
    question = "What is the pass key?"
    calls = []
    handle = big_llama.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        full = longreach.ask(text=_doc(80), question=question, model=big_llama, method=SPEC, max_new_tokens=3)
        n_full = len(calls)
        calls.clear()
        only = Engine(big_llama).run(f"{SPEC},answer=false", Request(_doc(80), question, max_new_tokens=3))
    finally:
        handle.remove()
    assert only.evidence == full.evidence and only.answer == "" and only.output_ids == []
    assert only.extra["passes"] == full.extra["passes"] == len(calls)  # the scoring passes only
    assert n_full > len(calls) and only.kv_cache_bytes == 0 and only.decode_seconds < 0.5
