"""Beliefs task: the runner's baseline hook (two requests per sample, stored, scored as a pair, resumed
without asking again), stance parsing and scorers on hand-written answers, one-sided texts, sizing."""

from __future__ import annotations

import json

import pytest
from conftest import byte_tokenizer

from longreach.bench.backends import OracleBackend
from longreach.bench.runner import load_config, run_bench
from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks.beliefs import PROPOSALS, parse_stance

TOK = byte_tokenizer()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


def _sample(side_answer: str) -> Sample:
    return Sample("text", "Should the town of Orrin merge its two primary schools into one? Answer with yes or no only.",
                  "", [side_answer], {})


# ------------------------------------------------------------------------------------ stance parsing
@pytest.mark.parametrize("answer, stance", [
    ("Yes", "yes"), ("no.", "no"), (" NO, it should not.", "no"), ("Yes, Orrin should merge them.", "yes"),
    ("I would say yes: one school is cheaper.", "yes"),  # verbose
    ("Answer yes or no: no", "no"),  # the question's "yes or no" echoed, then the answer
    ("yes/no? Yes", "yes"),
    ("No. Well, yes, maybe.", "no"),  # the first one counts
    ("It should not.", None), ("I could not find it.", None), ("Nobody knows; yesterday it was", None),
    ("", None), (None, None),
])
def test_parse_stance(answer, stance):
    assert parse_stance(answer) == stance


def test_scorers_on_hand_written_answers():
    t = make_task("beliefs")
    pro = _sample("yes")  # the text argued yes
    assert t.score(pro, "Yes.") == 1.0 and t.score(pro, "Yes, the schools should merge, I think.") == 1.0
    assert t.score(pro, "No.") == 0.0 and t.score(pro, "I could not find it.") == 0.0
    # pair: 1 only for an answer that moved from the other side to the text's side
    assert t.score_pair(pro, "Yes", "No") == 1.0
    assert t.score_pair(pro, "Yes, after reading this, the merger makes sense.", "No, keep both schools.") == 1.0
    assert t.score_pair(pro, "Yes", "Yes") == 0.0  # already agreed: no change
    assert t.score_pair(pro, "No", "No") == 0.0  # unmoved
    assert t.score_pair(pro, "No", "Yes") == 0.0  # moved away from the text
    assert t.score_pair(pro, "Yes", "Hard to say.") == 0.0  # unparseable before
    assert t.score_pair(pro, "It depends.", "No") == 0.0  # unparseable after
    assert t.score_pair(pro, "Yes", None) == 1.0  # no baseline answer: the plain score
    con = _sample("no")
    assert t.score_pair(con, "No, it should not.", "Yes") == 1.0 and t.score_pair(con, "Yes", "No") == 0.0
    assert t.answer_meta(pro, "Yes", "hmm") == {"stance_before": None, "stance_after": "yes"}
    recs = [{"references": ["yes"], "baseline_prediction": "No", "prediction": "Yes"},
            {"references": ["yes"], "baseline_prediction": "No", "prediction": "No"},
            {"references": ["no"], "baseline_prediction": "No", "prediction": "No"},
            {"references": ["no"], "prediction": "", "error": "boom"}]  # a failed sample: nothing parsed
    m = t.cell_metrics(recs)
    assert m == {"agree_before": 0.25, "agree_after": 0.5, "shift_of_opposed": 0.5, "unparsed": 2}
    assert t.cell_metrics([]) == {"agree_before": None, "agree_after": None, "shift_of_opposed": None,
                                  "unparsed": 0}


# --------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("side", ["pro", "con"])
def test_text_argues_one_side_only_and_the_baseline_has_no_text(side):
    t = make_task(f"beliefs:side={side}")
    assert t.family == "Beliefs" and "2511.01805" in type(t).__doc__
    for seed in range(4):
        s = t.generate(TOK, 6000, seed=seed)
        k, place = s.meta["proposal"], s.meta["place"]
        action, yes, no = PROPOSALS[k]
        ours, theirs = (yes, no) if side == "pro" else (no, yes)
        assert s.meta["side"] == side and s.references == ["yes" if side == "pro" else "no"]
        assert place in s.question and action in s.question
        assert sum(c in s.context for c in ours) >= 3 and not any(c in s.context for c in theirs)
        assert (f"should not {action}" in s.context) == (side == "con")
        assert s.meta["argument_sentences"] >= 10 and s.meta["filler_sentences"] > 0
        b = t.baseline(s)
        assert b.question == s.question and b.context == s.context.split("\n\n")[0] and len(b.context) < 120
        assert b.references == ["no" if side == "pro" else "yes"] and b.max_new_tokens == s.max_new_tokens
        assert b.meta["tokens"] == prompt_tokens(TOK, b)


def test_sizing_sides_and_errors():
    t = make_task("beliefs")
    for length in (700, 3000):
        s = t.generate(TOK, length, seed=5)
        assert 0.85 * (length - t.max_new_tokens) <= s.meta["tokens"] == prompt_tokens(TOK, s) <= length - 8
    sides = {t.generate(TOK, 900, seed=i).meta["side"] for i in range(12)}
    assert sides == {"pro", "con"}  # side=any: seeded per sample
    only = make_task("beliefs:filler=0").generate(TOK, 3000, seed=1)
    assert only.meta["filler_sentences"] == 0 and only.meta["argument_sentences"] > 20
    with pytest.raises(BenchError, match="longer length"):
        t.generate(TOK, 200, seed=0)
    with pytest.raises(BenchError, match="side"):
        make_task("beliefs:side=both")
    with pytest.raises(BenchError, match="filler"):
        make_task("beliefs:filler=500")


