"""``longreach calibrate RESULTS_DIR...``: the effective length of each model and method, measured by
``longreach bench``, as the table the ``route`` reader decides with.

For every (model, method spec) in the folders' finished cells of the chosen tasks (default ``passkey`` and
``niah_single_2``; a bare task name takes every variant of it, ``name:params`` that spec only):

- accuracy at a length = the mean over the tasks of each task's accuracy there (its cells' scores
  weighted by their samples, pooled over folders); a cell refused as beyond the method's reach or the
  memory budget counts as 0 (the model does not read that length), as in ``longreach report``;
- effective length = the largest tested length L with accuracy >= threshold at L and at every tested
  length below it (RULER's definition, arXiv 2404.06654, with a threshold: 0.8 by default, where RULER
  compares with Llama-2-7B's 85.6%); 0 when the shortest tested length already fails.

The table (:mod:`longreach.readers.route`: ``{"version": 1, "threshold": t, "models": {model: {method:
entry}}}``) is merged into ``--out`` (default: the packaged ``longreach/data/effective_lengths.json``):
one entry per model and method, replaced when calibrated again, with its tested points ``[length,
accuracy, samples]``, refused lengths, threshold, tasks, source folders and their git hashes.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..readers.route import DEFAULT_THRESHOLD, PACKAGED_TABLE, effective_length, empty_table, load_table
from ..textio import shown
from .files import StorageError, atomic_write, read_json
from .store import load_cells
from .task import TASKS, BenchError, _load_builtin_tasks

DEFAULT_TASKS = ("passkey", "niah_single_2")


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """The task specs asked for, each naming a registered task (one-line BenchError otherwise)."""
    _load_builtin_tasks()
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise BenchError("--tasks is empty; give task names, e.g. --tasks passkey,niah_single_2")
    for t in tasks:
        if t.partition(":")[0] not in TASKS:
            raise BenchError(f"unknown task {t!r} in --tasks; valid: {', '.join(sorted(TASKS))}")
    return tasks


def check_folder(folder: str | Path) -> list[dict[str, Any]]:
    """The finished or refused cells of a results folder; one-line BenchError for anything else."""
    p = Path(folder)
    if not p.is_dir():
        raise BenchError(f"{shown(folder)}: no such results folder; give the --out folder of `longreach bench`")
    if not (p / "cells").is_dir():
        raise BenchError(f"{shown(folder)}: not a results folder of `longreach bench` (no cells/ in it); give the "
                         "--out folder of a sweep")
    cells = load_cells(p)
    if not cells:
        raise BenchError(f"{shown(folder)}: a results folder with no finished cells yet; run `longreach bench "
                         f"--out {shown(folder)}` to the end first")
    return cells


def _matches(cell: dict[str, Any], tasks: Sequence[str]) -> str | None:
    """The chosen task spec a cell belongs to (None: not chosen)."""
    for t in tasks:
        if cell.get("task_spec") == t or (":" not in t and cell.get("task") == t):
            return t
    return None


def calibrate(folders: Sequence[str | Path], tasks: Sequence[str] = DEFAULT_TASKS,
              threshold: float = DEFAULT_THRESHOLD,
              say: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> method spec -> table entry, from the cells of ``folders`` (see the module docstring)."""
    tasks = check_tasks(tasks)
    cells_by_folder = {str(Path(f).as_posix()): check_folder(f) for f in folders}  # every folder checked first
    # (model, method) -> length -> task -> [(score, samples)]; refused lengths; where from
    runs: dict[tuple[str, str], dict[int, dict[str, list[tuple[float, int]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    refused: dict[tuple[str, str], set[int]] = defaultdict(set)
    sources: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for folder, cells in cells_by_folder.items():
        info = _folder_info(Path(folder))
        used = 0
        for c in cells:
            task = _matches(c, tasks)
            if task is None:
                continue
            key = (c["model"], c["method"])
            if c["status"] == "done" and c.get("n"):
                runs[key][c["length"]][task].append((float(c.get("score") or 0.0), int(c["n"])))
            else:  # refused (beyond reach, memory): the model does not read it
                runs[key][c["length"]][task].append((0.0, 0))
                refused[key].add(c["length"])
            sources[key][folder] = info
            used += 1
        say(f"{folder}: {used} of {len(cells)} cells are of {', '.join(tasks)}")
    if not runs:
        raise BenchError(f"no finished cells of {', '.join(tasks)} in {', '.join(map(shown, folders))}; pass the "
                         "tasks the sweeps ran with --tasks")
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (model, method), by_length in sorted(runs.items()):
        tested = []
        for length, by_task in sorted(by_length.items()):
            accuracies = [_pooled(points) for points in by_task.values()]
            samples = sum(n for points in by_task.values() for _, n in points)
            tested.append([length, round(statistics.fmean(accuracies), 4), samples])
        infos = sources[(model, method)]
        entry = {
            "effective_length": effective_length(tested, threshold),
            "tested": tested,
            "refused": sorted(refused[(model, method)] - {n for n, _, k in tested if k}),
            "threshold": threshold,
            "tasks": sorted({t for by_task in by_length.values() for t in by_task}, key=tasks.index),
            "source": ", ".join(infos),
            "git_hash": ", ".join(sorted({i["git_hash"] for i in infos.values() if i["git_hash"]})) or None,
            "window": _agreed(i["window"] for i in infos.values()),
            "prompt": _agreed(i["prompt"] for i in infos.values()),
            "dtype": _agreed(i["dtype"] for i in infos.values()),
        }
        out[model][method] = entry
        points = ", ".join(f"{n:,}: {a:.2f}" + (" (refused)" if not k else "") for n, a, k in tested)
        say(f"{model} {method}: effective length {entry['effective_length']:,} ({points})")
    return dict(out)


def _pooled(points: list[tuple[float, int]]) -> float:
    """A task's accuracy at one length over its cells: scores weighted by samples; only refusals -> 0."""
    total = sum(n for _, n in points)
    return sum(s * n for s, n in points) / total if total else 0.0


def _agreed(values: Any) -> Any:
    """The one value every folder agrees on; several joined by ', '; None when unknown."""
    found = {v for v in values if v is not None}
    if len(found) > 1:
        return ", ".join(sorted(map(str, found)))
    return found.pop() if found else None


def _folder_info(folder: Path) -> dict[str, Any]:
    """What a folder records about its runs: git hash (results.json), window, prompt and dtype (config.json)."""
    results = read_json(folder / "results.json")
    config = read_json(folder / "config.json")
    results = results if isinstance(results, dict) else {}
    config = config if isinstance(config, dict) else {}
    backend = config.get("backend_info") if isinstance(config.get("backend_info"), dict) else {}
    return {"git_hash": results.get("git_hash") if isinstance(results.get("git_hash"), str) else None,
            "window": backend.get("window"), "prompt": backend.get("prompt") or config.get("prompt"),
            "dtype": backend.get("dtype") or config.get("dtype")}


def merge(table: dict[str, Any], entries: dict[str, dict[str, dict[str, Any]]], threshold: float) -> dict[str, Any]:
    """``table`` with ``entries`` merged in (an entry of the same model and method is replaced)."""
    models = {m: dict(v) for m, v in table.get("models", {}).items()}
    for model, methods in entries.items():
        models.setdefault(model, {}).update(methods)
    return {"version": table.get("version", 1), "threshold": threshold,
            "models": {m: dict(sorted(v.items(), key=lambda kv: (kv[0] != "none", kv[0])))
                       for m, v in sorted(models.items())}}


def dumps(table: dict[str, Any]) -> str:
    """The table as JSON, one line per list of numbers (diffs of a re-calibration stay readable)."""
    text = json.dumps(table, indent=1, ensure_ascii=False)
    # JSON escapes newlines inside strings: every newline here is layout, safe to fold
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text) + "\n"


def write_table(folders: Sequence[str | Path], out: str | Path | None = None, tasks: Sequence[str] = DEFAULT_TASKS,
                threshold: float = DEFAULT_THRESHOLD, say: Callable[[str], None] = print) -> Path:
    """Calibrate from ``folders`` and merge the entries into the table at ``out`` (default the packaged one)."""
    target = Path(out) if out else PACKAGED_TABLE
    if target.is_dir() or not target.parent.is_dir():
        raise BenchError(f"--out {shown(target)}: give a file path in an existing folder")
    table = load_table(target) if target.is_file() else empty_table(threshold)
    entries = calibrate(folders, tasks, threshold, say)
    try:
        atomic_write(target, dumps(merge(table, entries, threshold)))
    except StorageError as exc:
        raise BenchError(f"--out {shown(target)}: cannot write the table ({exc})") from None
    return target
