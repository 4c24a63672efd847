"""The sweep runner: (model x method x task x length) cells, each resumable, written atomically.

Layout of an output folder::

    DIR/config.json                                   the resolved sweep (what was asked) and every run's command
    DIR/sweep.json                                    the fingerprint: settings, method parameters, model identities
    DIR/cells/<model>/<method>/<task>/<length>/samples.jsonl   one framed ASCII JSON line per sample, fsynced
    DIR/cells/<model>/<method>/<task>/<length>/metrics.json    written (tmp + fsync + rename) when the cell is done
    DIR/results.json, DIR/results.sqlite              aggregates (lm-evaluation-harness shape, one table)
    DIR/.lock, DIR/.write.lock, DIR/.locks/           the folder's locks (files.py)

Re-running the same command skips finished cells and finished samples, so killing the process at any
moment loses at most the sample in flight (a torn record is repaired on the next run). A cell that cannot
run (beyond the plan's reach, or above the memory pre-check) is recorded as ``refused`` with the reason
instead of crashing the sweep; a memory refusal, and a sample that failed for memory or a transient
backend failure, are marked ``retryable`` and run again on the next run. ``<model>`` is the model's name,
with a hash of its resolved path and content when it was given as a folder or file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import pydantic
from tqdm.auto import tqdm

from ..errors import LongreachError
from ..models import DEFAULT_MODEL
from ..prompt import check_format, has_chat_template, is_auto, resolve_by_name, resolve_format
from ..spec import Plan
from ..units import MAX_LENGTH, format_length, parse_bytes, parse_length, shown_value
from .backends import Backend, BackendError, make_backend
from .cache import cached_sample
from .files import (
    FolderLock,
    RecordWriter,
    atomic_write,
    is_record,
    make_dirs,
    read_json,
    read_records,
    write_lock,
)
from .identity import check_methods, check_model, check_settings, has_cells, model_id
from .metrics import cost_metrics
from .shared_context import cell_records, run_questions, shared_metrics
from .store import machine_name, metrics_ok
from .task import PROMPT_FORMAT, BenchError, Sample, SampleRefused, Task, make_task, prompt_tokens

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


class ConfigValueError(ValueError):
    """A bad value of a sweep setting, raised inside a BenchConfig validator: ``where`` is its position
    within the field (``[2]``, empty for the whole field) and ``error_class`` the one-line error
    :func:`load_config` raises for it (a bad method spec stays a SpecError)."""

    def __init__(self, where: str, message: str, error_class: type[LongreachError] = BenchError):
        super().__init__(" ".join(message.split()))  # one line, whatever the cause wrote
        self.where = where
        self.error_class = error_class


#: Bounds of the sweep's counts (a config is validated before any model loads or cell runs).
MAX_SAMPLES = 10_000
MAX_DEPTHS = 100
MAX_ITEMS = 1_000  # methods, tasks or lengths in one sweep
MAX_SEED = 2**31 - 1
MAX_SHARDS = 1_000_000
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few lines; 1 MiB is plenty
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]{1,4})?)$", re.ASCII)
_SHARD_RE = re.compile(r"^\s*([0-9]{1,7})\s*/\s*([0-9]{1,7})\s*$", re.ASCII)


def _whole(v: Any, low: int, high: int, what: str = "a whole number") -> int:
    """An int (or the digits of one) within [low, high]; bools, fractions and other types are refused."""
    if isinstance(v, str) and re.fullmatch(r"\s*-?[0-9]{1,20}\s*", v, re.ASCII):
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigValueError("", f"{shown_value(v)} is not {what} (between {low:,} and {high:,})")
    if not low <= v <= high:
        raise ConfigValueError("", f"{shown_value(v)} is out of range; use {what} between {low:,} and {high:,}")
    return v


def _text(v: Any, what: str, max_len: int = 4096) -> str:
    """Printable one-line text (names, paths, specs): no control characters, at most ``max_len`` characters."""
    if not isinstance(v, str):
        raise ConfigValueError("", f"{shown_value(v)} is not {what} (text)")
    if not v.strip() or len(v) > max_len or not v.isprintable():
        raise ConfigValueError("", f"{shown_value(v)} is not {what}: give non-empty printable text of at most "
                                   f"{max_len:,} characters")
    return v


def _spec_items(v: Any, what: str, example: str) -> list[Any]:
    """A str or a list of str/mapping items of a spec-list field, each checked for type; ``where`` = index."""
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list):
        raise ConfigValueError("", f"{shown_value(v)} is not a list of {what}; write e.g. {example}")
    if len(v) > MAX_ITEMS:
        raise ConfigValueError("", f"{len(v):,} items is more than {MAX_ITEMS:,}; split the sweep")
    return v


class BenchConfig(pydantic.BaseModel):
    """One sweep. Same fields in a YAML / TOML / JSON file and on the command line (the command line
    wins). A strict schema: every field's type and range is checked here, before any model loads, and
    :func:`load_config` turns the first problem into one line naming the field (``config depths[0]: ...``)."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = DEFAULT_MODEL
    methods: list[str] = list(QUICK_METHODS)
    tasks: list[str | dict[str, Any]] = list(QUICK_TASKS)
    lengths: list[int] = list(QUICK_LENGTHS)
    depths: int | list[float] = 3
    samples: int = 1
    seed: int = 0
    out: str = "bench-out"
    backend: str = "local"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"  # local backend: auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps
    # BASE[+MOD...] (docs/prompts.md); auto: the format measured best for the model
    # (longreach/data/prompt_formats.json), resolved at sweep start and recorded concrete
    prompt: str = "auto"
    chunk_size: int = 2048
    # decode speed: every generate sample decodes exactly this many tokens (EOS does not stop it; the
    # answer scored is still the text before the first stop token; the prompt is sized so that prompt +
    # these tokens fit the cell's length). None: the task's answer budget, stopping at EOS
    decode_tokens: int | None = None
    memory_limit: str | int | None = None
    # the query-agnostic protocol (bench/shared_context.py): K questions per context, the context prefilled
    # and compressed once without them; 0 = off (one question, one request)
    query_agnostic: int = 0
    shard: str = "0/1"
    executor: Literal["local", "ray"] = "local"

    @pydantic.field_validator("model", "out", mode="before")
    @classmethod
    def _names(cls, v: Any, info: pydantic.ValidationInfo) -> str:
        return _text(v, "a model name or folder" if info.field_name == "model" else "a folder path")

    @pydantic.field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> list[str]:
        items: list[str] = []
        for i, item in enumerate(_spec_items(v, "method specs", "[none, yarn:factor=4]")):
            if not isinstance(item, str):
                raise ConfigValueError(f"[{i}]", f"{shown_value(item)} is not a method spec (text such as "
                                                 "yarn:factor=4)")
            try:
                for spec in split_specs(item):
                    Plan.from_spec(spec)
                    items.append(spec)
            except LongreachError as exc:
                raise ConfigValueError(f"[{i}]" if isinstance(v, list) else "", str(exc), type(exc)) from None
        return items or ["none"]

    @pydantic.field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> list[Any]:
        items: list[Any] = []
        for i, item in enumerate(_spec_items(v, "task specs", "[passkey, niah:haystack=noise]")):
            where = f"[{i}]" if isinstance(v, list) else ""
            if isinstance(item, dict):
                bad = [k for k, x in item.items() if not isinstance(k, str)  # a key may itself be None
                       or not isinstance(x, (str, int, float))]
                if bad or not item:
                    raise ConfigValueError(where, "a task mapping holds name: TASK and parameters with text or "
                                                  f"number values, e.g. {{name: niah, haystack: noise}}; got "
                                                  f"{shown_value(item)}")
                parts = [item]
            elif isinstance(item, str):
                try:
                    parts = split_specs(item)
                except LongreachError as exc:
                    raise ConfigValueError(where, str(exc), type(exc)) from None
            else:
                raise ConfigValueError(where, f"{shown_value(item)} is not a task spec (text such as passkey or "
                                              "niah:haystack=noise, or a mapping with a name)")
            for t in parts:
                try:
                    task = task_of(t)
                    source = getattr(task, "haystack", None)
                    # a haystack file or folder is read now; a task with haystacks of its own names kinds
                    if isinstance(source, str) and source != "needles" and not hasattr(task, "haystack_fingerprint"):
                        # ("needles": RULER's haystack made of distractor needles, no file)
                        from .haystack import fingerprint

                        fingerprint(source)
                except LongreachError as exc:
                    raise ConfigValueError(where, str(exc), type(exc)) from None
                except (TypeError, ValueError) as exc:  # a mapping's parameter of the wrong kind
                    raise ConfigValueError(where, f"bad task {shown_value(t)}: {exc}") from None
                items.append(t)
        if not items:
            raise ConfigValueError("", "no task given; name at least one, e.g. [passkey]")
        return items

    @pydantic.field_validator("lengths", mode="before")
    @classmethod
    def _lengths(cls, v: Any) -> list[int]:
        items = [x for x in v.split(",") if x.strip()] if isinstance(v, str) else [v] if isinstance(v, int) else v
        items = _spec_items(items, "lengths", "[4k, 8k]")
        if not items:
            raise ConfigValueError("", "no length given; write e.g. [4k, 8k]")
        out = []
        for i, x in enumerate(items):
            try:
                out.append(parse_length(x))
            except ValueError as exc:
                raise ConfigValueError(f"[{i}]" if len(items) > 1 or isinstance(v, list) else "", str(exc)) from None
        return out

    @pydantic.field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> int | list[float]:
        if isinstance(v, str):
            parts = [x.strip() for x in v.split(",")]
            if len(parts) == 1 and re.fullmatch(r"[0-9]{1,6}", parts[0], re.ASCII):
                v = int(parts[0])
            elif len(parts) > MAX_DEPTHS:
                raise ConfigValueError("", f"{len(parts):,} depths is more than {MAX_DEPTHS}")
            else:
                v = parts
        elif isinstance(v, float):
            v = [v]
        if isinstance(v, int) and not isinstance(v, bool):
            if not 1 <= v <= MAX_DEPTHS:
                raise ConfigValueError("", f"{shown_value(v)} depths: give a count from 1 to {MAX_DEPTHS} or a "
                                           "list of fractions such as 0.1,0.5,0.9")
            return v
        if not isinstance(v, list) or not v or len(v) > MAX_DEPTHS:
            raise ConfigValueError("", f"{shown_value(v)} is not a count of depths (1 to {MAX_DEPTHS}) or a list of "
                                       f"1 to {MAX_DEPTHS} fractions such as [0.1, 0.5, 0.9]")
        out = []
        for i, d in enumerate(v):
            x = d
            if isinstance(d, str) and re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*", d, re.ASCII):
                x = float(d)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
                raise ConfigValueError(f"[{i}]", f"{shown_value(d)} is not a number between 0 and 1")
            out.append(float(x))
        return out

    @pydantic.field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> str:
        try:
            return check_format(v)
        except LongreachError as exc:
            raise ConfigValueError("", str(exc), type(exc)) from None

    @pydantic.field_validator("samples", mode="before")
    @classmethod
    def _samples(cls, v: Any) -> int:
        return _whole(v, 1, MAX_SAMPLES, "a sample count")

    @pydantic.field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> int:
        return _whole(v, 0, MAX_SEED, "a seed")

    @pydantic.field_validator("chunk_size", "decode_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> int | None:
        return None if v is None else _whole(v, 1, MAX_LENGTH, "a number of tokens")

    @pydantic.field_validator("query_agnostic", mode="before")
    @classmethod
    def _query_agnostic(cls, v: Any) -> int:
        from .shared_context import MAX_QUERIES

        return _whole(v, 0, MAX_QUERIES, "a number of questions per context (0 = off)")

    @pydantic.field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> str:
        from .backends import BACKENDS, parse_backend_spec

        text = _text(v, "a backend spec")
        try:
            name, _ = parse_backend_spec(text)
        except LongreachError as exc:
            raise ConfigValueError("", str(exc), type(exc)) from None
        if name not in BACKENDS:
            raise ConfigValueError("", f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
        return text

    @pydantic.field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> str:
        if not isinstance(v, str) or not _DEVICE_RE.match(v.strip().lower()):
            raise ConfigValueError("", f"unknown device {shown_value(v)}; use auto, cpu, cuda, cuda:N or mps")
        return v.strip().lower()

    @pydantic.field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, v: Any) -> str | int | None:
        if v is not None:
            parse_bytes(v)  # SettingError (a ValueError): not a size, zero, or beyond 1 PiB
        return v

    @pydantic.field_validator("shard", mode="before")
    @classmethod
    def _shard(cls, v: Any) -> str:
        m = _SHARD_RE.match(v) if isinstance(v, str) else None
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)) <= MAX_SHARDS:
            raise ConfigValueError("", f"shard must be i/N with 0 <= i < N <= {MAX_SHARDS:,}, got {shown_value(v)}")
        return f"{int(m.group(1))}/{int(m.group(2))}"

    def depth_list(self) -> list[float]:
        if isinstance(self.depths, list):
            return list(self.depths)
        n = self.depths
        return [0.5] if n == 1 else [round(i / (n - 1), 4) for i in range(n)]


