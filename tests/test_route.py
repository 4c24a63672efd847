"""The route reader (LaRA / Self-Route) and `longreach calibrate`: decision rules on constructed cases with a
recording fake engine and a calibration table built in the test, the effective-length rule against the
report's independent one, calibration of folders written by the real bench runner (oracle backend), the
CLI end to end, and one short run on the packaged smollm2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longreach.answers import UNANSWERABLE_INSTRUCTION
from longreach.bench.calibrate import calibrate, dumps, merge
from longreach.bench.report import effective_length as report_effective_length
from longreach.bench.runner import load_config, run_bench
from longreach.cli import main
from longreach.engine import Engine
from longreach.errors import InputError, SpecError
from longreach.readers import ReadResult, Request
from longreach.readers.route import (
    PACKAGED_TABLE,
    TokenCounter,
    effective_length,
    effective_lengths,
    infiniretri_spec,
    load_table,
)
from longreach.spec import Plan
from longreach.textio import Corpus

QUESTION = "What is the pass key?"


# ------------------------------------------------------------------------------------------ fixtures
def _entry(tested, tasks=("passkey", "niah_single_2"), threshold=0.8):
    return {"effective_length": effective_length(tested, threshold), "tested": [list(p) for p in tested],
            "threshold": threshold, "tasks": list(tasks), "source": "test"}


@pytest.fixture
def table(tmp_path):
    """tiny-llama (window 256): none reads 128 well; yarn:factor=4 512 (0.9 at 512); dynamic-ntk 512 (0.8 at
    512); kv-int4 (not a position method) 'reads' 100k; a spec this version does not know."""
    t = {"version": 1, "threshold": 0.8, "models": {"tiny-llama": {
        "none": _entry([(64, 1.0, 3), (128, 1.0, 3), (256, 0.5, 3)]),
        "yarn:factor=4": _entry([(256, 1.0, 3), (512, 0.9, 3), (1024, 0.3, 3)]),
        "dynamic-ntk": _entry([(256, 0.85, 3), (512, 0.8, 3), (1024, 0.0, 3)]),
        "kv-int4": _entry([(100000, 1.0, 3)]),
        "nosuchmethod": _entry([(100000, 1.0, 3)]),
    }}}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(t))
    return path


class FakeEngine:
    """Records every sub-read; rag answers ``rag_answer``, every other plan ``long answer``."""

    def __init__(self, lm, rag_answer="4242"):
        self.tokenizer, self.info = lm.tokenizer, lm.info
        self.rag_answer = rag_answer
        self.calls: list[tuple[str, Request]] = []

    def run(self, plan, request, progress=False):
        plan = Plan.from_spec(plan)
        self.calls.append((plan.spec, request))
        reader = plan.get("reader")
        answer = self.rag_answer if reader is not None and reader.name == "rag" else f"long answer {len(self.calls)}"
        return ReadResult(answer=answer, output_ids=[1, 2], input_tokens=100 * len(self.calls), prefill_seconds=1.0,
                          decode_seconds=0.5, kv_cache_bytes=10 * len(self.calls), evidence=[f"from {plan.spec}"],
                          extra={"sub": plan.spec})


def route(engine, spec, document, question=QUESTION, max_new_tokens=4):
    plan = Plan.from_spec(spec)
    # the plain prompt: the token counts asserted below are its overhead (auto may repeat the question)
    return plan.make_reader().read(engine, plan, Request(document, question, max_new_tokens, prompt="plain"))


def _text(n):
    """n bytes (= n tokens of the byte tokenizer) of words."""
    return ("word " * n)[:n]


# ------------------------------------------------------------------------------------------ decisions
def test_fits_none_reads_the_whole_document(llama, table):
    e = FakeEngine(llama)
    r = route(e, f"route:rag=bm25,table={table}", _text(40))
    assert [s for s, _ in e.calls] == ["none"]
    assert e.calls[0][1].document == _text(40) and e.calls[0][1].question == QUESTION  # no instruction
    info = r.extra["route"]
    assert info["decision"] == "full" and info["method"] == "none" and r.answer == "long answer 1"
    assert info["document_tokens"] == 40
    assert "<= measured effective length 128 of none on tiny-llama (passkey+niah_single_2, threshold 0.8)" \
        in info["reason"]


def test_needs_a_position_method_picks_the_most_accurate(llama, table):
    e = FakeEngine(llama)
    r = route(e, f"route:rag=bm25,table={table}", _text(300))
    assert [s for s, _ in e.calls] == ["yarn:factor=4.0"]  # 0.9 at 512 beats dynamic-ntk's 0.8
    info = r.extra["route"]
    assert info["decision"] == "full" and info["method"] == "yarn:factor=4.0"
    assert info["reason"].startswith("345 tokens (300 document + 41 prompt + 4 answer) > ")
    assert "> measured effective length 128 of none on tiny-llama" in info["reason"]
    assert "measured effective length 512 of yarn:factor=4.0 on tiny-llama" in info["reason"]
    # a stricter threshold re-derives the lengths from the tested points: yarn 256, dynamic-ntk 0 -> rag
    e2 = FakeEngine(llama)
    r2 = route(e2, f"route:rag=bm25,table={table},threshold=0.95", _text(300))
    assert r2.extra["route"]["decision"] == "rag" and len(e2.calls) == 1


def test_beyond_every_measured_length_goes_to_rag_with_the_instruction(llama, table):
    e = FakeEngine(llama)
    doc = _text(2000)
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,top_k=4,table={table}", doc)
    assert [s for s, _ in e.calls] == ["rag:retriever=bm25,chunk=32,overlap=8,top_k=4"]
    sub = e.calls[0][1]
    assert sub.question == f"{QUESTION} {UNANSWERABLE_INSTRUCTION}" and sub.document is doc
    info = r.extra["route"]
    assert info["decision"] == "rag" and r.answer == "4242" and r.evidence == ["from " + info["method"]]
    assert info["reason"].endswith("no position method is measured to hold them; rag answered.")
    assert info["paths"] == [{"method": info["method"], "seconds": info["paths"][0]["seconds"], "input_tokens": 100,
                              "answer": "4242", "declined": False}]


def test_rag_declines_then_the_fallback_reads_long(llama, table):
    e = FakeEngine(llama, rag_answer="The text does not mention a pass key.")
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,table={table}", _text(2000))
    specs = [s for s, _ in e.calls]
    assert specs == ["rag:retriever=bm25,chunk=32,overlap=8", infiniretri_spec(256)]
    assert infiniretri_spec(256) == "infiniretri:chunk=64,top_k=32" and infiniretri_spec(8192) == "infiniretri"
    assert e.calls[1][1].question == QUESTION  # the long read gets the plain question
    info = r.extra["route"]
    assert info["decision"] == "rag->long" and info["method"] == specs[1] and r.answer == "long answer 2"
    assert [p["declined"] for p in info["paths"]] == [True, False]
    # costs summed over the paths, the cache the largest one held, the answering path's own extra kept
    assert (r.input_tokens, r.prefill_seconds, r.decode_seconds, r.kv_cache_bytes) == (300, 2.0, 1.0, 20)
    assert r.output_ids == [1, 2] and r.extra["sub"] == specs[1] and r.evidence == [f"from {specs[1]}"]


def test_fallback_off_and_beyond_max_fallback_keep_the_rag_answer(llama, table):
    declined = "unanswerable"
    e = FakeEngine(llama, rag_answer=declined)
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,fallback=false,table={table}", _text(2000))
    assert len(e.calls) == 1 and r.answer == declined
    assert r.extra["route"]["reason"].endswith("rag declined and the fallback is off.")
    e = FakeEngine(llama, rag_answer=declined)
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,max_fallback=1000,table={table}", _text(2000))
    assert len(e.calls) == 1 and r.extra["route"]["decision"] == "rag"
    # counting stopped past max_fallback (the lookahead piece was never tokenized): a lower bound, said so
    assert "the document has at least 1,999 tokens > max_fallback 1,000, so the rag answer stands." \
        in r.extra["route"]["reason"] and r.extra["route"]["document_tokens"] is None


def test_unknown_model_assumes_half_the_window(llama, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": 1, "threshold": 0.8, "models": {}}))
    e = FakeEngine(llama)
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,table={empty}", _text(80))  # 80 + 41 + 4 <= 128
    assert [s for s, _ in e.calls] == ["none"]
    assert "assumed effective length 128 of none on tiny-llama (no calibration for tiny-llama; assumed half the " \
           "window)" in r.extra["route"]["reason"]
    e = FakeEngine(llama)
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,table={empty}", _text(90))  # 135 > 128
    assert r.extra["route"]["decision"] == "rag"


def test_explicit_long_and_carried_cache_method(llama, table):
    # long=infiniretri: no position method is considered for the full read; the fallback uses it as given
    e = FakeEngine(llama, rag_answer="I don't know")
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,long=infiniretri,table={table}", _text(300))
    assert [s for s, _ in e.calls] == ["rag:retriever=bm25,chunk=32,overlap=8", "infiniretri"]
    assert "long=infiniretri is not a position method measured to hold them" in r.extra["route"]["reason"]
    # long=dynamic-ntk: only that entry counts (yarn is more accurate but not asked for)
    e = FakeEngine(llama)
    route(e, f"route:rag=bm25,long=dynamic-ntk,table={table}", _text(300))
    assert [s for s, _ in e.calls] == ["dynamic-ntk"]
    # an explicit long path that cannot hold the input: the rag answer stands, with the numbers
    e = FakeEngine(llama, rag_answer="unanswerable")
    r = route(e, f"route:rag=bm25,chunk=32,overlap=8,long=yarn,table={table}", _text(2000))
    assert len(e.calls) == 1 and "rag declined but yarn reads 1,024 tokens < the 2,045 needed, so the rag answer stands" in r.extra["route"]["reason"]
    # the outer plan's cache method goes into every sub-read; a rope method is refused in one line
    e = FakeEngine(llama, rag_answer="unanswerable")
    route(e, f"route:rag=bm25,chunk=32,overlap=8,table={table}+kv-int4", _text(2000))
    assert [s for s, _ in e.calls] == ["rag:retriever=bm25,chunk=32,overlap=8+kv-int4",
                                       "infiniretri:chunk=64,top_k=32+kv-int4"]
    with pytest.raises(SpecError, match="route picks the position method itself"):
        route(FakeEngine(llama), f"yarn:factor=4+route:table={table}", _text(10))


def test_corpus_full_read_joins_files_and_rag_gets_the_corpus(llama, table, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("Alpha text.\n")
    b.write_text("The pass key is 4242.\n")
    corpus = Corpus([a, b], [str(a), str(b)])
    e = FakeEngine(llama)
    r = route(e, f"route:rag=bm25,table={table}", corpus)
    joined = e.calls[0][1].document
    assert joined == "=== a.txt ===\nAlpha text.\n\n=== b.txt ===\nThe pass key is 4242."
    # counted as joined, plus the two files' final newlines that the join strips
    assert r.extra["route"]["document_tokens"] == len(joined) + 2
    big = tmp_path / "big.txt"
    big.write_text(_text(3000))
    e = FakeEngine(llama)
    route(e, f"route:rag=bm25,chunk=32,overlap=8,table={table}", Corpus([a, big], [str(a), str(big)]))
    assert isinstance(e.calls[0][1].document, Corpus)
    # a one-shot iterable of pieces is read once, then every path gets the same text
    e = FakeEngine(llama, rag_answer="unanswerable")
    route(e, f"route:rag=bm25,chunk=32,overlap=8,table={table}", iter([_text(1000), _text(1000)]))
    assert [c[1].document for c in e.calls] == [_text(1000) * 2] * 2


def test_real_readers_on_a_tiny_model_through_the_engine(llama, table, monkeypatch, tmp_path):
    """The sub-plans run for real (rag's index, infiniretri's passes): the tiny random model never
    declines, so the test makes every answer a decline to drive the fallback."""
    import longreach.readers.route as route_module

    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(route_module, "declines", lambda answer: True)
    doc = "\n".join(f"Sentence {i} says the sky is blue." for i in range(20)) + "\nThe pass key is 4242.\n"
    r = Engine.for_model(llama).run(f"route:rag=bm25,chunk=32,overlap=8,top_k=4,table={table}",
                                    Request(doc, QUESTION, 3))
    info = r.extra["route"]
    assert info["decision"] == "rag->long" and info["method"] == "infiniretri:chunk=64,top_k=32"
    rag, long = info["paths"]
    assert rag["method"] == "rag:retriever=bm25,chunk=32,overlap=8,top_k=4" and rag["input_tokens"] > len(doc)
    assert long["input_tokens"] > len(doc) and r.input_tokens == rag["input_tokens"] + long["input_tokens"]
    assert r.evidence and all(e in doc for e in r.evidence)  # infiniretri's retained sentences
    assert r.extra["passes"] >= 2 and info["document_tokens"] == len(doc)


def test_token_counter_stops_early_and_adds_up(llama, tmp_path):
    tok = llama.tokenizer
    path = tmp_path / "long.txt"
    path.write_text(_text(300_000))
    c = TokenCounter(path, tok)
    assert c.exceeds(1000) and not c.done and c.n < 300_000  # one 64k-character block, not the whole file
    assert c.shown().startswith("at least ")
    assert not c.exceeds(400_000) and c.done and c.n == 300_000  # resumes; pieces add up to the whole
    text = "één twee drie " * 20_000  # multi-byte characters across piece boundaries
    c = TokenCounter(text, tok)
    assert not c.exceeds(10**7) and c.n == len(tok(text, add_special_tokens=False).input_ids)


# ------------------------------------------------------------------------------------ parameters, table
def test_parameters_are_checked_in_one_line(tmp_path):
    for spec, words in [("route:long=none", "does not read past the window"), ("route:long=rag", "does not read"),
                        ("route:chunk=32", "overlap=32"), ("route:threshold=1.5", "threshold=1.5"),
                        ("route:rag=tfidf", "bm25"), ("route:max_fallback=0", "max_fallback")]:
        with pytest.raises(SpecError, match=words) as exc:
            Plan.from_spec(spec)
        assert "\n" not in str(exc.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "models": {"m": {"none": {"effective_length": "8k"}}}}')
    with pytest.raises(InputError, match="m / none has no whole-number effective_length"):
        Plan.from_spec(f"route:table={bad}")
    with pytest.raises(InputError, match="no such calibration table"):
        Plan.from_spec(f"route:table={tmp_path / 'absent.json'}")
    with pytest.raises(InputError, match="no such calibration table"):  # ENAMETOOLONG from stat, found by the fuzzer
        Plan.from_spec("route:table=" + "1" * 400)
    plan = Plan.from_spec("route")
    assert plan.reach(None) is None and plan.extends
    reader = plan.make_reader()
    assert reader.streams and reader.corpus


def test_packaged_table_is_valid_and_marks_its_sources():
    table = load_table()
    assert table == load_table(PACKAGED_TABLE) and table["version"] == 1
    smol = effective_lengths("smollm2-135m")
    assert smol["none"]["effective_length"] == effective_length(smol["none"]["tested"], smol["none"]["threshold"])
    for entries in table["models"].values():
        for e in entries.values():
            assert e["source"] and all(Path(s).parts[:2] == ("benchmarks", "results") for s in e["source"].split(", "))
    assert effective_lengths("no-such-model") == {}


# ------------------------------------------------------------------------------------------ calibration
def test_effective_length_rule_on_hand_made_points():
    points = [(4096, 0.9, 3), (1024, 1.0, 3), (2048, 0.7, 3)]  # any order
    assert effective_length(points, 0.8) == 1024  # 4096 passes but 2048 below it fails: monotone rule
    assert effective_length(points, 0.7) == 4096
    assert effective_length(points, 0.95) == 1024 and effective_length(points, 1.0) == 1024
    assert effective_length([(1024, 0.5, 3)], 0.8) == 0
    assert effective_length([], 0.8) == 0


@given(st.dictionaries(st.integers(1, 10**6), st.floats(0, 1), max_size=8), st.floats(0.01, 1))
def test_effective_length_matches_the_report_rule(scores, threshold):
    ours = effective_length([(n, a, 1) for n, a in scores.items()], threshold)
    assert ours == (report_effective_length(scores, threshold) or 0)  # longreach report's RULER table


def _oracle(out, fail_above, methods="none", lengths="1k,2k,4k"):
    cfg = load_config(None, dict(backend=f"oracle:fail_above={fail_above}", methods=methods,
                                 tasks="passkey,niah_single_2", lengths=lengths, depths=2, out=str(out),
                                 prompt="plain"))
    run_bench(cfg, progress=False)
    return out


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    a = _oracle(tmp_path / "a", 1500, methods="none,yarn:factor=4")  # 1k right, 2k and 4k wrong
    b = _oracle(tmp_path / "b", 2500, lengths="1k,2k")  # 1k and 2k right
    return a, b


def test_calibrate_pools_folders_and_applies_the_rule(folders):
    a, b = folders
    lines = []
    entries = calibrate([a, b], threshold=0.8, say=lines.append)
    none = entries["oracle-smollm2-135m"]["none"]
    # 2k: a says 0 on both tasks, b says 1: pooled by samples -> 0.5 (< 0.8)
    assert none["tested"] == [[1024, 1.0, 8], [2048, 0.5, 8], [4096, 0.0, 4]]
    assert none["effective_length"] == 1024 and none["tasks"] == ["passkey", "niah_single_2"]
    assert none["source"] == f"{a.as_posix()}, {b.as_posix()}" and none["prompt"] == "plain"
    assert none["window"] is None and none["git_hash"] == json.loads((a / "results.json").read_text())["git_hash"]
    assert calibrate([a, b], threshold=0.5, say=lines.append)["oracle-smollm2-135m"]["none"]["effective_length"] == 2048
    assert entries["oracle-smollm2-135m"]["yarn:factor=4.0"]["tested"] == [[1024, 1.0, 4], [2048, 0.0, 4],
                                                                           [4096, 0.0, 4]]
    only = calibrate([b], tasks=["passkey"], say=lines.append)["oracle-smollm2-135m"]["none"]
    assert only["tasks"] == ["passkey"] and only["tested"] == [[1024, 1.0, 2], [2048, 1.0, 2]]
    assert any("effective length 1,024" in line for line in lines)


def test_calibrate_cli_merges_into_the_table(folders, tmp_path, capsys):
    a, b = folders
    out = tmp_path / "table.json"
    out.write_text(dumps(merge({"version": 1, "models": {}}, {"other-model": {"none": _entry([(512, 1.0, 3)])},
                                                               "oracle-smollm2-135m": {"none": _entry([(8, 1.0, 1)])}},
                               0.8)))
    assert main(["calibrate", str(a), str(b), "--out", str(out), "--threshold", "0.5"]) == 0
    assert "effective length 2,048" in capsys.readouterr().out
    table = load_table(out)
    assert table["threshold"] == 0.5 and table["models"]["other-model"]["none"]["effective_length"] == 512
    assert table["models"]["oracle-smollm2-135m"]["none"]["effective_length"] == 2048  # replaced
    assert '[1024, 1.0, 8]' in out.read_text()  # one line per tested point
    # the router reads what calibrate wrote
    assert effective_lengths("oracle-smollm2-135m", out)["none"]["tested"][1] == [2048, 0.5, 8]
    bad_out = tmp_path / "no" / "t.json"
    for argv, words in [([str(tmp_path / "nope"), "--out", str(out)], "no such results folder"),
                        ([str(tmp_path), "--out", str(out)], "no cells/"),
                        ([str(a), "--tasks", "vt", "--out", str(out)], "no finished cells of vt"),
                        ([str(a), "--tasks", "pasky", "--out", str(out)], "unknown task 'pasky'"),
                        ([str(a), "--threshold", "80", "--out", str(out)], "accuracy in (0, 1]"),
                        ([str(a), "--out", str(bad_out)], "existing folder")]:
        before = out.read_text()
        assert main(["calibrate", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
        assert out.read_text() == before  # nothing written on an error


# ------------------------------------------------------------------------------- the real packaged model
@pytest.mark.integration
def test_smollm2_short_document_is_read_whole(smollm2):
    text = "The meeting is on Tuesday. The pass key is 4242. " * 10
    r = Engine.for_model(smollm2).run("route:rag=bm25", Request(text, QUESTION, 5, answer_prefix="The pass key is"))
    measured = effective_lengths("smollm2-135m")["none"]["effective_length"]
    info = r.extra["route"]
    assert info["decision"] == "full" and info["method"] == "none" and "4242" in r.answer
    assert f"<= measured effective length {measured:,} of none on smollm2-135m" in info["reason"]
    assert r.input_tokens == info["paths"][0]["input_tokens"] > info["document_tokens"]
