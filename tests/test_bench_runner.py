"""The sweep runner: spec lists, config files, resumable cells, kill safety, shards, aggregates, local backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from longreach.bench.runner import BenchConfig, load_config, plan_cells, run_bench, slug, split_specs
from longreach.bench.task import BenchError
from longreach.errors import SpecError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


def oracle_cfg(out, **kw) -> BenchConfig:
    base = dict(backend="oracle", methods="none", tasks="passkey,vt", lengths="1k,2k", depths=2, out=str(out))
    base.update(kw)
    return load_config(None, base)


def test_split_specs_keeps_parameters_with_their_method():
    assert split_specs("none,yarn:factor=4,beta_fast=32,ntk:factor=2") == [
        "none", "yarn:factor=4,beta_fast=32", "ntk:factor=2"]
    assert split_specs(["none;pi:factor=2", "yarn:factor=4,beta_fast=32+kv-int4"]) == [
        "none", "pi:factor=2", "yarn:factor=4,beta_fast=32+kv-int4"]
    assert split_specs("passkey,niah:haystack=noise,needle_x=1") == ["passkey", "niah:haystack=noise,needle_x=1"]
    with pytest.raises(BenchError, match="does not follow"):
        split_specs("factor=4,none")
    with pytest.raises(BenchError, match="does not follow"):
        split_specs("yarn:factor=4;beta_fast=32")  # ';' always starts a new item


def test_config_file_with_command_line_overrides(tmp_path):
    y = tmp_path / "sweep.yaml"
    y.write_text("methods: [none]\ntasks: [passkey, {name: niah, haystack: noise}]\nlengths: [1k, 2048]\n"
                 "depths: [0.0, 0.5]\nsamples: 2\n")
    cfg = load_config(y, {"samples": 3, "lengths": None})
    assert cfg.samples == 3 and cfg.lengths == [1024, 2048] and cfg.depth_list() == [0.0, 0.5]
    t = tmp_path / "sweep.toml"
    t.write_text('methods = ["none"]\ntasks = ["passkey"]\nlengths = ["4k"]\ndepths = 3\n')
    cfg = load_config(t, {"out": str(tmp_path / "o")})
    assert cfg.lengths == [4096] and cfg.depth_list() == [0.0, 0.5, 1.0]
    with pytest.raises(BenchError, match="samples"):
        load_config(y, {"samples": 0})
    (tmp_path / "bad.yaml").write_text("lenghts: [1k]\n")
    with pytest.raises(BenchError, match="lenghts"):
        load_config(tmp_path / "bad.yaml", {})
    with pytest.raises(SpecError):
        load_config(None, {"methods": "nosuchmethod"})
    with pytest.raises(BenchError, match="unknown task"):
        load_config(None, {"tasks": "passkeyy"})


def test_sweep_writes_cells_and_resumes(tmp_path):
    cfg = oracle_cfg(tmp_path / "out")
    stats = run_bench(cfg, progress=False)
    assert stats.ran == 2 * 2 + 2 and stats.cells_done == 4  # passkey: 2 depths x 2 lengths; vt: 2
    cell = tmp_path / "out/cells/oracle-smollm2-135m/none/passkey/1k"
    lines = (cell / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert {"tokens", "seed", "depth", "prediction", "score", "references"} <= set(rec)
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["score"] == 1.0 and set(metrics["by_depth"]) == {"0.0", "1.0"}
    again = run_bench(cfg, progress=False)
    assert again.ran == 0 and again.cells_skipped == 4
    # a deleted metrics file with all samples present: the cell is finished without re-running samples
    (cell / "metrics.json").unlink()
    third = run_bench(cfg, progress=False)
    assert third.ran == 0 and third.cells_done == 1


def test_aggregates_lm_eval_shape_and_sqlite(tmp_path):
    run_bench(oracle_cfg(tmp_path, backend="oracle:fail_above=1500"), progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"results", "configs", "versions", "config", "date", "git_hash"} <= set(res)
    assert res["results"]["passkey@1024|none"]["score,none"] == 1.0
    assert res["results"]["passkey@2048|none"]["score,none"] == 0.0
    db = sqlite3.connect(tmp_path / "results.sqlite")
    rows = dict(db.execute("select length, avg(score) from samples where task='passkey' group by length"))
    assert rows == {1024: 1.0, 2048: 0.0}


def test_shards_partition_the_sweep(tmp_path):
    cfg = oracle_cfg(tmp_path, methods="none", tasks="passkey,vt,cwe", lengths="1k,2k,4k")
    keys = [c.key for c in plan_cells(cfg, "m")]
    parts = [[c.key for c in plan_cells(cfg.model_copy(update={"shard": f"{i}/3"}), "m")] for i in range(3)]
    assert sorted(k for p in parts for k in p) == sorted(keys) and all(parts)
    assert not set(parts[0]) & set(parts[1])


def test_torn_last_line_is_dropped(tmp_path):
    cfg = oracle_cfg(tmp_path, tasks="passkey", lengths="1k", depths=3)
    run_bench(cfg, progress=False)
    cell = tmp_path / "cells/oracle-smollm2-135m/none/passkey/1k"
    (cell / "metrics.json").unlink()
    lines = (cell / "samples.jsonl").read_text().splitlines()
    (cell / "samples.jsonl").write_text(lines[0] + "\n" + lines[1][:25])  # killed while writing line 2
    stats = run_bench(cfg, progress=False)
    assert stats.ran == 2 and stats.skipped == 1
    ids = [json.loads(x)["id"] for x in (cell / "samples.jsonl").read_text().splitlines()]
    assert sorted(ids) == ["d0-s0", "d1-s0", "d2-s0"]


def test_sigkill_loses_at_most_the_sample_in_flight(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "longreach.cli", "bench", "--backend", "oracle:delay=0.15", "--methods", "none",
           "--tasks", "passkey", "--lengths", "1k", "--depths", "5", "--samples", "4", "--out", str(out),
           "--no-progress"]
    env = {**os.environ, "LONGREACH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    jsonl = out / "cells/oracle-smollm2-135m/none/passkey/1k/samples.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 6):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = [json.loads(x)["id"] for x in jsonl.read_text().splitlines() if x.endswith("}")]
    assert 6 <= len(kept) < 20, "the run should have been killed mid-cell"
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # every sample finished before the kill was kept; only the rest ran again
    assert f"ran {20 - len(kept)} samples ({len(kept)} already done)" in result.stdout
    ids = [json.loads(x)["id"] for x in jsonl.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 20


def test_local_backend_on_a_tiny_model(tiny, tmp_path):
    """The reader path end to end; a length beyond the tiny windows (256, 512) is refused, not crashed."""
    # the byte tokenizer spends ~150 tokens on the passkey instruction line: leave it out at 200 tokens
    cfg = load_config(None, dict(methods="none", tasks="passkey:instruction=false,ppl", lengths="200,600",
                                 depths=2, out=str(tmp_path)))
    stats = run_bench(cfg, lm=tiny, progress=False)
    assert stats.cells_refused == 2 and stats.cells_done == 2
    base = tmp_path / "cells" / tiny.name / "none"
    pk = slug("passkey:instruction=false")
    refused = json.loads((base / pk / "600/metrics.json").read_text())
    assert refused["status"] == "refused" and "beyond" in refused["reason"]
    rec = json.loads((base / pk / "200/samples.jsonl").read_text().splitlines()[0])
    assert rec["input_tokens"] == rec["tokens"] <= 200 - 12 and rec["prefill_seconds"] > 0
    ppl = json.loads((base / "ppl/200/metrics.json").read_text())
    assert 100 < ppl["score"] < 1000  # random weights over 260 symbols: perplexity near the vocabulary size


def test_memory_precheck_refuses_cells(llama, tmp_path):
    cfg = load_config(None, dict(methods="none", tasks="passkey", lengths="200", depths=1, out=str(tmp_path),
                                 memory_limit=1000))
    stats = run_bench(cfg, lm=llama, progress=False)
    m = json.loads((tmp_path / f"cells/{llama.name}/none/passkey/200/metrics.json").read_text())
    assert stats.cells_refused == 1 and "memory pre-check" in m["reason"]


def test_cli_bench_and_tasks(tmp_path, capsys):
    from longreach.cli import main

    assert main(["tasks"]) == 0
    assert "needlebench-mrt" in capsys.readouterr().out
    assert main(["bench", "--backend", "oracle", "--tasks", "passkey", "--lengths", "1k", "--depths", "1",
                 "--out", str(tmp_path), "--no-progress", "--report"]) == 0
    assert (tmp_path / "report.html").exists()
    assert main(["bench", "--backend", "oracle", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_dataset_rows_beyond_the_length_are_refused_and_recorded(tmp_path):
    from longreach.bench.store import load_cells

    rows = [{"input": "Who?", "context": "Mara kept it. " * n, "answers": ["Mara"], "dataset": "narrativeqa"}
            for n in (5, 400, 6)]
    f = tmp_path / "n.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = oracle_cfg(tmp_path / "out", tasks=f"dataset:format=longbench,path={f}", lengths="2k", samples=3, depths=1)
    run_bench(cfg, progress=False)
    (cell,) = load_cells(tmp_path / "out")
    assert cell["status"] == "done" and cell["n"] == 2 and cell["refused"] == 1 and cell["score"] == 1.0
    assert run_bench(cfg, progress=False).ran == 0  # a refused row is finished: not run again