def command_line(cfg: BenchConfig) -> str:
    """The shell-quoted ``longreach bench`` command that runs ``cfg`` (recorded in ``config.json``):
    the sweep's axes always, other fields when they differ from their defaults."""
    import shlex

    def fmt(v: Any) -> str:
        return ",".join(fmt(x) for x in v) if isinstance(v, list) else str(v)

    axes = {"model": cfg.model, "methods": ";".join(cfg.methods), "tasks": ";".join(task_of(t).spec for t in cfg.tasks),
            "lengths": ",".join(format_length(n) for n in cfg.lengths), "depths": fmt(cfg.depths)}
    args = ["longreach", "bench"]
    for name, field in BenchConfig.model_fields.items():
        value = getattr(cfg, name)
        if name in axes:
            args += [f"--{name}", axes[name]]
        elif value != field.default and value is not None:
            args += [f"--{name.replace('_', '-')}", fmt(value)]
    return shlex.join(args)


def task_of(item: str | dict[str, Any]) -> Task:
    if isinstance(item, dict):
        params = dict(item)
        name = params.pop("name", None)
        if not name:
            raise BenchError(f"a task given as a mapping needs a 'name': {item}")
        return make_task(str(name), **params)
    return make_task(item)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> BenchConfig:
    """Read a YAML / TOML / JSON config file (if any), apply the non-None overrides, validate. Every
    problem is one line naming the file or the field: ``config depths[0]: 'a' is not a number between 0
    and 1`` for a file's value, ``--depths: ...`` for a command-line (or keyword) value."""
    data: dict[str, Any] = {}
    if path:
        data = _read_config_file(path)
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    try:
        return BenchConfig(**data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc") or ()
        key = str(loc[0]) if loc else ""
        cause = (err.get("ctx") or {}).get("error")
        where = getattr(cause, "where", "")
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        if err.get("type") == "extra_forbidden":
            msg = f"unknown setting; valid settings: {', '.join(BenchConfig.model_fields)}"
        elif err.get("type") == "literal_error":
            msg = f"{shown_value(err.get('input'))} is not valid: {msg.removeprefix('Input should be ')}"
        shown_key = key if key.isidentifier() else shown_value(key)
        label = f"--{key.replace('_', '-')}" if key in given else f"config {shown_key}"
        raise getattr(cause, "error_class", BenchError)(f"{label}{where}: {msg}") from None


def _read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping: a regular file of at most 1 MiB, UTF-8, YAML (``.toml``: TOML, ``.json``:
    JSON), whose top level is a mapping with text keys; one-line BenchError / InputError otherwise."""
    from ..textio import regular_file, shown

    p = regular_file(path)  # missing, folder, FIFO, device, /proc: one line before anything is opened
    name = shown(p)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise BenchError(f"{name}: cannot read the config file ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise BenchError(f"{name}: a config file of more than {MAX_CONFIG_BYTES:,} bytes; is this the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{name}: the config file is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                         f"{exc.start}); save it as UTF-8") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error (or a nesting too deep) is the user's file
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise BenchError(f"{name}: cannot parse the config file: {shown_value(first, 160)[1:-1]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"{name}: a config file must be a mapping of settings (model:, methods:, tasks:, ...), "
                         f"not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]  # a list: the bad key itself may be None (YAML "?")
    if bad:
        raise BenchError(f"{name}: setting name {shown_value(bad[0])} is not text; valid settings: "
                         f"{', '.join(BenchConfig.model_fields)}")
    return data


# ---------------------------------------------------------------------------------------------- cells
def slug(text: str) -> str:
    """A file-system-safe folder name for a spec (long or odd specs get a hash suffix)."""
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"
    if safe != text or len(safe) > 80 or set(safe) <= {"."}:  # never ".", ".." or "..." (a parent folder)
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
#: how the engine words a refusal by the memory pre-check (re-checked on the next run, unlike reach)
MEMORY_REFUSAL = "memory pre-check"
_CELL_KEYS = ("model", "method", "task_spec", "length")


def read_done(path: Path, cell: Cell | None = None, cfg: BenchConfig | None = None,
              repair: bool = True) -> dict[str, dict[str, Any]]:
    """Finished sample records of a cell's JSONL file, by id (framing and repair:
    :mod:`longreach.bench.files`). A record marked ``retryable`` (a memory failure, a transient backend
    failure) is not finished: it is dropped and its sample runs again. With ``cell``: records its task
    cannot aggregate are dropped too, and a record made for another cell or sample plan (``cfg``) stops
    with a one-line error instead of mixing."""
    def accept(rec: dict[str, Any]) -> bool:
        return is_record(rec) and not rec.get("retryable") and (cell is None or _usable(cell, rec))

    done = {r["id"]: r for r in read_records(path, accept, repair=repair)}
    if cell is not None:
        plan = {sid: (seed, depth) for sid, seed, depth in cell.sample_plan(cfg)} if cfg is not None else {}
        want = dict(zip(_CELL_KEYS, cell.key))
        for rec in done.values():
            made = {k: rec[k] for k in _CELL_KEYS if k in rec and rec[k] != want[k]}
            base = rec["id"].rpartition("-q")[0] or rec["id"]  # a question's record: <sample id>-q<i>
            if base in plan:
                seed, depth = plan[base]
                if "seed" in rec and rec["seed"] != seed:
                    made["seed"] = rec["seed"]
                if rec.get("depth") != depth and not (_close(rec.get("depth"), depth)):
                    made["depth"] = rec.get("depth")
            if "task_version" in rec and rec["task_version"] != cell.task.version:
                made["task_version"] = rec["task_version"]
            if made:
                raise BenchError(f"{path}: sample {_short(rec['id'])} was made with "
                                 f"{', '.join(f'{k}={_short(v)}' for k, v in made.items())}, not what this sweep "
                                 f"asks; give a new --out (the two would mix)")
    return done


def _short(v: Any) -> str:
    text = repr(v)  # one line whatever the stored value holds
    return text if len(text) <= 60 else text[:57] + "..."


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) < 1e-9


def _usable(cell: Cell, rec: dict[str, Any]) -> bool:
    """Whether ``rec`` aggregates into ``cell``'s metrics (a hand-edited or damaged record may not)."""
    try:
        cell_metrics(cell, [rec], 0.0)
        return True
    except (ArithmeticError, AttributeError, KeyError, LookupError, TypeError, ValueError):
        return False


