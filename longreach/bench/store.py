"""Aggregates of a results folder: one JSON shaped like lm-evaluation-harness results and one sqlite file.

``results.json``: ``results`` (one entry per cell, keyed ``task@length|method``, or
``model/task@length|method`` when the folder holds several models, with ``score,none`` and
``score_stderr,none`` and the cell's measured costs, e.g. ``decode_tokens_per_second``), ``configs`` (task parameters), ``versions``, ``config`` (the sweep), ``date``,
``git_hash``, ``env`` (versions, machine). ``results.sqlite``: tables ``cells`` and ``samples``, e.g.
``sqlite3 DIR/results.sqlite "select method, length, avg(score) from samples group by 1, 2"``.

Both are rebuilt from the cells on every write (a corrupt one is simply replaced), by the holder of the
folder's write lock, the table in one transaction into a temporary file renamed over the old one. A
corrupt ``metrics.json`` of a finished cell is rebuilt from its ``samples.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import LongreachError
from .files import StorageError, atomic_write, fsync_dir, read_json, read_records, storage, write_lock
from .task import TASKS, _load_builtin_tasks

log = logging.getLogger("longreach")

#: Cost numbers of a cell (longreach.bench.metrics) and task-specific ones, also in results.json.
METRIC_COLUMNS = ["ppl", "ppl_tail", "prefill_tokens_per_second", "decode_tokens_per_second", "output_tokens_mean",
                  "kv_cache_bytes", "kv_cache_bytes_mean", "kv_cache_bytes_per_token", "peak_memory_bytes",
                  "added_memory_bytes"]
CELL_COLUMNS = ["model", "method", "task", "task_spec", "length", "status", "n", "score", "stderr",
                "seconds", *METRIC_COLUMNS, "reason"]
SAMPLE_COLUMNS = ["model", "method", "task", "task_spec", "length", "depth", "seed", "id", "tokens", "score",
                  "prediction", "input_tokens", "output_tokens", "prefill_seconds", "decode_seconds",
                  "peak_memory_bytes", "start_memory_bytes", "kv_cache_bytes", "error"]


#: temporary files of the folder's shared files (written only under its write lock)
STALE = ("results.json.tmp*", "results.sqlite.tmp", "config.json.tmp*", "sweep.json.tmp*")


def metrics_ok(m: Any) -> bool:
    """Whether a parsed metrics.json has what the runner and the report read (else it is rebuilt)."""
    if not isinstance(m, dict) or m.get("status") not in ("done", "refused"):
        return False
    if not all(isinstance(m.get(k), str) for k in ("model", "method", "task", "task_spec")):
        return False
    if not isinstance(m.get("length"), int) or isinstance(m.get("length"), bool):
        return False
    return m["status"] == "refused" or isinstance(m.get("n"), int)


def load_cells(out: Path) -> list[dict[str, Any]]:
    """Every cell's metrics under ``out`` (finished or refused cells only); a corrupt metrics.json of a
    finished cell is rebuilt from its samples (one that cannot be is left out, and the next
    ``longreach bench`` run of the cell redoes it)."""
    cells = []
    for path in sorted(Path(out).glob("cells/**/metrics.json")):
        m = read_json(path)
        if not metrics_ok(m):
            m = rebuild_metrics(path.parent, Path(out))
            if m is None:
                log.warning("%s is damaged and has no samples to rebuild it from; left out (re-run the bench "
                            "to redo the cell)", path)
                continue
        m["_dir"] = str(path.parent)
        cells.append(m)
    return cells


def rebuild_metrics(folder: Path, out: Path) -> dict[str, Any] | None:
    """A finished cell's metrics from its ``samples.jsonl``, written back when the folder can be written;
    None when the samples are not all there (e.g. the damaged file was a refusal written after a part of
    the cell ran), as ``out/sweep.json``'s settings count them."""
    from .runner import Cell, cell_metrics, task_of

    records = read_records(Path(folder) / "samples.jsonl")
    if not records:
        return None
    first = records[0]
    settings = read_json(Path(out) / "sweep.json")
    settings = settings.get("settings") if isinstance(settings, dict) else None
    try:
        cell = Cell(str(first["model"]), str(first["method"]), task_of(str(first["task_spec"])), int(first["length"]))
        mine = [r for r in records if all(r.get(k) == first.get(k) for k in ("model", "method", "task_spec", "length"))]
        if isinstance(settings, dict):
            depths = len(settings["depths"]) if cell.task.uses_depth else 1
            if len(mine) < depths * int(settings["samples"]):
                return None
        metrics = cell_metrics(cell, mine, sum(r.get("seconds", 0.0) for r in mine))
    except (LongreachError, ArithmeticError, KeyError, LookupError, TypeError, ValueError):
        return None
    try:
        atomic_write(Path(folder) / "metrics.json", json.dumps(metrics, indent=1))
    except StorageError:
        pass  # a read-only copy: the report still shows the rebuilt numbers
    return metrics


