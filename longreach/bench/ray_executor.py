"""The Ray executor (``--executor ray``; install with ``pip install 'longreach[ray]'``): one Ray task per cell.

Each task builds its own backend from the sweep config with :func:`make_backend` (the model is loaded
inside the worker, once per worker process, never pickled from the driver) and runs its cell with the same
:func:`run_cell` as the local executor, so the per-sample JSONL, the atomic ``metrics.json`` and resume are
identical. The driver skips finished cells without starting a task, shows a progress bar over cells and
writes the aggregates when every task has finished. A :class:`LongreachError` raised in a worker (a model
that does not load, a server that does not answer) cancels the remaining tasks and is raised again on the
driver as the same one-line error; the cells already written are kept, so re-running resumes.

Ray is started here (``ray.init``) only when it is not running in this process already; ``RAY_ADDRESS``
joins an existing cluster (then the results folder and ``$LONGREACH_CACHE`` must be on a shared file
system).

Credentials never travel with a task: its arguments are the config, the cell, the folder, the driver's
non-secret ``LONGREACH_*`` / ``HF_*`` settings and the *names* of the credentials the driver has set (e.g.
``OPENAI_API_KEY``). A worker reads each credential from its own environment and stops with a one-line error
when one is missing there. Workers of a Ray started here inherit this process's environment; on a cluster
(or a Ray started earlier in this process), set the key in the environment of every node before ``ray start``
(``ray.init``). Environment variables:

- ``LONGREACH_RAY_CPUS``: CPUs of the Ray instance started here (default: all of this machine's).
- ``LONGREACH_RAY_TASK_CPUS``: CPUs reserved per cell (default 1; Ray sets the task's torch threads to it).
- ``LONGREACH_RAY_TASK_GPUS``: GPUs reserved per cell (default 0).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import LongreachError
from ..units import format_length
from .backends import Backend
from .identity import model_id
from .runner import BenchConfig, Cell, SweepStats, finished_on_disk, run_cell, sweep_backend
from .task import PROMPT_FORMAT, BenchError

INSTALL_HINT = "pip install 'longreach[ray]'"
# Driver environment every task sees (the sample cache folder, offline mode, the server URL); never a
# variable whose name says it holds a secret (keys, tokens, passwords): workers read those from their own.
_FORWARD_PREFIXES = ("LONGREACH_", "HF_")
_FORWARD_NAMES = ("OPENAI_BASE_URL", "TOKENIZERS_PARALLELISM")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)

_WORKER_BACKEND: dict[str, Backend] = {}  # per worker process: the last config's backend, reused by its tasks


def _env_number(name: str, default: float, kind: type = int) -> Any:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BenchError(f"{name}={text!r} is not a number; unset it or give e.g. {name}=2") from None
    if value < 0:
        raise BenchError(f"{name} must be >= 0, got {text!r}")
    return value


def _worker_backend(cfg: BenchConfig) -> Backend:
    key = cfg.model_dump_json(include={"backend", "model", "dtype", "chunk_size", "memory_limit", "prompt"})
    if key not in _WORKER_BACKEND:
        _WORKER_BACKEND.clear()  # one model per worker process at a time
        _WORKER_BACKEND[key] = sweep_backend(cfg)
    return _WORKER_BACKEND[key]


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The driver's settings a task carries: ``LONGREACH_*``, ``HF_*`` and a few names, without secrets."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items()
            if (k.startswith(_FORWARD_PREFIXES) or k in _FORWARD_NAMES) and not _SECRET_NAME.search(k)}


def needed_credentials(cfg: BenchConfig) -> list[str]:
    """Names (never values) of the credentials the driver has set that a worker of ``cfg`` must have."""
    wanted = ["OPENAI_API_KEY"] if cfg.backend.strip().startswith("openai") else []
    return [name for name in wanted if (os.environ.get(name) or "").strip()]


def cell_task(cfg: BenchConfig, cell: Cell, out: str, env: dict[str, str],
              needs: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The body of one Ray task: run ``cell`` in this worker. Returns its stats and status, or the
    :class:`LongreachError` that stopped it (sent back to the driver rather than raised with a traceback).
    ``needs``: credentials (names) this worker must find in its own environment."""
    os.environ.update(forwarded_env(env))
    PROMPT_FORMAT.set(cfg.prompt)
    try:
        missing = [name for name in needs if not (os.environ.get(name) or "").strip()]
        if missing:
            raise BenchError(f"the Ray worker on {socket.gethostname()} has no ${missing[0]} (the driver has); "
                             f"credentials are not sent with Ray tasks: set it in the environment of every Ray "
                             f"node before `ray start`, or let longreach start Ray (--executor ray without a "
                             f"running Ray)")
        backend = _worker_backend(cfg)
        loaded = model_id(cfg, backend).key  # the folder name the driver gave the cell's model
        if loaded != cell.model:
            raise BenchError(f"the worker loaded {loaded!r} but the cell is for {cell.model!r}; "
                             f"give the same --model on every machine of the cluster")
        stats = SweepStats()
        metrics = run_cell(cell, cfg, backend, Path(out), stats=stats)
        return {"stats": dataclasses.asdict(stats), "status": metrics["status"]}
    except LongreachError as exc:
        return {"error": exc}


def run_ray(cfg: BenchConfig, cells: list[Cell], out: Path, progress: bool = True) -> SweepStats:
    """Run the unfinished ``cells`` as Ray tasks, then write the aggregates of ``out``."""
    try:
        import ray
    except ImportError:
        raise BenchError(f"the ray executor needs ray, which is not installed; {INSTALL_HINT} "
                         f"(or use --executor local)") from None
    from .store import write_aggregates

    task_cpus = _env_number("LONGREACH_RAY_TASK_CPUS", 1.0, float)
    task_gpus = _env_number("LONGREACH_RAY_TASK_GPUS", 0.0, float)
    stats = SweepStats()
    todo = []
    for cell in cells:
        if finished_on_disk(cell, cfg, out):  # what run_cell skips: no task
            stats.cells_skipped += 1
            stats.skipped += len(cell.sample_plan(cfg))
        else:
            todo.append(cell)
    if not todo:  # everything is finished: no Ray start either
        write_aggregates(out)
        return stats
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False}
        cpus = _env_number("LONGREACH_RAY_CPUS", 0)
        if cpus and not os.environ.get("RAY_ADDRESS"):  # num_cpus only applies to a Ray started here
            kwargs["num_cpus"] = cpus
        ray.init(**kwargs)
        started = True
    env, needs = forwarded_env(), needed_credentials(cfg)
    pending: dict[Any, Cell] = {}
    try:
        remote = ray.remote(num_cpus=task_cpus, num_gpus=task_gpus, max_retries=0)(cell_task)
        cfg_ref = ray.put(cfg)
        pending = {remote.remote(cfg_ref, cell, str(out), env, needs): cell for cell in todo}
        with tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", desc="bench (ray)",
                  disable=not progress, dynamic_ncols=True) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    result = ray.get(ref)  # a bug in a worker raises here with its traceback
                    if "error" in result:
                        raise result["error"]
                    for field, value in result["stats"].items():
                        setattr(stats, field, getattr(stats, field) + value)
                    bar.set_postfix_str(f"{cell.method} {cell.task.spec} {format_length(cell.length)}",
                                        refresh=False)
                    bar.update(1)
    finally:
        for ref in pending:  # stop what has not finished; the cells written so far are kept
            ray.cancel(ref)
        if started:
            ray.shutdown()
    write_aggregates(out)
    return stats
