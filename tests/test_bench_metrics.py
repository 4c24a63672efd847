"""Cell metrics (speed, memory, perplexity) against hand-computed values, ratios to a baseline, forced decode
steps, the recorded commands, the Markdown tables, and the benchmark configs / scripts (no model is run)."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
from pathlib import Path

import pytest

from longreach.bench.backends import OracleBackend
from longreach.bench.metrics import cost_metrics, ratios
from longreach.bench.report import cells_table, markdown, render
from longreach.bench.runner import command_line, load_config, plan_cells, run_bench
from longreach.bench.task import make_task
from longreach.spec import Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


def rec(**kw):
    base = {"input_tokens": 1000, "output_tokens": 10, "prefill_seconds": 2.0, "decode_seconds": 1.0,
            "kv_cache_bytes": 4000, "peak_memory_bytes": 100, "error": None}
    return {**base, **kw}


def test_cost_metrics_by_hand():
    records = [
        rec(),
        rec(input_tokens=3000, output_tokens=30, prefill_seconds=4.0, decode_seconds=5.0, kv_cache_bytes=6000,
            peak_memory_bytes=300),
        rec(output_tokens=0, decode_seconds=0.0),  # stopped at once: no decode speed from it
        {"prediction": "", "input_tokens": 500, "error": "too long"},  # failed: nothing measured
    ]
    m = cost_metrics(records)
    assert m["prefill_tokens_per_second"] == pytest.approx((1000 + 3000 + 1000) / (2 + 4 + 2), abs=0.05)  # 625
    assert m["decode_tokens_per_second"] == pytest.approx((10 + 30) / (1 + 5), abs=0.005)  # 6.67
    assert m["output_tokens_mean"] == pytest.approx((10 + 30 + 0) / 3, abs=0.005)
    assert m["kv_cache_bytes"] == 6000 and m["kv_cache_bytes_mean"] == round((4000 + 6000 + 4000) / 3)
    assert m["kv_cache_bytes_per_token"] == pytest.approx((4.0 + 2.0 + 4.0) / 3, abs=0.05)
    assert m["peak_memory_bytes"] == 300


def test_added_memory_is_the_largest_rise_above_each_requests_start():
    """The sample that peaks highest is not the one that added most: it started high (held memory)."""
    records = [rec(peak_memory_bytes=900, start_memory_bytes=800),  # +100
               rec(peak_memory_bytes=700, start_memory_bytes=400),  # +300: the request's own need
               rec(peak_memory_bytes=500),  # no start recorded (an older record): left out
               rec(peak_memory_bytes=600, start_memory_bytes=650)]  # peak below start (pages given back): out
    m = cost_metrics(records)
    assert m["peak_memory_bytes"] == 900 and m["added_memory_bytes"] == 300
    assert cost_metrics([rec()])["added_memory_bytes"] is None


def test_cost_metrics_missing_numbers_are_none():
    # the openai backend measures neither the prefill / decode split nor memory
    m = cost_metrics([{"input_tokens": 10, "output_tokens": 3, "prefill_seconds": None, "decode_seconds": None,
                       "peak_memory_bytes": 0, "kv_cache_bytes": 0}])
    assert m["prefill_tokens_per_second"] is None and m["decode_tokens_per_second"] is None
    assert m["kv_cache_bytes"] is None and m["kv_cache_bytes_per_token"] is None and m["peak_memory_bytes"] is None
    assert cost_metrics([])["output_tokens_mean"] is None


def test_ppl_cell_metrics_is_the_corpus_perplexity():
    task = make_task("ppl")
    records = [{"prediction": "200.0 100", "ppl_tail": 4.0}, {"prediction": "900.0 300", "ppl_tail": 16.0},
               {"prediction": "", "error": "boom"}]
    m = task.cell_metrics(records)
    assert m["ppl"] == pytest.approx(math.exp((200 + 900) / (100 + 300)), rel=1e-4)  # not mean(e^2, e^3)
    assert m["ppl_tail"] == pytest.approx(8.0)  # geometric mean of 4 and 16
    assert task.cell_metrics([]) == {"ppl": None, "ppl_tail": None}


def test_ratios_pair_cells_with_the_baseline_of_the_same_task_and_length():
    def cell(method, length, **kw):
        return {"model": "m", "method": method, "task_spec": "passkey", "length": length, "status": "done",
                "score": 1.0, **kw}

    cells = [cell("none", 1024, decode_tokens_per_second=4.0, kv_cache_bytes=800, ppl=20.0),
             cell("kv-int4", 1024, decode_tokens_per_second=6.0, kv_cache_bytes=200, ppl=21.0),
             cell("kv-int4", 2048, decode_tokens_per_second=6.0),  # no baseline at 2k
             {**cell("none", 4096), "status": "refused", "score": None},
             cell("kv-int4", 4096, kv_cache_bytes=1)]  # the baseline cell was refused
    out = {(c["method"], c["length"]): c for c in ratios(cells, "none")}
    r = out["kv-int4", 1024]["ratios"]
    assert r["decode_tokens_per_second"] == pytest.approx(1.5) and r["kv_cache_bytes"] == pytest.approx(0.25)
    assert r["ppl"] == pytest.approx(1.05) and r["score"] == pytest.approx(1.0)
    assert "peak_memory_bytes" not in r  # measured by neither
    assert out["none", 1024]["ratios"]["kv_cache_bytes"] == 1.0
    assert out["kv-int4", 2048]["ratios"] == {} and out["kv-int4", 4096]["ratios"] == {}
    assert out["none", 4096]["ratios"] == {}


class CountingBackend(OracleBackend):
    """The oracle, answering with fixed speeds and bytes, and keeping the samples it was given."""

    def __init__(self, kv_bytes: int, decode_seconds: float):
        super().__init__("smollm2-135m")
        self.kv_bytes, self.decode_seconds, self.seen = kv_bytes, decode_seconds, []

    def generate(self, sample, plan):
        self.seen.append(sample)
        out = super().generate(sample, plan)
        return {**out, "output_tokens": sample.max_new_tokens, "prefill_seconds": 2.0,
                "decode_seconds": self.decode_seconds, "kv_cache_bytes": self.kv_bytes * sample.meta["tokens"],
                "peak_memory_bytes": 1000}


def test_decode_tokens_forces_the_steps_and_sizes_the_prompt(tmp_path):
    cfg = load_config(None, dict(methods="none", tasks="passkey", lengths="1k", depths=1, decode_tokens=40,
                                 out=str(tmp_path / "a")))
    backend = CountingBackend(kv_bytes=8, decode_seconds=4.0)
    run_bench(cfg, progress=False, backend=backend)
    (sample,) = backend.seen
    assert sample.max_new_tokens == 40 and sample.ignore_eos
    assert sample.meta["tokens"] + 40 <= 1024  # prompt + forced steps fit the cell's length
    (metrics_path,) = (tmp_path / "a").glob("cells/**/metrics.json")
    m = json.loads(metrics_path.read_text())
    assert m["decode_tokens_per_second"] == pytest.approx(40 / 4.0)
    assert m["kv_cache_bytes_per_token"] == pytest.approx(8.0) and m["output_tokens_mean"] == 40
    assert m["prefill_tokens_per_second"] == pytest.approx(sample.meta["tokens"] / 2.0, abs=0.05)

    # within the task's answer budget (passkey: 12) the prompts are the task's own
    plain = CountingBackend(8, 1.0)
    run_bench(load_config(None, dict(methods="none", tasks="passkey", lengths="1k", depths=1,
                                     out=str(tmp_path / "b"))), progress=False, backend=plain)
    short = CountingBackend(8, 1.0)
    run_bench(load_config(None, dict(methods="none", tasks="passkey", lengths="1k", depths=1, decode_tokens=8,
                                     out=str(tmp_path / "c"))), progress=False, backend=short)
    assert short.seen[0].context == plain.seen[0].context != sample.context
    assert (plain.seen[0].max_new_tokens, plain.seen[0].ignore_eos) == (12, False)
    assert (short.seen[0].max_new_tokens, short.seen[0].ignore_eos) == (8, True)


def test_recorded_command_reruns_the_same_sweep(tmp_path):
    from longreach.bench.cli import add_parsers

    cfg = load_config(None, dict(methods="none,yarn:factor=4,beta_fast=32", lengths="1k,4096", depths="0.1,0.5",
                                 tasks=["passkey", {"name": "niah", "haystack": "noise"}], decode_tokens=16,
                                 samples=2, out=str(tmp_path / "x y")))
    line = command_line(cfg)
    import argparse

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(shlex.split(line)[1:])
    again = load_config(None, {k: getattr(args, k) for k in cfg.model_dump() if getattr(args, k, None) is not None})
    assert again.model_dump() == {**cfg.model_dump(), "tasks": ["passkey", "niah:haystack=noise"]}


def test_commands_accumulate_in_config_json(tmp_path):
    base = dict(backend="oracle", tasks="passkey", lengths="1k", depths=1, out=str(tmp_path))
    run_bench(load_config(None, {**base, "methods": "none"}), progress=False)
    run_bench(load_config(None, {**base, "methods": "dynamic-ntk"}), progress=False)
    run_bench(load_config(None, {**base, "methods": "none"}), progress=False)
    runs = json.loads((tmp_path / "config.json").read_text())["runs"]
    assert [("--methods none" in r["command"], "--methods dynamic-ntk" in r["command"]) for r in runs] == [
        (True, False), (False, True)]
    assert all(r["date"] for r in runs)


def test_runs_and_cells_record_their_machine(tmp_path, monkeypatch):
    """Seconds are comparable within one machine only: every run entry and cell names its CPU and threads,
    and the same command resumed on another machine is recorded as a run of its own."""
    from longreach.bench import runner

    cfg = dict(backend="oracle", methods="none", tasks="passkey", lengths="1k", depths=1, out=str(tmp_path))
    monkeypatch.setattr(runner, "machine_name", lambda: "CPU A, 2 threads")
    run_bench(load_config(None, {**cfg, "samples": 1}), progress=False)
    run_bench(load_config(None, {**cfg, "samples": 1}), progress=False)  # the same command again: no new entry
    monkeypatch.setattr(runner, "machine_name", lambda: "CPU B, 16 threads")
    run_bench(load_config(None, {**cfg, "samples": 1}), progress=False)  # resumed elsewhere: a new entry
    run_bench(load_config(None, {**cfg, "samples": 1, "lengths": "2k"}), progress=False)
    runs = json.loads((tmp_path / "config.json").read_text())["runs"]
    assert [r["machine"] for r in runs] == ["CPU A, 2 threads", "CPU B, 16 threads", "CPU B, 16 threads"]
    assert runs[0]["command"] == runs[1]["command"] != runs[2]["command"]
    cells = {json.loads(p.read_text())["length"]: json.loads(p.read_text())["machine"]
             for p in tmp_path.glob("cells/**/metrics.json")}
    assert cells == {1024: "CPU A, 2 threads", 2048: "CPU B, 16 threads"}


def test_markdown_and_html_show_costs_and_ratios(tmp_path):
    out = tmp_path / "kv"
    for method, kv in (("none", 8), ("kv-int4", 2)):
        cfg = load_config(None, dict(methods=method, tasks="passkey", lengths="1k", depths=1, decode_tokens=16,
                                     out=str(out)))
        run_bench(cfg, progress=False, backend=CountingBackend(kv_bytes=kv, decode_seconds=2.0 if kv == 8 else 1.0))
    text = markdown(out)
    assert "--methods kv-int4" in text and "--methods none" in text  # both runs' commands
    head, rule, *rows = cells_table([json.loads(p.read_text()) for p in out.glob("cells/**/metrics.json")]).splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    row = {r.split("|")[1].strip(): dict(zip(cols, (c.strip() for c in r.strip("|").split("|")))) for r in rows}
    assert list(row) == ["none", "kv-int4"]  # the baseline first
    assert row["kv-int4"]["KV vs none"] == "0.25x" and row["kv-int4"]["decode vs none"] == "2.00x"
    assert row["kv-int4"]["decode tok/s"] == "16.00" and row["none"]["KV bytes/token"] == "8.0"
    page = render(out, baseline="none").read_text()
    assert "decode tok/s" in page and "0.25x" in page and "2.00x" in page


def test_markdown_shows_refused_cells_and_perplexity(tmp_path):
    cfg = load_config(None, dict(backend="oracle", methods="none,dynamic-ntk", tasks="ppl,passkey",
                                 lengths="1k", depths=1, out=str(tmp_path)))
    run_bench(cfg, progress=False)
    table = cells_table([json.loads(p.read_text()) for p in tmp_path.glob("cells/**/metrics.json")])
    assert "ppl" in table.splitlines()[0] and "2.718" in table  # the oracle's NLL of 1 per token: ppl = e
    assert "ppl vs none" in table and "1.00x" in table


# ----------------------------------------------------------------------------- benchmark configurations
CONFIGS = sorted((ROOT / "benchmarks" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_benchmark_configs_are_valid_sweeps(path):
    cfg = load_config(path, {})
    cells = plan_cells(cfg, "smollm2-135m")
    assert cells and len(cells) == len(cfg.methods) * len(cfg.tasks) * len(cfg.lengths)
    assert {c.method for c in cells} == {Plan.from_spec(m).spec for m in cfg.methods}
    assert len({c.method for c in cells}) == len(cfg.methods)  # no two specs name the same plan
    assert cfg.model == "smollm2-135m" and cfg.dtype == "float32"  # as the committed results were measured


def test_config_folder_has_the_replaced_scripts():
    names = {p.stem for p in CONFIGS}
    assert {"kv-compression", "positions", "attention-methods", "infiniretri"} <= names
    for gone in ("kv_compression.py", "positions.py", "attention_methods.py"):
        assert not (ROOT / "benchmarks" / gone).exists()


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["bench_quick", "infiniretri", "prefill"])
def test_scripts_import_without_path_hacks(name):
    text = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert "sys.path" not in text
    _script(name)  # imports longreach as an installed package


def test_infiniretri_script_config():
    cfg, args = _script("infiniretri").config(["--lengths", "8k", "--depths", "0.5", "--out", "o", "--peer"])
    assert cfg.methods == ["infiniretri"] and cfg.lengths == [8192] and cfg.depth_list() == [0.5] and args.peer
    assert [c.task.name for c in plan_cells(cfg, "smollm2-135m")] == ["passkey"]


def test_reader_numbers_are_summarised_when_present():
    from longreach.bench.metrics import cost_metrics, reader_metrics

    records = [
        {"reader": {"index_seconds": 2.0, "quotes": 4, "hallucinated": 1, "route": {"decision": "rag"}}},
        {"reader": {"index_seconds": 0.0, "quotes": 2, "hallucinated": 2, "route": {"decision": "rag->long"}}},
        {"reader": {"route": {"decision": "rag"}}},
        {"prediction": "no reader numbers"},
    ]
    m = reader_metrics(records)
    assert m["index_seconds_mean"] == 1.0
    assert m["hallucinated_quote_rate"] == 0.5  # 3 of 6 quotes, summed (not a mean of 0.25 and 1.0)
    assert m["route_decisions"] == {"rag": 2, "rag->long": 1}
    assert reader_metrics([{"prediction": "x"}]) == {}
    assert "route_decisions" in cost_metrics(records) and "index_seconds_mean" not in cost_metrics(records[3:])


def test_route_summary_pools_the_retrieval_goal_over_folders(monkeypatch):
    """benchmarks/route_summary.py: right answers summed per (length, method) over every folder's cells of
    pass key and NIAH at >= 128k; shorter lengths, other tasks and unfinished cells are left out."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the summaries import their sibling scripts
    rs = _script("route_summary")

    def row(length, task, method, scores, secs=1.0, status="done"):
        return {"length": length, "task": task, "method": method, "status": status, "n": len(scores),
                "slowest_seconds": secs, "predictions": [(0.5, s, "x") for s in scores]}

    table = [row(1048576, "niah", "rag", [1, 0]), row(1048576, "niah", "rag", [1, 1, 1], secs=12.5),
             row(1048576, "passkey", "rag", [1, 1]), row(131072, "niah", "rag", [1]),
             row(32768, "niah", "rag", [0]), row(1048576, "lara_location", "rag", [0]),
             row(1048576, "niah", "rag:retriever=bm25", [1]), row(1048576, "niah", "route", [], status="error")]
    got = {(g["length"], g["method"]): g for g in rs.pooled(table)}
    assert set(got) == {(1048576, "rag"), (131072, "rag"), (1048576, "rag:retriever=bm25")}
    g = got[(1048576, "rag")]
    assert (g["right"], g["n"], g["by_task"], g["slowest_seconds"]) == (6, 7, {"niah": "4/5", "passkey": "2/2"}, 12.5)
    assert g["ci"][0] < 6 / 7 < g["ci"][1] < 1


