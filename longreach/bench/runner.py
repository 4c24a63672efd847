"""The sweep runner: (model x method x task x length) cells, each resumable, written atomically.

Layout of an output folder::

    DIR/config.json                                   the resolved sweep (what was asked)
    DIR/cells/<model>/<method>/<task>/<length>/samples.jsonl   one JSON line per sample, flushed + fsynced
    DIR/cells/<model>/<method>/<task>/<length>/metrics.json    written (tmp + rename) when the cell is done
    DIR/results.json, DIR/results.sqlite              aggregates (lm-evaluation-harness shape, one table)

Re-running the same command skips finished cells and finished samples, so killing the process at any
moment loses at most the sample in flight. A cell that cannot run (beyond the plan's reach, or above the
memory pre-check) is recorded as ``refused`` with the reason instead of crashing the sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pydantic
from tqdm.auto import tqdm

from ..errors import LongreachError
from ..models import DEFAULT_MODEL
from ..spec import Length, Plan
from ..units import format_length, parse_bytes
from .backends import Backend, BackendError, make_backend
from .cache import cached_sample
from .task import PROMPT_FORMAT, BenchError, Task, make_task

log = logging.getLogger("longreach")

# The default quick suite: `longreach bench` with no task, length or method options. Two methods, two
# depth tasks (heatmaps) at 3 depths, three lengths inside the default model's 8k window and one beyond
# it; timed in benchmarks/results/bench-quick.md (under 15 minutes on a 2-core CPU).
QUICK_METHODS = ["none", "dynamic-ntk"]
QUICK_TASKS = ["passkey", "niah_single_2"]
QUICK_LENGTHS = [1024, 2048, 4096, 10240]


# --------------------------------------------------------------------------------------------- config
_KEY_START = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def split_specs(text: str | Iterable[str]) -> list[str]:
    """Split a list of method / task specs.

    Items are separated by ``;`` or by ``,``; a ``,``-separated piece that starts with ``key=`` continues
    the previous spec's parameters (a spec's name never contains ``=``), so
    ``none,yarn:factor=4,beta_fast=32,ntk:factor=2`` -> ``["none", "yarn:factor=4,beta_fast=32", "ntk:factor=2"]``.
    """
    if not isinstance(text, str):
        return [s for t in text for s in split_specs(t)]
    out: list[str] = []
    for group in text.split(";"):
        first = len(out)  # a ';' always starts a new item
        for piece in group.split(","):
            if not piece.strip():
                continue
            if _KEY_START.match(piece):
                if len(out) == first or ":" not in out[-1]:
                    raise BenchError(f"parameter {piece.strip()!r} does not follow a spec with ':'; "
                                     f"write name:{piece.strip()}")
                out[-1] += "," + piece.strip()
            else:
                out.append(piece.strip())
    return out


class BenchConfig(pydantic.BaseModel):
    """One sweep. Same fields in a YAML / TOML file and on the command line (the command line wins)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    methods: list[str] = list(QUICK_METHODS)
    tasks: list[str | dict[str, Any]] = list(QUICK_TASKS)
    lengths: list[Length] = list(QUICK_LENGTHS)
    depths: int | list[float] = 3
    samples: int = pydantic.Field(1, ge=1)
    seed: int = 0
    out: str = "bench-out"
    backend: str = "local"
    dtype: str = "auto"
    # plain by default: the InfiniteBench / RULER way of asking, which every model reads; SmolLM2-135M
    # describes a pass key instead of copying it through its chat template (README "Prompt formats")
    prompt: Literal["auto", "chat", "plain"] = "plain"
    chunk_size: int = pydantic.Field(2048, ge=1)
    memory_limit: str | int | None = None
    shard: str = "0/1"
    executor: Literal["local", "ray"] = "local"

    @pydantic.field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> list[str]:
        items = split_specs(v)
        for spec in items:
            Plan.from_spec(spec)  # SpecError names the problem
        return items or ["none"]

    @pydantic.field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> list[Any]:
        items = split_specs(v) if isinstance(v, str) else [
            x for t in v for x in (split_specs(t) if isinstance(t, str) else [t])]
        for t in items:
            task_of(t)
        return items

    @pydantic.field_validator("lengths", mode="before")
    @classmethod
    def _lengths(cls, v: Any) -> Any:
        return [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    @pydantic.field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [float(x) for x in v.split(",")] if "," in v or "." in v else int(v)
        if isinstance(v, int) and v < 1:
            raise ValueError("depths must be a count >= 1 or a list of fractions in [0, 1]")
        if isinstance(v, list) and not all(0.0 <= d <= 1.0 for d in v):
            raise ValueError("depths must be fractions within [0, 1]")
        return v

    @pydantic.field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        m = re.match(r"^(\d+)/(\d+)$", v.strip())
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            raise ValueError(f"shard must be i/N with 0 <= i < N, got {v!r}")
        return v.strip()

    def depth_list(self) -> list[float]:
        if isinstance(self.depths, list):
            return list(self.depths)
        n = self.depths
        return [0.5] if n == 1 else [round(i / (n - 1), 4) for i in range(n)]


def task_of(item: str | dict[str, Any]) -> Task:
    if isinstance(item, dict):
        params = dict(item)
        name = params.pop("name", None)
        if not name:
            raise BenchError(f"a task given as a mapping needs a 'name': {item}")
        return make_task(str(name), **params)
    return make_task(item)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> BenchConfig:
    """Read a YAML/TOML config file (if any), apply the non-None overrides, validate."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise BenchError(f"{p}: no such config file")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text) or {}
        except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
            raise BenchError(f"{p}: cannot parse config: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise BenchError(f"{p}: a config file must be a mapping of fields")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return BenchConfig(**data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        raise BenchError(f"bad bench setting {where}: {msg}") from None


# ---------------------------------------------------------------------------------------------- cells
def slug(text: str) -> str:
    """A file-system-safe folder name for a spec (long or odd specs get a hash suffix)."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"
    if safe != text or len(safe) > 80:
        safe = safe[:60] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return safe


@dataclasses.dataclass
class Cell:
    model: str
    method: str
    task: Task
    length: int

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.model, self.method, self.task.spec, self.length)

    def folder(self, out: Path) -> Path:
        return out / "cells" / slug(self.model) / slug(self.method) / slug(self.task.spec) / format_length(self.length)

    def sample_plan(self, cfg: BenchConfig) -> list[tuple[str, int, float | None]]:
        """(id, seed, depth) of every sample of this cell."""
        depths: list[float | None] = cfg.depth_list() if self.task.uses_depth else [None]
        return [(f"d{j}-s{s}", cfg.seed + 1000 * j + s, d) for j, d in enumerate(depths) for s in range(cfg.samples)]


