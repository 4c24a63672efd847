"""The query-agnostic protocol (bench/shared_context.py): K questions per context, the context prefilled and
compressed once without them; the task hooks, the runner's records and metrics, resume and fallbacks."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import tiny_llama, wrap

from longreach.bench.backends import LocalBackend, byte_tokenizer
from longreach.bench.files import RecordWriter
from longreach.bench.runner import load_config, run_bench, slug
from longreach.bench.shared_context import answer_shared, split_prompts
from longreach.bench.task import BenchError, make_task
from longreach.prompt import build_prompt, encode
from longreach.spec import Plan
from longreach.units import format_length

LENGTH = 700  # tokens of the byte tokenizer: a few kv pairs / needles, fast on the tiny model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def lm():
    return wrap(tiny_llama(window=1024), "tiny-llama")


def records(out, lm_name: str, method: str, task: str, length: int = LENGTH) -> list[dict]:
    path = out / "cells" / lm_name / slug(method) / slug(task) / format_length(length) / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics(out, lm_name: str, method: str, task: str, length: int = LENGTH) -> dict:
    folder = out / "cells" / lm_name / slug(method) / slug(task) / format_length(length)
    return json.loads((folder / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------ task hooks
@pytest.mark.parametrize("spec", ["kv-retrieval", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
                                  "needlebench-mrt"])
def test_questions_share_the_context_and_have_their_own_answers(spec):
    tok = byte_tokenizer()
    task = make_task(spec)
    sample = task.generate(tok, 3000, seed=1, depth=0.5)
    qs = task.questions(sample, 4)
    assert len(qs) == 4 and [q.meta["query_index"] for q in qs] == [0, 1, 2, 3]
    assert all(q.context == sample.context for q in qs)  # exactly the same context
    assert len({q.question for q in qs}) == 4 and len({tuple(q.references) for q in qs}) == 4
    for q in qs:
        assert all(r in q.context for r in q.references)  # every answer is in the shared context
        assert task.score(q, " ".join(q.references)) == 1.0 and task.score(q, "no idea") == 0.0
    if spec != "needlebench-mrt":  # query 0 is the sample's own question (mrt asks all facts at once)
        assert (qs[0].question, qs[0].references) == (sample.question, sample.references)
    assert task.questions(sample, 4) == qs  # built from the sample alone: the same every time


def test_kv_retrieval_questions_are_the_json_pairs():
    """Independent reference: parse the JSON with json.loads and look every asked key up."""
    tok = byte_tokenizer()
    task = make_task("kv-retrieval")
    sample = task.generate(tok, 2000, seed=0, depth=0.0)
    data = json.loads(sample.context.split("JSON data:\n", 1)[1])
    qs = task.questions(sample, 64)  # more than the pairs: every pair once
    assert len(qs) == len(data)
    keys = [q.question.split('"')[1] for q in qs]
    assert sorted(keys) == sorted(data) and all(q.references == [data[k]] for q, k in zip(qs, keys))


def test_tasks_without_the_hook_and_single_key_contexts():
    tok = byte_tokenizer()
    assert make_task("passkey").questions(make_task("passkey").generate(tok, 600, 0, 0.5), 4) is None
    single = make_task("niah_single_2")
    assert len(single.questions(single.generate(tok, 1500, 0, 0.5), 4)) == 1  # no other key in the context


# ------------------------------------------------------------------------------------------ settings
def test_bad_counts_are_one_line_errors(tmp_path, capsys):
    for k in (-1, 65, "four"):
        with pytest.raises(BenchError, match="query-agnostic") as exc:
            load_config(None, {"query_agnostic": k, "backend": "oracle"})
        assert "\n" not in str(exc.value) and "0 and 64" in str(exc.value)
    from longreach.cli import main

    assert main(["bench", "--backend", "oracle", "--tasks", "kv-retrieval", "--lengths", "1k", "--out",
                 str(tmp_path), "--query-agnostic", "65", "--no-progress"]) == 2
    assert "--query-agnostic: 65 is out of range" in capsys.readouterr().err


def test_oracle_fallback_note_metrics_and_identity(tmp_path):
    out = tmp_path / "o"
    cfg = load_config(None, dict(backend="oracle", methods="none", tasks="kv-retrieval;passkey", lengths="1k",
                                 depths=2, out=str(out), query_agnostic=3))
    stats = run_bench(cfg, progress=False)
    assert stats.ran == 2 * 3 + 2  # kv: 2 depths x 3 questions; passkey: 2 samples, one question each
    name = "oracle-smollm2-135m"
    kv = records(out, name, "none", "kv-retrieval", 1024)
    assert sorted(r["id"] for r in kv) == [f"d{d}-s0-q{q}" for d in range(2) for q in range(3)]
    assert all(r["meta"]["shared"] is False and "oracle backend" in r["meta"]["shared_note"] for r in kv)
    m = metrics(out, name, "none", "kv-retrieval", 1024)
    assert m["n"] == 6 and m["by_query"] == {"0": 1.0, "1": 1.0, "2": 1.0} and m["questions_per_context"] == 3
    assert m["shared"] is False and "independent requests" in m["shared_note"]
    pk = metrics(out, name, "none", "passkey", 1024)
    assert pk["n"] == 2 and "one question per context" in pk["shared_note"]
    # another K is another sweep: one line, before anything runs
    with pytest.raises(BenchError, match="query_agnostic=3.*query_agnostic=2"):
        run_bench(cfg.model_copy(update={"query_agnostic": 2}), progress=False)
    again = run_bench(cfg, progress=False)
    assert again.ran == 0


# ------------------------------------------------------------------------------------ the local engine
def watch_forwards(model) -> tuple[list[tuple[int, torch.Tensor]], object]:
    """(input length, last position's logits (V,)) of every forward call; the caller removes the hook."""
    seen: list[tuple[int, torch.Tensor]] = []

    def hook(mod, args, kwargs, out):
        seen.append((kwargs["input_ids"].shape[1], out.logits[0, -1].detach().clone()))

    return seen, model.register_forward_hook(hook, with_kwargs=True)


def test_none_prefills_once_and_answers_like_independent_requests(lm):
    backend = LocalBackend(lm, chunk_size=4096, prompt="plain")
    task = make_task("niah_multikey_2")
    sample = task.generate(lm.tokenizer, LENGTH, seed=0, depth=0.5)
    qs = task.questions(sample, 3)
    for q in qs:
        q.max_new_tokens = 12
    plan = Plan.from_spec("none")
    split = split_prompts(lm.tokenizer, qs, "plain")
    seen, handle = watch_forwards(lm.model)
    try:
        shared = dict(answer_shared(backend, plan, qs))
    finally:
        handle.remove()
    L = split.shared
    lengths = [n for n, _ in seen if n > 1]  # prefills (decoding feeds one token)
    assert lengths == [L] + [len(ids) - L for ids in split.ids]  # the context once, then each question's own
    # same logits as one pass over each whole prompt (independent reference: the model itself, no cache)
    firsts = [logits for n, logits in seen if n > 1][1:]
    with torch.inference_mode():
        for ids, got in zip(split.ids, firsts):
            want = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    text = build_prompt(lm.tokenizer, qs[1].context, qs[1].question, qs[1].answer_prefix, "plain")
    assert L == len(encode(lm.tokenizer, text[:text.index(qs[1].question)]))  # everything before the question
    for i, q in enumerate(qs):
        alone = backend.generate(q, plan)
        assert shared[i]["prediction"] == alone["prediction"] and shared[i]["input_tokens"] == alone["input_tokens"]
    assert not lm.model._forward_pre_hooks  # the model is as loaded


def test_compressing_cache_never_sees_the_questions(lm, tmp_path, monkeypatch):
    """snapkv scores with query rows: every row it observes lies before the shared context's end, and the
    cache is made without a prompt or question; the compressed context is smaller than the full one."""
    from longreach.engine import Session
    from longreach.kv.evict import EvictingLayer

    made, observed = [], []
    make_cache, observe = Session.make_cache, EvictingLayer.observe

    def spy_make(self, prompt=None, ids=None, question=None):
        made.append((prompt, ids, question))
        return make_cache(self, prompt, ids, question)

    def spy_observe(self, q, first_row):
        observed.append(self.seen + first_row + q.shape[2])  # absolute end of the observed rows
        return observe(self, q, first_row)

    monkeypatch.setattr(Session, "make_cache", spy_make)
    monkeypatch.setattr(EvictingLayer, "observe", spy_observe)
    out = tmp_path / "o"
    method = "snapkv:budget=128,window=16,question_aware=true"
    cfg = load_config(None, dict(methods=f"none;{method};kv-int4", tasks="kv-retrieval", lengths=str(LENGTH),
                                 depths=1, out=str(out), query_agnostic=2, prompt="plain", decode_tokens=4))
    run_bench(cfg, lm=lm, progress=False)
    recs = records(out, lm.name, method, "kv-retrieval")
    assert len(recs) == 2 and all(r["meta"]["shared"] and r["error"] is None for r in recs)
    L = recs[0]["context_tokens"]
    assert made and all(q is None for _, _, q in made)  # no question given to any cache
    assert observed and max(observed) <= L  # no query row of a question token was ever scored with
    snap, full = metrics(out, lm.name, method, "kv-retrieval"), metrics(out, lm.name, "none", "kv-retrieval")
    assert snap["kv_context_bytes"] < 0.5 * full["kv_context_bytes"]
    int4 = metrics(out, lm.name, "kv-int4", "kv-retrieval")
    assert int4["n"] == 2 and int4["errors"] == 0 and int4["kv_context_bytes"] < full["kv_context_bytes"]
    assert int4["shared"] is True and set(int4["by_query"]) == {"0", "1"}


def test_resume_after_one_question(lm, tmp_path, monkeypatch):
    out = tmp_path / "o"
    method = "snapkv:budget=128,window=16"
    cfg = load_config(None, dict(methods=method, tasks="needlebench-mrt", lengths=str(LENGTH), depths=1,
                                 out=str(out), query_agnostic=3, prompt="plain", decode_tokens=4))
    append = RecordWriter.append
    calls = Counter()

    def stop_after_one(self, record):
        append(self, record)
        calls["n"] += 1
        raise KeyboardInterrupt  # killed right after the first question's record

    monkeypatch.setattr(RecordWriter, "append", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, lm=lm, progress=False)
    monkeypatch.setattr(RecordWriter, "append", append)
    assert calls["n"] == 1 and [r["id"] for r in records(out, lm.name, method, "needlebench-mrt")] == ["d0-s0-q0"]
    assert all(not m._forward_pre_hooks for m in lm.model.modules())  # the plan was undone
    stats = run_bench(cfg, lm=lm, progress=False)
    assert stats.ran == 2  # only the missing questions
    ids = [r["id"] for r in records(out, lm.name, method, "needlebench-mrt")]
    assert sorted(ids) == ["d0-s0-q0", "d0-s0-q1", "d0-s0-q2"]  # no duplicates
    m = metrics(out, lm.name, method, "needlebench-mrt")
    assert m["n"] == 3 and m["questions_per_context"] == 3 and m["shared_prefill_seconds"] > 0


def test_rag_falls_back_to_independent_requests(lm, rag_env, tmp_path):
    out = tmp_path / "o"
    cfg = load_config(None, dict(methods="rag", tasks="kv-retrieval", lengths=str(LENGTH), depths=1, out=str(out),
                                 query_agnostic=2, prompt="plain", decode_tokens=2))
    run_bench(cfg, lm=lm, progress=False)
    recs = records(out, lm.name, "rag", "kv-retrieval")
    assert [r["id"] for r in recs] == ["d0-s0-q0", "d0-s0-q1"]
    assert all(not r["meta"]["shared"] and "rag reads each prompt itself" in r["meta"]["shared_note"] for r in recs)
    assert metrics(out, lm.name, "rag", "kv-retrieval")["shared"] is False


def test_shared_metrics_against_a_hand_computation():
    from longreach.bench.shared_context import shared_metrics

    def rec(sid, q, score, seconds, pre):
        return {"id": f"{sid}-q{q}", "score": score, "seconds": seconds, "shared_prefill_seconds": pre,
                "kv_context_bytes": 100 * (1 + (sid == "b")), "meta": {"query_index": q, "shared": True}}

    rs = [rec("a", 0, 1.0, 0.1, 2.0), rec("a", 1, 0.0, 0.3, 2.0), rec("b", 0, 0.5, 0.2, 4.0)]
    m = shared_metrics(rs)
    assert m["by_query"] == {"0": 0.75, "1": 0.0} and m["shared_prefill_seconds"] == 3.0
    assert m["question_seconds_mean"] == 0.2 and m["kv_context_bytes"] == 150 and m["questions_per_context"] == 1.5
    assert shared_metrics([{"id": "d0-s0", "score": 1.0, "meta": {}}]) == {}