def test_positions_summary_winner_and_goal(monkeypatch, tmp_path):
    """benchmarks/positions_summary.py: refused cells count 0, the winner is the best mean over the accuracy
    tasks of a length (ties to the faster method), and the goal compares a method's own short and long
    pass-key accuracy."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ps = _script("positions_summary")

    def cell(method, task, length, score, secs=10.0, status="done"):
        return {"method": method, "task": task, "length": length, "status": status, "score": score, "n": 3,
                "seconds_per_sample": secs, "peak_memory_bytes": 2**30, "higher_is_better": task != "ppl"}

    cells = [cell("none", "passkey", 4096, 1.0), cell("none", "passkey", 32768, None, status="refused"),
             cell("yarn", "passkey", 4096, 1.0), cell("yarn", "passkey", 32768, 2 / 3, secs=50.0),
             cell("ntk", "passkey", 4096, 2 / 3), cell("ntk", "passkey", 32768, 2 / 3, secs=40.0),
             cell("ntk", "ppl", 32768, 12.0),
             cell("pi", "passkey", 16384, 1.0), cell("pi", "niah_single_2", 16384, 0.0),
             cell("ntk", "passkey", 16384, 1.0), cell("ntk", "niah_single_2", 16384, 1 / 3),
             cell("yarn", "passkey", 16384, 1.0),  # yarn lacks niah at 16k: does not compete there
             cell("none", "ppl", 2048, 9.0), cell("yarn", "ppl", 2048, 8.5), cell("yarn", "ppl", 32768, 30.0),
             cell("none", "ppl", 32768, None, status="refused")]
    tab = ps.table(cells)
    assert tab["none"][("passkey", 32768)] == {"higher": True, "n": 3, "score": 0.0, "refused": True, "reason": None}
    w = ps.winners(tab)
    assert w[16384]["method"] == "ntk" and w[16384]["tasks"] == ["niah_single_2", "passkey"]
    assert w[32768]["method"] == "ntk" and w[32768]["tied"] == ["ntk", "yarn"]  # 2/3 each, ntk faster
    assert w[4096]["accuracy"] == 1.0 and set(w[4096]["tied"]) == {"none", "yarn"}
    assert w[32768]["lowest_perplexity"] == "ntk" and w[32768]["perplexity"] == 12.0  # refused none left out
    assert w[2048]["method"] is None and w[2048]["lowest_perplexity"] == "yarn"  # perplexity only at 2k
    assert "lowest_perplexity" not in w[16384]
    g = {r["method"]: r for r in ps.goal(tab, 4096, 32768, 10.0)}
    assert g["ntk"]["kept"] and not g["yarn"]["kept"] and not g["none"]["kept"]
    assert round(g["yarn"]["change_points"]) == -33
    md = ps.markdown(tab, tmp_path, 10.0, "x.png")
    assert "| 32k | passkey | ntk | 0.67 | yarn | ntk (12.0) |" in md and "refused" in md
    assert "| 2k |  |  |  |  | yarn (8.5) |" in md
    ps.plot(tab, tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 1000
