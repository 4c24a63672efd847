"""The Ray executor: the same cells, metrics and aggregates as the local executor, resume, one-line errors.

One module-scoped Ray session (``num_cpus=2``; starting Ray takes a few seconds); skipped without ray.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from longreach.bench.runner import Cell, load_config, plan_cells, run_bench, task_of
from longreach.bench.task import BenchError

TIMING = {"seconds", "seconds_per_sample", "prefill_tokens_per_second", "load_average", "machine"}  # machine state
SWEEP = dict(backend="oracle:fail_above=1500", methods="none", tasks="passkey,vt", lengths="1k,2k", depths=2)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))  # forwarded to the Ray workers


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        try:
            # the key as if set in every node's environment: credentials never travel with tasks
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OPENAI_API_KEY": "sk-ray"}})
        except Exception as exc:  # noqa: BLE001 - a machine where Ray cannot start (shm, sockets)
            pytest.skip(f"ray is installed but cannot start here: {str(exc).splitlines()[0][:200]}")
    yield ray
    if started:
        ray.shutdown()


def snapshot(out):
    """Everything a sweep wrote that does not depend on timing or on where it ran."""
    cells = out / "cells"
    files = sorted(p.relative_to(out).as_posix() for p in cells.rglob("*") if p.is_file())
    metrics = {p.parent.relative_to(cells).as_posix(): {k: v for k, v in json.loads(p.read_text()).items()
                                                         if k not in TIMING}
               for p in cells.rglob("metrics.json")}
    samples = {p.parent.relative_to(cells).as_posix(): sorted(
        ({k: v for k, v in json.loads(line).items() if k != "seconds"} for line in p.read_text().splitlines()),
        key=lambda r: r["id"]) for p in cells.rglob("samples.jsonl")}
    results = json.loads((out / "results.json").read_text())
    return files, metrics, samples, {k: results[k] for k in ("results", "configs", "versions")}


def test_ray_matches_local_and_resumes(ray_session, tmp_path):
    local_cfg = load_config(None, {**SWEEP, "out": str(tmp_path / "local")})
    ray_cfg = load_config(None, {**SWEEP, "out": str(tmp_path / "ray"), "executor": "ray"})
    local = run_bench(local_cfg, progress=False)
    rayed = run_bench(ray_cfg, progress=False)
    assert dataclasses.asdict(rayed) == dataclasses.asdict(local)
    assert rayed.ran == 6 and rayed.cells_done == 4
    files, metrics, samples, results = snapshot(tmp_path / "ray")
    assert (files, metrics, samples, results) == snapshot(tmp_path / "local")
    assert len(files) == 8 and results["results"]["passkey@2048|none"]["score,none"] == 0.0
    assert metrics["oracle-smollm2-135m/none/passkey/1k"]["score"] == 1.0

    again = run_bench(ray_cfg, progress=False)  # finished cells start no task at all
    assert (again.ran, again.skipped, again.cells_skipped, again.cells_done) == (0, 6, 4, 0)
    # a lost metrics.json with every sample present: the worker finishes the cell without re-running samples
    cell = tmp_path / "ray/cells/oracle-smollm2-135m/none/passkey/1k"
    (cell / "metrics.json").unlink()
    third = run_bench(ray_cfg, progress=False)
    assert (third.ran, third.skipped, third.cells_done, third.cells_skipped) == (0, 6, 1, 3)
    assert snapshot(tmp_path / "ray")[1] == metrics


def test_worker_error_is_the_same_one_line_error(ray_session, tmp_path):
    from longreach.bench.ray_executor import run_ray

    cfg = load_config(None, {**SWEEP, "out": str(tmp_path), "executor": "ray"})
    cells = plan_cells(cfg, "not-the-served-model")  # the worker's backend loads oracle-smollm2-135m
    with pytest.raises(BenchError, match="the worker loaded 'oracle-smollm2-135m'") as err:
        run_ray(cfg, cells, tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("cells/**/metrics.json"))


def test_cell_task_builds_its_own_backend(tmp_path):
    """The task body (what a worker runs) works without Ray and reuses its backend across cells."""
    from longreach.bench import ray_executor

    cfg = load_config(None, {**SWEEP, "out": str(tmp_path)})
    a, b = (Cell("oracle-smollm2-135m", "none", task_of("vt"), n) for n in (1024, 2048))
    first = ray_executor.cell_task(cfg, a, str(tmp_path), {})
    backend = next(iter(ray_executor._WORKER_BACKEND.values()))
    second = ray_executor.cell_task(cfg, b, str(tmp_path), {})
    assert first["status"] == second["status"] == "done" and first["stats"]["ran"] == 1
    assert next(iter(ray_executor._WORKER_BACKEND.values())) is backend
    assert json.loads((tmp_path / "cells/oracle-smollm2-135m/none/vt/2k/metrics.json").read_text())["score"] == 0.0


def test_without_ray_one_line_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cfg = load_config(None, {**SWEEP, "out": str(tmp_path), "executor": "ray"})
    with pytest.raises(BenchError, match=r"pip install 'longreach\[ray\]'"):
        run_bench(cfg, progress=False)


def test_loaded_model_is_refused_for_ray(tmp_path):
    cfg = load_config(None, dict(methods="none", tasks="passkey", lengths="200", out=str(tmp_path), executor="ray"))
    with pytest.raises(BenchError, match="inside each worker"):
        run_bench(cfg, lm=object(), progress=False)  # refused before anything loads


def test_openai_backend_in_ray_workers(ray_session, tmp_path, monkeypatch):
    """Workers build their own openai backend (tokenizer from the model folder) and reach the server with
    the API key of their own environment (never sent with the task); the results equal the local executor's."""
    from conftest import byte_tokenizer, tiny_llama
    from test_bench_openai import SERVED, FakeOpenAI

    folder = tmp_path / "tokmodel"
    tiny_llama().config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ray")
    with FakeOpenAI() as srv:
        sweep = dict(backend=f"openai:url={srv.url}", model=str(folder), methods="none;yarn:factor=2",
                     tasks="passkey", lengths="300,600", depths=1, prompt="plain")
        rayed = run_bench(load_config(None, {**sweep, "out": str(tmp_path / "ray"), "executor": "ray"}),
                          progress=False)
        assert len(srv.requests) == 4 and {r["auth"] for r in srv.requests} == {"Bearer sk-ray"}
        sent = sorted({r["body"]["model"] for r in srv.requests})  # a method plan goes as NAME@SPEC
        assert sent[0] == SERVED and len(sent) == 2 and sent[1].startswith(f"{SERVED}@yarn:factor=2")
        run_bench(load_config(None, {**sweep, "out": str(tmp_path / "local")}), progress=False)
    assert (rayed.ran, rayed.cells_done, rayed.cells_refused) == (4, 4, 0)
    ray_snap, local_snap = snapshot(tmp_path / "ray"), snapshot(tmp_path / "local")
    for snap in (ray_snap, local_snap):
        for records in snap[2].values():
            for r in records:
                r.pop("request_seconds")  # timing
    assert ray_snap == local_snap
    assert ray_snap[1][f"{SERVED}/none/passkey/600"]["score"] == 1.0