def load_samples(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's sample records (framed JSONL, one per id; see :mod:`longreach.bench.files`)."""
    return read_records(Path(cell["_dir"]) / "samples.jsonl")


def git_hash() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def machine_name() -> str:
    """The CPU and torch threads a cell's or a run's seconds were measured with (``"<cpu>, 2 threads"``)."""
    import torch

    return f"{cpu_name() or 'unknown CPU'}, {torch.get_num_threads()} threads"


def run_line(run: dict[str, Any]) -> str:
    """One ``config.json`` run entry as a Markdown list item: the command, git commit, date and machine."""
    machine = f", {run['machine']}" if run.get("machine") else ""
    return f"- `{run['command']}` (git {(run.get('git') or '?')[:7]}, {run.get('date', '?')}{machine})"


def environment() -> dict[str, Any]:
    """Versions and machine of a run (results, benchmark scripts): one description everywhere."""
    import torch
    import transformers

    return {"longreach": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
            "threads": torch.get_num_threads(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}


def lm_eval_results(out: Path, cells: list[dict[str, Any]]) -> dict[str, Any]:
    _load_builtin_tasks()
    config = read_json(Path(out) / "config.json")
    config = config if isinstance(config, dict) else {}
    results, configs, versions = {}, {}, {}
    several = len({c["model"] for c in cells}) > 1  # then the model is part of each key
    for c in cells:
        key = f"{c['task_spec']}@{c['length']}|{c['method']}"
        key = f"{c['model']}/{key}" if several else key
        results[key] = {"alias": key, "task": c["task_spec"], "length": c["length"], "method": c["method"],
                        "model": c["model"], "status": c["status"], "samples": c.get("n", 0),
                        "score,none": c.get("score"), "score_stderr,none": c.get("stderr") or "N/A",
                        **{k: c[k] for k in METRIC_COLUMNS if c.get(k) is not None}}
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
    """``results.sqlite`` rebuilt from ``cells`` in one transaction into a temporary file, renamed over
    the old one (call it under the folder's :func:`~longreach.bench.files.write_lock`)."""
    tmp = path.with_name(path.name + ".tmp")
    with storage(path):
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            with db:
                db.execute(f"create table cells ({', '.join(CELL_COLUMNS)})")
                db.execute(f"create table samples ({', '.join(SAMPLE_COLUMNS)})")
                for c in cells:
                    db.execute(f"insert into cells values ({', '.join('?' * len(CELL_COLUMNS))})",
                               [_sql(c.get(k)) for k in CELL_COLUMNS])
                    for r in load_samples(c):
                        db.execute(f"insert into samples values ({', '.join('?' * len(SAMPLE_COLUMNS))})",
                                   [_sql(r.get(k)) for k in SAMPLE_COLUMNS])
        finally:
            db.close()
        tmp.replace(path)
        fsync_dir(path.parent)


def _sql(v: Any) -> Any:
    """A value sqlite stores: numbers and text as they are (a lone surrogate replaced: sqlite text is
    UTF-8), anything else as its JSON."""
    if isinstance(v, int) and not -2**63 <= v < 2**63:
        return str(v)
    if v is None or isinstance(v, (int, float)):
        return v
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text.encode("utf-8", "replace").decode("utf-8")


def write_aggregates(out: Path) -> dict[str, Any]:
    """``results.json`` and ``results.sqlite`` of ``out``, from its cells (under the write lock)."""
    out = Path(out)
    with write_lock(out):
        for name in STALE:  # temporary files of shared writes killed before their rename
            for stale in out.glob(name):
                stale.unlink(missing_ok=True)
        cells = load_cells(out)
        results = lm_eval_results(out, cells)
        atomic_write(out / "results.json", json.dumps(results, indent=1, default=str))
        write_sqlite(out / "results.sqlite", cells)
    return results