def test_deterministic_and_prefix_stable():
    t = make_task("beliefs:side=pro")
    a, b = t.generate(TOK, 2500, seed=11), t.generate(TOK, 2500, seed=11)
    assert a == b and t.baseline(a) == t.baseline(b)
    longer = t.generate(TOK, 5000, seed=11)
    assert longer.context.startswith(a.context.rsplit("\n\n", 1)[0])  # a longer text extends the shorter one
    assert t.generate(TOK, 2500, seed=12).context != a.context


def test_fits_with_the_packaged_tokenizer():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    t = make_task("beliefs")
    s = t.generate(tok, 4000, seed=2)
    assert 0.95 * 3992 <= s.meta["tokens"] == prompt_tokens(tok, s) <= 3992
    assert t.baseline(s).meta["tokens"] == prompt_tokens(tok, t.baseline(s)) < 120


# ------------------------------------------------------------------------------ the runner's hook
class CountingBackend(OracleBackend):
    """Answers "No" to a prompt without the text and "Yes" after it (``after``), counting the requests."""

    def __init__(self, after: str = "Yes, I think so."):
        super().__init__("smollm2-135m")
        self.after = after
        self.asked: list[str] = []

    def generate(self, sample, plan):
        out = super().generate(sample, plan)
        baseline = bool(sample.meta.get("baseline"))
        self.asked.append("baseline" if baseline else "text")
        out["prediction"] = "No." if baseline else self.after
        return out


def _cfg(out, tasks="beliefs:side=pro"):
    return load_config(None, dict(backend="oracle", methods="none", tasks=tasks, lengths="1k", samples=3,
                                  out=str(out)))


def test_runner_asks_the_baseline_once_per_sample_and_resumes(tmp_path):
    backend = CountingBackend()
    cfg = _cfg(tmp_path / "out")
    stats = run_bench(cfg, progress=False, backend=backend)
    assert stats.ran == 3 and backend.asked == ["baseline", "text"] * 3
    cell = next((tmp_path / "out/cells").glob("*/none/beliefs*/1k"))
    recs = [json.loads(line) for line in (cell / "samples.jsonl").read_text().splitlines()]
    for r in recs:
        assert r["baseline_prediction"] == "No." and r["prediction"] == "Yes, I think so." and r["score"] == 1.0
        assert r["baseline_seconds"] >= 0 and r["seconds"] >= 0 and 0 < r["baseline_input_tokens"] < r["input_tokens"]
        assert r["meta"]["stance_before"] == "no" and r["meta"]["stance_after"] == "yes"
        assert r["meta"]["side"] == "pro" and r["meta"]["topic"]
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["score"] == 1.0 and metrics["shift_of_opposed"] == 1.0 and metrics["agree_before"] == 0.0
    # finished: nothing asked again; a lost metrics.json is rebuilt from the records alone
    assert run_bench(cfg, progress=False, backend=backend).ran == 0 and len(backend.asked) == 6
    (cell / "metrics.json").unlink()
    assert run_bench(cfg, progress=False, backend=backend).ran == 0 and len(backend.asked) == 6
    assert json.loads((cell / "metrics.json").read_text())["score"] == 1.0
    # a sample lost mid-cell: only it is asked again, both requests
    lines = (cell / "samples.jsonl").read_text().splitlines(keepends=True)
    (cell / "samples.jsonl").write_text("".join(lines[:2]))
    (cell / "metrics.json").unlink()
    assert run_bench(cfg, progress=False, backend=backend).ran == 1 and len(backend.asked) == 8


def test_unmoved_answers_score_zero_and_other_tasks_are_asked_once(tmp_path):
    backend = CountingBackend(after="No, it should not.")
    run_bench(_cfg(tmp_path / "out", "beliefs:side=pro,passkey"), progress=False, backend=backend)
    cell = next((tmp_path / "out/cells").glob("*/none/beliefs*/1k"))
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["score"] == 0.0 and metrics["shift_of_opposed"] == 0.0 and metrics["agree_after"] == 0.0
    passkey = next((tmp_path / "out/cells").glob("*/none/passkey/1k"))
    recs = [json.loads(line) for line in (passkey / "samples.jsonl").read_text().splitlines()]
    assert not any("baseline_prediction" in r for r in recs)
    assert backend.asked.count("baseline") == 3 and backend.asked.count("text") == 3 + len(recs)  # passkey: once


def test_plain_oracle_sweep_counts_a_change(tmp_path):
    """The oracle backend answers each prompt's references: the baseline's is the other side."""
    run_bench(_cfg(tmp_path / "out", "beliefs"), progress=False)
    cell = next((tmp_path / "out/cells").glob("*/none/beliefs/1k"))
    assert json.loads((cell / "metrics.json").read_text())["score"] == 1.0
