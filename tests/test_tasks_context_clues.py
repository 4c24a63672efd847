"""Context Clues-style EHR timelines: sizing, the gold answers re-derived from the timeline text, the
repetition / gap parameters and meta, and the scorer on hand-written answers."""

from __future__ import annotations

import datetime

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens

TOK = byte_tokenizer()


def _events(context: str) -> list[tuple[str, str, str]]:
    out = []
    for line in context.splitlines()[1:]:
        date, code, *rest = line.split(" ")
        out.append((date, code, rest[1] if rest else ""))
    return out


@pytest.mark.parametrize("question", ["next", "copy"])
@pytest.mark.parametrize("length", [1500, 6000])
def test_fits_the_length(question, length):
    task = make_task(f"ehr-sequence:question={question}")
    s = task.generate(TOK, length, seed=3)
    budget = length - task.max_new_tokens
    assert 0.9 * budget <= s.meta["tokens"] == prompt_tokens(TOK, s) <= budget


@pytest.mark.parametrize("seed", range(3))
def test_next_follows_the_planted_motif(seed):
    s = make_task("ehr-sequence").generate(TOK, 5000, seed=seed)
    codes = [c for _, c, _ in _events(s.context)]
    a, b = codes[-2:]
    followers = {codes[i + 2] for i in range(len(codes) - 2) if codes[i] == a and codes[i + 1] == b}
    assert followers == {s.references[0]} and s.meta["occurrences"] >= 2
    assert all(codes.count(c) == s.meta["occurrences"] for c in followers)  # the motif is its only place


@pytest.mark.parametrize("seed", range(3))
def test_copy_is_the_last_measurement(seed):
    s = make_task("ehr-sequence:question=copy").generate(TOK, 5000, seed=seed)
    lab = s.question.split("recent ")[1].split(" ")[0]
    events = _events(s.context)
    mine = [(d, v) for d, c, v in events if c == lab]
    assert len(mine) == s.meta["occurrences"] and mine[-1][1] == s.references[0]
    end, last = (datetime.date.fromisoformat(d) for d in (events[-1][0], mine[-1][0]))
    assert (end - last).days == s.meta["since_days"]


def test_dates_increase_and_parameters_move_the_meta():
    lo = make_task("ehr-sequence:repeat=0.1,gap=5").generate(TOK, 8000, seed=1)
    hi = make_task("ehr-sequence:repeat=0.9,gap=90").generate(TOK, 8000, seed=1)
    dates = [d for d, _, _ in _events(hi.context)]
    assert dates == sorted(dates)
    assert lo.meta["repetition"] < hi.meta["repetition"] and lo.meta["mean_gap"] < 10 < 60 < hi.meta["mean_gap"]
    cm = make_task("ehr-sequence").cell_metrics([{"meta": lo.meta}, {"meta": hi.meta}])
    assert cm["repetition"] == pytest.approx((lo.meta["repetition"] + hi.meta["repetition"]) / 2, abs=1e-4)
    with pytest.raises(BenchError, match="repeat"):
        make_task("ehr-sequence:repeat=1.5")
    with pytest.raises(BenchError, match="question"):
        make_task("ehr-sequence:question=prev")


def test_scorers():
    t = make_task("ehr-sequence")
    nxt = Sample("", "q", "Answer:", ["RX-0932"], {})
    assert t.score(nxt, "RX-0932") == 1.0
    assert t.score(nxt, "The next event is most likely rx-0932 (a drug).") == 1.0  # verbose, case
    assert t.score(nxt, "RX-0933") == 0.0 and t.score(nxt, "RX-09") == 0.0  # wrong / partial code
    assert t.score(nxt, "DX-K21.7 or RX-0932") == 0.0  # the first code counts
    assert t.score(nxt, "I could not find it.") == 0.0
    copy = Sample("", "q", "Answer:", ["4.2"], {})
    assert t.score(copy, "4.2") == 1.0 and t.score(copy, "4.20 mmol/L") == 1.0
    assert t.score(copy, "On 2016-03-02 it was 4.2 mmol/L.") == 1.0  # dates are skipped
    assert t.score(copy, "4.3") == 0.0 and t.score(copy, "I could not find it.") == 0.0