def read_metrics(path: Path) -> dict[str, Any] | None:
    """A cell's metrics.json; None when it is missing, or corrupt (then rebuilt from the samples)."""
    m = read_json(path)
    return m if metrics_ok(m) else None


def cell_finished(metrics: dict[str, Any] | None, planned: int | None = None) -> bool:
    """Whether a cell is finished for good: done without retryable samples, or refused for a reason that
    does not change between runs (beyond the plan's reach). A memory refusal and a cell with samples that
    failed for a passing reason (memory, a transient backend failure) run again on the next run, and so
    does a done cell planned with fewer samples than ``planned`` (a sweep whose ``samples`` grew)."""
    if metrics is None or metrics.get("status") not in ("done", "refused") or metrics.get("retryable"):
        return False
    return metrics["status"] == "refused" or planned is None or planned_samples(metrics) >= planned


def finished_on_disk(cell: Cell, cfg: BenchConfig, out: Path) -> bool:
    """:func:`cell_finished` for ``cell``'s stored metrics and the sample plan of ``cfg`` (what run_cell skips)."""
    return cell_finished(read_metrics(cell.folder(out) / "metrics.json"), len(cell.sample_plan(cfg)))


def planned_samples(metrics: dict[str, Any]) -> int:
    """How many samples a done cell was planned with (a cell written before ``planned`` was recorded: the
    records it holds, asked or refused)."""
    p = metrics.get("planned")
    if isinstance(p, int) and not isinstance(p, bool):
        return p
    n, refused = metrics.get("n"), metrics.get("refused")
    return (n if isinstance(n, int) else 0) + (refused if isinstance(refused, int) else 0)


