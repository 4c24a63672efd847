"""benchmarks/kv_compression.py bookkeeping: result paths and per-sample resume (no model is loaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kv_compression.py"


@pytest.fixture(scope="module")
def kv():
    spec = importlib.util.spec_from_file_location("kv_compression_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("out", "json_name", "md_name"), [
    ("results/kv-0.5", "kv-0.5.json", "kv-0.5.md"),  # a dot inside the name is not a suffix
    ("results/kv-32k", "kv-32k.json", "kv-32k.md"),
    ("results/kv.json", "kv.json", "kv.md"),
    ("results/kv.md", "kv.json", "kv.md"),
])
def test_result_paths_keep_dots_in_names(kv, out, json_name, md_name):
    js, md = kv.result_paths(out)
    assert (js.name, md.name) == (json_name, md_name)
    assert js.parent == Path("results")


def test_single_depth_runs_line_up_with_the_full_run(kv):
    full = kv.cases([0.1, 0.5, 0.9], seed=0, keys=1)
    assert full == [(0.1, 0), (0.5, 1), (0.9, 2)]
    # "--depths 0.9 --seed 2" names the same document as the third sample of the full run
    assert kv.case_id(*kv.cases([0.9], seed=2, keys=1)[0]) == kv.case_id(*full[2]) == "0.9@2"


def test_missing_lists_only_unfinished_samples(kv):
    todo = kv.cases([0.1, 0.5, 0.9], seed=0, keys=1)
    row = {"passkey_samples": {"0.1@0": {}, "0.9@2": {}}}
    assert kv.missing(row, "passkey", todo) == [(0.5, 1)]
    assert kv.missing({}, "passkey", todo) == todo
    # a row written before samples were kept has no per-sample record: it counts as complete
    assert kv.missing({"passkey": 0.0, "passkey_hits": [0.0]}, "passkey", todo) == []
    assert kv.missing(row, "niah", todo) == todo


def test_summary_orders_by_depth_and_aggregates(kv):
    samples = {
        "0.9@2": {"hit": 0.0, "answer": "3: x", "peak_rss_bytes": 30, "kv_bytes": 7},
        "0.1@0": {"hit": 1.0, "answer": "1: 1", "peak_rss_bytes": 50, "kv_bytes": 5},
        "0.5@1": {"hit": 1.0, "answer": "2: 2", "peak_rss_bytes": 40, "kv_bytes": 6},
    }
    s = kv.passkey_summary(samples)
    assert s["passkey_hits"] == [1.0, 1.0, 0.0]
    assert s["passkey"] == pytest.approx(2 / 3)
    assert s["passkey_answers"] == ["1: 1", "2: 2", "3: x"]
    assert (s["peak_rss_bytes"], s["passkey_kv_bytes"]) == (50, 7)