def plan_cells(cfg: BenchConfig, model_name: str) -> list[Cell]:
    cells = [Cell(model_name, Plan.from_spec(m).spec, task_of(t), n)
             for m in cfg.methods for t in cfg.tasks for n in cfg.lengths]
    i, n = (int(x) for x in cfg.shard.split("/"))
    return [c for k, c in enumerate(cells) if k % n == i]


# ------------------------------------------------------------------------------------------- storage
def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished sample records of a JSONL file; a torn last line (killed mid-write) is dropped and the
    file rewritten without it."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    good, torn = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
            done[rec["id"]] = rec
            good.append(line)
        except (ValueError, KeyError, TypeError):
            torn = True
    if torn:
        atomic_write(path, "".join(g + "\n" for g in good))
    return done


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cell_metrics(cell: Cell, records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    scores = [r["score"] for r in records]
    by_depth: dict[str, list[float]] = {}
    for r in records:
        if r.get("depth") is not None:
            by_depth.setdefault(str(r["depth"]), []).append(r["score"])
    prefill = [(r["input_tokens"], r["prefill_seconds"]) for r in records if r.get("prefill_seconds")]
    out: dict[str, Any] = {
        "status": "done", "model": cell.model, "method": cell.method, "task": cell.task.name,
        "task_spec": cell.task.spec, "length": cell.length, "n": len(records),
        "score": statistics.fmean(scores) if scores else None,
        "stderr": statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else None,
        "higher_is_better": cell.task.higher_is_better,
        "by_depth": {d: statistics.fmean(v) for d, v in sorted(by_depth.items(), key=lambda kv: float(kv[0]))},
        "tokens_mean": statistics.fmean(r["input_tokens"] for r in records) if records else None,
        "seconds": round(seconds, 3),
        "seconds_per_sample": round(sum(r.get("seconds", 0.0) for r in records) / max(1, len(records)), 3),
        "prefill_tokens_per_second": round(sum(t for t, _ in prefill) / sum(s for _, s in prefill), 1)
        if prefill else None,
        "peak_memory_bytes": max((r.get("peak_memory_bytes", 0) for r in records), default=0),
        "kv_cache_bytes": max((r.get("kv_cache_bytes", 0) for r in records), default=0),
        "errors": sum(1 for r in records if r.get("error")),
    }
    if cell.task.name == "atc":
        out["needles"] = statistics.median(r["meta"].get("needles", 0) for r in records) if records else None
    if cell.task.name == "ppl":
        tails = [r["ppl_tail"] for r in records if r.get("ppl_tail")]
        out["ppl_tail"] = statistics.fmean(tails) if tails else None
    return out


# -------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class SweepStats:
    ran: int = 0
    skipped: int = 0
    cells_done: int = 0
    cells_skipped: int = 0
    cells_refused: int = 0


def run_cell(cell: Cell, cfg: BenchConfig, backend: Backend, out: Path, bar: Any = None,
             stats: SweepStats | None = None) -> dict[str, Any]:
    stats = stats or SweepStats()
    folder = cell.folder(out)
    metrics_path = folder / "metrics.json"
    plan_items = cell.sample_plan(cfg)
    if metrics_path.exists():
        stats.cells_skipped += 1
        stats.skipped += len(plan_items)
        return json.loads(metrics_path.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    plan = Plan.from_spec(cell.method)
    try:
        reason = backend.refuse(plan, cell.length, cell.task)
    except LongreachError as exc:
        reason = str(exc)
    if reason is not None:
        metrics = {"status": "refused", "reason": reason, "model": cell.model, "method": cell.method,
                   "task": cell.task.name, "task_spec": cell.task.spec, "length": cell.length, "n": 0,
                   "score": None, "higher_is_better": cell.task.higher_is_better}
        atomic_write(metrics_path, json.dumps(metrics, indent=1))
        log.info("refused %s %s %s: %s", cell.method, cell.task.spec, cell.length, reason)
        stats.cells_refused += 1
        if bar is not None:
            bar.update(len(plan_items))
        return metrics

    samples_path = folder / "samples.jsonl"
    done = read_done(samples_path)
    start = time.perf_counter()
    with open(samples_path, "a", encoding="utf-8") as f:
        for sid, seed, depth in plan_items:
            if sid in done:
                stats.skipped += 1
                continue
            record = run_sample(cell, backend, plan, sid, seed, depth)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[sid] = record
            stats.ran += 1
            if bar is not None:
                bar.update(1)
    records = [done[sid] for sid, _, _ in plan_items]
    metrics = cell_metrics(cell, records, time.perf_counter() - start)
    atomic_write(metrics_path, json.dumps(metrics, indent=1))
    stats.cells_done += 1
    return metrics


def run_sample(cell: Cell, backend: Backend, plan: Plan, sid: str, seed: int,
               depth: float | None) -> dict[str, Any]:
    sample = cached_sample(cell.task, backend.tokenizer, cell.length, seed, depth)
    t0 = time.perf_counter()
    error = None
    try:
        result = backend.loglik(sample, plan) if cell.task.kind == "loglik" else backend.generate(sample, plan)
        score = cell.task.score(sample, result["prediction"])
    except BackendError:  # nothing can answer (server down, bad key): stop instead of failing every sample
        raise
    except LongreachError as exc:  # e.g. the prompt with its template is beyond the plan's reach
        result, score, error = {"prediction": "", "input_tokens": sample.meta["tokens"]}, 0.0, str(exc)
    meta = {k: v for k, v in sample.meta.items() if k not in ("task", "spec", "length", "seed", "depth")}
    return {"id": sid, "model": cell.model, "method": cell.method, "task": cell.task.name,
            "task_spec": cell.task.spec, "length": cell.length, "depth": depth, "seed": seed,
            "tokens": sample.meta["tokens"], "references": sample.references, "score": score,
            "seconds": round(time.perf_counter() - t0, 3), **result, "error": error, "meta": meta}


def sweep_backend(cfg: BenchConfig, lm: Any = None) -> Backend:
    """The backend a sweep's config asks for (``lm``: an already loaded model instead of ``cfg.model``)."""
    limit = parse_bytes(cfg.memory_limit) if cfg.memory_limit is not None else None
    return make_backend(cfg.backend, lm if lm is not None else cfg.model,
                        dtype=None if cfg.dtype == "auto" else cfg.dtype, chunk_size=cfg.chunk_size,
                        memory_limit=limit, prompt=cfg.prompt)


def run_bench(cfg: BenchConfig, lm: Any = None, progress: bool = True) -> SweepStats:
    """Run (or resume) a sweep; ``lm`` = an already loaded model for the local backend (tests, API)."""
    if cfg.executor == "ray" and lm is not None:
        raise BenchError("the ray executor loads the model inside each worker from the config's model; "
                         "pass the model name instead of a loaded model, or use the local executor")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = sweep_backend(cfg, lm)
    PROMPT_FORMAT.set(cfg.prompt)
    cells = plan_cells(cfg, backend.model_name)
    atomic_write(out / "config.json", json.dumps({**cfg.model_dump(), "model_name": backend.model_name,
                                                  "backend_info": backend.describe()}, indent=1, default=str))
    if cfg.executor == "ray":
        from .ray_executor import run_ray

        del backend  # each Ray task builds its own; the driver keeps no model
        return run_ray(cfg, cells, out, progress=progress)
    total = sum(len(c.sample_plan(cfg)) for c in cells)
    already = sum(len(c.sample_plan(cfg)) if (c.folder(out) / "metrics.json").exists()
                  else len(read_done(c.folder(out) / "samples.jsonl")) for c in cells)
    stats = SweepStats()
    with tqdm(total=total, initial=already, unit="sample", desc="bench", disable=not progress,
              dynamic_ncols=True) as bar:
        for cell in cells:
            bar.set_postfix_str(f"{cell.method} {cell.task.spec} {format_length(cell.length)}", refresh=False)
            run_cell(cell, cfg, backend, out, bar, stats)
    from .store import write_aggregates

    write_aggregates(out)
    return stats
