"""Aggregates of a results folder: one JSON shaped like lm-evaluation-harness results and one sqlite file.

``results.json``: ``results`` (one entry per cell, keyed ``task@length|method``, with ``score,none`` and
``score_stderr,none``), ``configs`` (task parameters), ``versions``, ``config`` (the sweep), ``date``,
``git_hash``, ``env`` (versions, machine). ``results.sqlite``: tables ``cells`` and ``samples``, e.g.
``sqlite3 DIR/results.sqlite "select method, length, avg(score) from samples group by 1, 2"``.
"""

from __future__ import annotations

import json
import platform
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from .. import __version__
from .task import TASKS, _load_builtin_tasks

CELL_COLUMNS = ["model", "method", "task", "task_spec", "length", "status", "n", "score", "stderr",
                "seconds", "prefill_tokens_per_second", "peak_memory_bytes", "kv_cache_bytes", "reason"]
SAMPLE_COLUMNS = ["model", "method", "task", "task_spec", "length", "depth", "seed", "id", "tokens", "score",
                  "prediction", "input_tokens", "prefill_seconds", "decode_seconds", "peak_memory_bytes",
                  "error"]


def load_cells(out: Path) -> list[dict[str, Any]]:
    """Every cell's metrics under ``out`` (finished or refused cells only)."""
    cells = []
    for path in sorted(Path(out).glob("cells/**/metrics.json")):
        m = json.loads(path.read_text(encoding="utf-8"))
        m["_dir"] = str(path.parent)
        cells.append(m)
    return cells


def load_samples(cell: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(cell["_dir"]) / "samples.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {"longreach": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads()}


def lm_eval_results(out: Path, cells: list[dict[str, Any]]) -> dict[str, Any]:
    _load_builtin_tasks()
    config_path = Path(out) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    results, configs, versions = {}, {}, {}
    for c in cells:
        key = f"{c['task_spec']}@{c['length']}|{c['method']}"
        results[key] = {"alias": key, "task": c["task_spec"], "length": c["length"], "method": c["method"],
                        "model": c["model"], "status": c["status"], "samples": c.get("n", 0),
                        "score,none": c.get("score"), "score_stderr,none": c.get("stderr") or "N/A"}
        if c.get("reason"):
            results[key]["reason"] = c["reason"]
        cls = TASKS.get(c["task"])
        configs[c["task_spec"]] = {"task": c["task"], "spec": c["task_spec"],
                                   "scorer": cls.scorer if cls else None,
                                   "higher_is_better": c.get("higher_is_better", True)}
        versions[c["task_spec"]] = cls.version if cls else None
    return {"results": results, "configs": configs, "versions": versions, "config": config,
            "date": time.time(), "date_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_hash": git_hash(),
            "env": environment()}


def write_sqlite(path: Path, cells: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    with db:
        db.execute(f"create table cells ({', '.join(CELL_COLUMNS)})")
        db.execute(f"create table samples ({', '.join(SAMPLE_COLUMNS)})")
        for c in cells:
            db.execute(f"insert into cells values ({', '.join('?' * len(CELL_COLUMNS))})",
                       [_sql(c.get(k)) for k in CELL_COLUMNS])
            for r in load_samples(c):
                db.execute(f"insert into samples values ({', '.join('?' * len(SAMPLE_COLUMNS))})",
                           [_sql(r.get(k)) for k in SAMPLE_COLUMNS])
    db.close()
    tmp.replace(path)


def _sql(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str)) else json.dumps(v)


def write_aggregates(out: Path) -> dict[str, Any]:
    from .runner import atomic_write

    out = Path(out)
    cells = load_cells(out)
    results = lm_eval_results(out, cells)
    atomic_write(out / "results.json", json.dumps(results, indent=1, default=str))
    write_sqlite(out / "results.sqlite", cells)
    return results