def cell_lock(out: Path, cell: Cell) -> FolderLock:
    """The lock one process holds while it runs ``cell`` (overlapping shards never write one cell twice)."""
    rel = cell.folder(out).relative_to(out).as_posix()
    make_dirs(out / ".locks")
    path = out / ".locks" / (hashlib.sha256(rel.encode()).hexdigest()[:20] + ".lock")
    return FolderLock(path, f"cell {rel}", conflict=f"{out}/{rel}")


def cell_metrics(cell: Cell, records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """A finished cell's numbers: score (mean, stderr, by depth), tokens, time, the cost metrics of
    :func:`longreach.bench.metrics.cost_metrics` and the task's own (``ppl``, ``ppl_tail``, ``needles``)."""
    refused = sum(1 for r in records if r.get("refused"))
    records = [r for r in records if not r.get("refused")]  # a refused sample was never asked: not a 0
    scores = [r["score"] for r in records]
    by_depth: dict[str, list[float]] = {}
    for r in records:
        if r.get("depth") is not None:
            by_depth.setdefault(str(r["depth"]), []).append(r["score"])
    out: dict[str, Any] = {
        "status": "done", "model": cell.model, "method": cell.method, "task": cell.task.name,
        "task_spec": cell.task.spec, "length": cell.length, "n": len(records),
        "score": statistics.fmean(scores) if scores else None,
        "stderr": statistics.stdev(scores) / len(scores) ** 0.5
        if len(scores) > 1 and all(math.isfinite(x) for x in scores) else None,  # a NaN score has none
        "higher_is_better": cell.task.higher_is_better,
        "by_depth": {d: statistics.fmean(v) for d, v in sorted(by_depth.items(), key=lambda kv: float(kv[0]))},
        "tokens_mean": statistics.fmean(r["input_tokens"] for r in records) if records else None,
        "seconds": round(seconds, 3),
        "seconds_per_sample": round(sum(r.get("seconds", 0.0) for r in records) / max(1, len(records)), 3),
        **cost_metrics(records),
        "errors": sum(1 for r in records if r.get("error")),
        "retryable": sum(1 for r in records if r.get("retryable")),  # run again on the next run
        "refused": refused,  # samples the task refused at this length (e.g. a file's row longer than it)
        # the machine's 1/5/15-minute load when the cell finished: were its seconds measured alone?
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "machine": machine_name(),  # and on which CPU (a folder resumed on another machine mixes them)
    }
    out.update(shared_metrics(records))  # --query-agnostic: accuracy per question, the shared prefill's seconds
    out.update(cell.task.cell_metrics(records))
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
    """Run (or resume, or skip when finished) one cell; its samples go to ``samples.jsonl`` one framed,
    fsynced record at a time, then ``metrics.json`` is written atomically (a corrupt one is rebuilt from
    the samples without running them again)."""
    stats = stats or SweepStats()
    folder = cell.folder(out)
    metrics_path = folder / "metrics.json"
    plan_items = cell.sample_plan(cfg)
    old = read_metrics(metrics_path)
    if cell_finished(old, len(plan_items)):
        stats.cells_skipped += 1
        stats.skipped += len(plan_items)
        return old  # type: ignore[return-value]
    make_dirs(folder)
    with cell_lock(out, cell):
        for stale in folder.glob("*.tmp*"):  # a temporary file of a write killed before its rename
            stale.unlink(missing_ok=True)
        plan = Plan.from_spec(cell.method)
        try:
            reason = backend.refuse(plan, cell.length, cell.task)
            retry = reason is not None and MEMORY_REFUSAL in reason
        except LongreachError as exc:
            reason, retry = str(exc), bool(getattr(exc, "retryable", False))
        if reason is not None:
            metrics = {"status": "refused", "reason": reason, "retryable": retry, "model": cell.model,
                       "method": cell.method, "task": cell.task.name, "task_spec": cell.task.spec,
                       "length": cell.length, "n": 0, "score": None, "higher_is_better": cell.task.higher_is_better}
            atomic_write(metrics_path, json.dumps(metrics, indent=1))
            log.info("refused %s %s %s: %s", cell.method, cell.task.spec, cell.length, reason)
            stats.cells_refused += 1
            if bar is not None:
                bar.update(len(plan_items))
            return metrics

        samples_path = folder / "samples.jsonl"
        done = read_done(samples_path, cell, cfg)
        start = time.perf_counter()
        with RecordWriter(samples_path) as writer:
            for sid, seed, depth in plan_items:
                if cfg.query_agnostic:  # K questions about the sample's context, one record each
                    new = run_questions(cell, backend, plan, sid, seed, depth, cfg, done)
                elif sid in done:
                    new = iter(())
                else:
                    new = iter([run_sample(cell, backend, plan, sid, seed, depth, cfg.decode_tokens)])
                ran = 0
                for record in new:
                    if not (is_record(record) and _usable(cell, record)):  # a backend's bug, not the user's
                        log.warning("%s: sample %s has values the aggregates cannot read (%s); it runs again on "
                                    "the next run", cell.folder(out), record.get("id"),
                                    {k: record.get(k) for k in ("score", "input_tokens")})
                    writer.append(record)
                    done[record["id"]] = record
                    stats.ran += 1
                    ran += 1
                if not ran:
                    stats.skipped += 1
                elif bar is not None:
                    bar.update(1)
        records = cell_records(plan_items, done)
        metrics = cell_metrics(cell, records, time.perf_counter() - start)
        metrics["planned"] = len(plan_items)
        atomic_write(metrics_path, json.dumps(metrics, indent=1))
    stats.cells_done += 1
    return metrics


def run_sample(cell: Cell, backend: Backend, plan: Plan, sid: str, seed: int,
               depth: float | None, decode_tokens: int | None = None, sample: Sample | None = None,
               ask: Callable[[Sample, Plan], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One sample of ``cell``; ``decode_tokens``: decode exactly that many tokens (generate tasks), with the
    prompt sized for max(the task's answer budget, decode_tokens) so that prompt + answer fit the length
    (the task's own prompts, shared with other sweeps, whenever decode_tokens is within its budget).
    ``sample``: this one instead of the task's (a question of the query-agnostic protocol, its
    ``meta["tokens"]`` set); ``ask``: what answers instead of the backend (its shared-context answers)."""
    forced = decode_tokens if decode_tokens and cell.task.kind == "generate" else None
    budget = forced if forced and forced > cell.task.max_new_tokens else None
    try:
        if sample is None:
            sample = cached_sample(cell.task, backend.tokenizer, cell.length, seed, depth, answer_tokens=budget)
    except SampleRefused as exc:  # recorded and skipped by the aggregates, never truncated
        return {"id": sid, "model": cell.model, "method": cell.method, "task": cell.task.name,
                "task_spec": cell.task.spec, "length": cell.length, "depth": depth, "seed": seed,
                "tokens": exc.tokens or 0, "references": [], "score": 0.0, "seconds": 0.0, "prediction": "",
                "input_tokens": exc.tokens or 0, "error": f"refused: {exc}", "refused": True, "retryable": False,
                "task_version": cell.task.version, "meta": {}}
    if forced:
        sample = dataclasses.replace(sample, max_new_tokens=forced, ignore_eos=True)
    base = cell.task.baseline(sample)  # a second request (e.g. the question with no document), or None
    if base is not None and "tokens" not in base.meta:
        base.meta["tokens"] = prompt_tokens(backend.tokenizer, base)
    ask = ask or (backend.loglik if cell.task.kind == "loglik" else backend.generate)
    t0 = time.perf_counter()
    error, retryable, paired, answer_meta = None, False, {}, {}
    try:
        if base is not None:
            b = ask(base, plan)
            paired = {"baseline_prediction": b["prediction"], "baseline_input_tokens": b.get("input_tokens"),
                      "baseline_seconds": round(time.perf_counter() - t0, 3)}
            t0 = time.perf_counter()
        result = ask(sample, plan)
        before = paired.get("baseline_prediction")
        score = float(cell.task.score_pair(sample, result["prediction"], before) if base is not None
                      else cell.task.score(sample, result["prediction"]))
        answer_meta = cell.task.answer_meta(sample, result["prediction"], before)
    except BackendError:  # nothing can answer (server down, bad key): stop instead of failing every sample
        raise
    except LongreachError as exc:  # e.g. the prompt with its template is beyond the plan's reach
        result, score, error = {"prediction": "", "input_tokens": sample.meta["tokens"]}, 0.0, str(exc)
        retryable = bool(getattr(exc, "retryable", False))  # memory, a transient backend failure
    except _oom_errors() as exc:  # the device ran out of memory mid-request: worth another try later
        result, score = {"prediction": "", "input_tokens": sample.meta["tokens"]}, 0.0
        error, retryable = f"out of memory: {' '.join(str(exc).split())[:200]}", True
    meta = {k: v for k, v in sample.meta.items() if k not in ("task", "spec", "length", "seed", "depth")}
    meta.update(answer_meta)
    return {"id": sid, "model": cell.model, "method": cell.method, "task": cell.task.name,
            "task_spec": cell.task.spec, "length": cell.length, "depth": depth, "seed": seed,
            "tokens": sample.meta["tokens"], "references": sample.references, "score": score,
            "seconds": round(time.perf_counter() - t0, 3), **result, **paired, "error": error,
            "retryable": retryable, "task_version": cell.task.version, "meta": meta}


def _oom_errors() -> tuple[type[BaseException], ...]:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom is not None else ()


def sweep_backend(cfg: BenchConfig, lm: Any = None) -> Backend:
    """The backend a sweep's config asks for (``lm``: an already loaded model instead of ``cfg.model``)."""
    limit = parse_bytes(cfg.memory_limit) if cfg.memory_limit is not None else None
    return make_backend(cfg.backend, lm if lm is not None else cfg.model,
                        dtype=None if cfg.dtype == "auto" else cfg.dtype, chunk_size=cfg.chunk_size,
                        memory_limit=limit, prompt=cfg.prompt, device=cfg.device)


def early_prompt(cfg: BenchConfig, lm: Any = None, backend: Backend | None = None, out: Path | None = None) -> str:
    """``cfg.prompt`` made concrete before the model loads, so that a sweep asked with ``auto`` and one asked
    with the format it resolves to are the same sweep (sweep.json holds the concrete format): from a loaded
    model or a given backend, from the format table for a packaged model (local backend), else, when
    ``out`` holds cells, provisionally the format they were made with (:func:`settle_prompt` checks it once
    the backend is up); else unchanged (auto)."""
    if not is_auto(cfg.prompt):
        return cfg.prompt
    if lm is not None:
        return resolve_format(cfg.prompt, lm.info.name, lm.info.chat_template)
    if backend is not None:
        return resolve_format(cfg.prompt, backend.model_name, has_chat_template(backend.tokenizer))
    known = resolve_by_name(cfg.prompt, cfg.model) if cfg.backend.strip() == "local" else None
    return known or (stored_prompt(out) if out is not None else None) or cfg.prompt


def stored_prompt(out: Path) -> str | None:
    """The concrete prompt format the cells under ``out`` were made with (sweep.json, else config.json)."""
    if not has_cells(out / "cells"):
        return None
    settings = read_json(out / "sweep.json")
    settings = settings.get("settings") if isinstance(settings, dict) else None
    found = settings.get("prompt") if isinstance(settings, dict) else None
    if found is None:
        config = read_json(out / "config.json")
        found = config.get("prompt") if isinstance(config, dict) else None
    try:
        return found if isinstance(found, str) and not is_auto(found) else None
    except LongreachError:
        return None


def settle_prompt(out: Path, cfg: BenchConfig, asked: str, backend: Backend) -> BenchConfig:
    """``cfg`` with the concrete format ``asked`` means for ``backend``'s model; a one-line error when the
    provisional format :func:`early_prompt` took from the folder is another one."""
    resolved = resolve_format(asked, backend.model_name, has_chat_template(backend.tokenizer))
    if resolved == cfg.prompt:
        return cfg
    if not is_auto(cfg.prompt):
        raise BenchError(f"{out} holds cells made with prompt={cfg.prompt!r}; this run asks for "
                         f"prompt={resolved!r} ({asked} for {backend.model_name}), and the two would mix: give a "
                         f"new --out, or the same settings")
    cfg = with_prompt(cfg, resolved)
    check_settings(out, cfg)  # the folder had no cells: it records the concrete format
    return cfg


def with_prompt(cfg: BenchConfig, prompt: str) -> BenchConfig:
    return cfg if prompt == cfg.prompt else cfg.model_copy(update={"prompt": prompt})


def write_config(out: Path, cfg: BenchConfig, backend: Backend, model_key: str | None = None) -> None:
    """``DIR/config.json``: this run's sweep, and ``runs``: the command, git commit and date of every
    distinct run into this folder (a folder filled by several runs, e.g. more methods added later, keeps
    how each part was made; a resumed command keeps its first date unless it resumes on another machine,
    which is recorded as a run of its own). A corrupt file starts a new list."""
    from .store import git_hash

    path = out / "config.json"
    with write_lock(out):
        old = read_json(path)
        runs = old.get("runs") if isinstance(old, dict) else None
        runs = [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []
        command = command_line(cfg)
        machine = machine_name()
        if not any(r.get("command") == command and r.get("machine", machine) == machine for r in runs):
            runs.append({"command": command, "git": git_hash(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "machine": machine})
        atomic_write(path, json.dumps({**cfg.model_dump(), "model_name": backend.model_name,
                                       "model_key": model_key or backend.model_name,
                                       "backend_info": backend.describe(), "runs": runs},
                                      indent=1, default=str))


def run_bench(cfg: BenchConfig, lm: Any = None, progress: bool = True, backend: Backend | None = None) -> SweepStats:
    """Run (or resume) a sweep; ``lm`` = an already loaded model for the local backend (tests, API);
    ``backend`` = a ready backend instead of ``cfg.backend`` (e.g. a reference system a benchmark script
    compares with: its cells go under its own ``model_name``).

    The folder is locked for the run (a second unsharded run on it stops with a one-line error naming
    the holder; shards share it, each cell locked by the process that runs it); the sweep's settings and
    the model's identity are checked against ``DIR/sweep.json`` before anything runs
    (:mod:`longreach.bench.identity`)."""
    if cfg.executor == "ray" and (lm is not None or backend is not None):
        raise BenchError("the ray executor loads the model inside each worker from the config's model; "
                         "pass the model name instead of a loaded model or backend, or use the local executor")
    out = Path(cfg.out)
    make_dirs(out)
    sharded = cfg.shard != "0/1"
    with FolderLock(out / ".lock", f"longreach bench --shard {cfg.shard}", shared=sharded, conflict=str(out)):
        asked = cfg.prompt
        cfg = with_prompt(cfg, early_prompt(cfg, lm, backend, out))  # auto -> concrete when known without loading
        check_settings(out, cfg)  # before the model loads: a changed setting is a one-line error
        check_methods(out, [Plan.from_spec(m) for m in cfg.methods])  # and a changed method default
        given = backend is not None
        backend = backend if given else sweep_backend(cfg, lm)
        cfg = settle_prompt(out, cfg, asked, backend)
        if hasattr(backend, "prompt"):
            backend.prompt = cfg.prompt  # what the backend builds, sizes and records: the concrete format
        PROMPT_FORMAT.set(cfg.prompt)
        model = model_id(cfg, backend, lm=lm, given=given)
        check_model(out, model)
        cells = plan_cells(cfg, model.key)
        write_config(out, cfg, backend, model.key)
        if cfg.executor == "ray":
            from .ray_executor import run_ray

            del backend  # each Ray task builds its own; the driver keeps no model
            return run_ray(cfg, cells, out, progress=progress)
        total = sum(len(c.sample_plan(cfg)) for c in cells)
        already = sum(len(c.sample_plan(cfg)) if finished_on_disk(c, cfg, out)
                      else len(read_done(c.folder(out) / "samples.jsonl", repair=False)) for c in cells)
        stats = SweepStats()
        with tqdm(total=total, initial=already, unit="sample", desc="bench", disable=not progress,
                  dynamic_ncols=True) as bar:
            for cell in cells:
                bar.set_postfix_str(f"{cell.method} {cell.task.spec} {format_length(cell.length)}", refresh=False)
                run_cell(cell, cfg, backend, out, bar, stats)
        from .store import write_aggregates

        write_aggregates(out)
    return stats
