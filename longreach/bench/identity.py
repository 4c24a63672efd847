"""What a results folder's cells were made with, so that a resumed or extended sweep never mixes two.

``DIR/sweep.json`` holds the fingerprint of a results folder:

- ``settings``: what shapes every cell's samples and answers but is not in a cell's folder name: the
  depths (as the list of fractions), seed, samples per depth, prompt format, ``decode_tokens``,
  ``chunk_size``, ``query_agnostic`` (questions per context; a folder that predates it: 0) and the
  prompt-building version. A run that asks for other settings stops with a one-line error naming them
  before anything loads (give a new ``--out``, or the same settings). Methods, tasks
  with their parameters (the task spec) and lengths are folder names: adding some extends the sweep.
  ``samples`` may grow: sample ``s`` of depth ``j`` has the id ``d{j}-s{s}`` and seed ``seed + 1000 j + s``
  whatever the count, so a larger count keeps every finished sample and adds the next ones to each cell
  (a smaller count would drop some, and stops).
  ``memory_limit`` is left out: it only decides memory refusals, which are re-checked on every run;
  ``device`` and ``executor`` / ``shard`` change where cells run, not what they hold.
- ``methods``: every method spec's full parameters, defaults included (``self-extend`` ->
  ``{"self-extend": {"window": null, "group": null, "target": null, "dynamic": true}}``). A spec names its
  cells' folder but omits defaults, so a new longreach whose default changed would otherwise resume old
  cells under new meaning; a spec whose parameters differ from the stored ones, while cells of it exist,
  stops with a one-line error naming the parameter (a folder that predates this record takes the current
  parameters).
- ``models``: the identity of every model folder under ``cells/``: the backend, the model, and for the
  local backend the resolved dtype plus, for a known name, its package and version; for a folder or a
  ``.gguf`` file, the resolved path and a content hash (file names, sizes, and the first and last MiB of
  each file); for an already loaded model, a digest of its parameters. A model given as a path gets
  ``<name>-<hash of path and content>`` as its folder, so two folders with the same basename (or a folder
  whose weights changed) never share cells; any other identity change under one folder name is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .files import atomic_write, read_json, write_lock
from .task import BenchError

log = logging.getLogger("longreach")

#: sweep.json's layout; bump when its meaning changes
FORMAT = 1
MIB = 1 << 20
_MAX_FILES = 10_000  # of a model folder (a Hugging Face folder has a dozen)


@dataclasses.dataclass(frozen=True)
class ModelId:
    """A model as its cells name it (``key``: the model's name, or ``<name>-<hash>`` for a path; its folder
    is ``cells/<slug(key)>``) and what it is (``identity``, compared on resume)."""

    key: str
    identity: dict[str, Any]


# ----------------------------------------------------------------------------------------- settings
def sweep_settings(cfg: Any) -> dict[str, Any]:
    """The settings of ``cfg`` (a BenchConfig) that every cell's content depends on."""
    from .cache import FORMAT_VERSION

    return {"depths": [float(d) for d in cfg.depth_list()], "seed": cfg.seed, "samples": cfg.samples,
            "prompt": cfg.prompt, "decode_tokens": cfg.decode_tokens, "chunk_size": cfg.chunk_size,
            "prompt_version": FORMAT_VERSION, "query_agnostic": cfg.query_agnostic}


#: settings added after folders already existed: a folder that does not record one was made with this value
LATER_SETTINGS = {"query_agnostic": 0}


def _legacy_settings(out: Path) -> dict[str, Any] | None:
    """The settings of a folder written before sweep.json existed, from its config.json."""
    config = read_json(out / "config.json")
    if not isinstance(config, dict):
        return None
    found: dict[str, Any] = {k: config[k] for k in ("seed", "samples", "prompt", "decode_tokens", "chunk_size")
                             if k in config}
    depths = config.get("depths")
    if isinstance(depths, int) and not isinstance(depths, bool) and 1 <= depths <= 10_000:
        found["depths"] = [0.5] if depths == 1 else [round(i / (depths - 1), 4) for i in range(depths)]
    elif isinstance(depths, list):
        found["depths"] = depths
    return found


def has_cells(folder: Path) -> bool:
    """Whether any cell under ``folder`` (``DIR/cells`` or one model's) holds a sample or metrics file."""
    folder = Path(folder)
    return any(True for _ in folder.glob("**/samples.jsonl")) or any(True for _ in folder.glob("**/metrics.json"))


def _grows(was: Any, now: Any) -> bool:
    """Whether a stored ``samples`` count ``was`` extends to ``now`` (every old sample keeps its id and seed)."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in (was, now)) and 1 <= was <= now


def _fmt(v: Any) -> str:
    return _cut(json.dumps(v) if isinstance(v, (list, dict)) else repr(v))


def _cut(text: str) -> str:
    """``text`` shortened to 60 characters for a one-line error."""
    return text if len(text) <= 60 else text[:57] + "..."


def _stored(out: Path) -> dict[str, Any]:
    data = read_json(out / "sweep.json")
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        return {}
    if not isinstance(data.get("models"), dict):
        data["models"] = {}
    return data


def check_settings(out: Path, cfg: Any) -> None:
    """Record ``cfg``'s settings in ``out/sweep.json``, or stop with a one-line error when the folder's
    cells were made with other settings (a folder without cells takes the new ones)."""
    out = Path(out)
    current = sweep_settings(cfg)
    with write_lock(out):
        data = _stored(out)
        stored = data.get("settings") or _legacy_settings(out) or {}
        stored = {**LATER_SETTINGS, **stored} if stored else stored
        changed = [k for k in current if k in stored and stored[k] != current[k]
                   and not (k == "samples" and _grows(stored[k], current[k]))]
        if changed and has_cells(out / "cells"):
            was = ", ".join(f"{k}={_fmt(stored[k])}" for k in changed)
            now = ", ".join(f"{k}={_fmt(current[k])}" for k in changed)
            raise BenchError(f"{out} holds cells made with {was}; this run asks for {now}, and the two would mix: "
                             f"give a new --out, or the same settings")
        if data.get("settings") != current:
            _write(out, {**data, "settings": current})


def check_model(out: Path, model: ModelId) -> None:
    """Record ``model``'s identity in ``out/sweep.json``, or stop when its folder under ``cells/`` holds
    cells of another model (same name, other package version, dtype, weights...)."""
    from .runner import slug

    out = Path(out)
    with write_lock(out):
        data = _stored(out)
        models = dict(data.get("models") or {})
        stored = models.get(model.key)
        if isinstance(stored, dict) and stored != model.identity and has_cells(out / "cells" / slug(model.key)):
            changed = sorted(k for k in set(stored) | set(model.identity) if stored.get(k) != model.identity.get(k))
            was = ", ".join(f"{k}={_fmt(stored.get(k))}" for k in changed)
            now = ", ".join(f"{k}={_fmt(model.identity.get(k))}" for k in changed)
            raise BenchError(f"{out}/cells/{slug(model.key)} holds cells of a model with {was}; this run's has {now}: "
                             f"give a new --out (cells of two models never mix)")
        if stored != model.identity:
            models[model.key] = model.identity
            _write(out, {**data, "models": models})


def method_params(plan: Any) -> dict[str, dict[str, Any]]:
    """Every method of ``plan`` (a :class:`longreach.spec.Plan`) with all its parameters, defaults included,
    as JSON holds them."""
    return json.loads(json.dumps({m.name: dataclasses.asdict(m) for m in plan.methods}, default=str))


def check_methods(out: Path, plans: list[Any]) -> None:
    """Record every plan's full parameters in ``out/sweep.json`` under its spec, or stop when cells of a spec
    exist that were made when the spec meant other parameters (a changed default)."""
    from .runner import slug

    out = Path(out)
    with write_lock(out):
        data = _stored(out)
        methods = dict(data.get("methods") or {})
        changed_any = False
        for plan in plans:
            current, stored = method_params(plan), methods.get(plan.spec)
            if stored == current:
                continue
            folders = [p for p in (out / "cells").glob(f"*/{slug(plan.spec)}") if has_cells(p)]
            if isinstance(stored, dict) and folders:
                was, now = _flat(stored), _flat(current)
                diff = sorted(k for k in was.keys() | now.keys() if was.get(k, _ABSENT) != now.get(k, _ABSENT))
                raise BenchError(f"{out} holds cells of {plan.spec!r} made when it meant "
                                 f"{', '.join(f'{k}={_param(was.get(k, _ABSENT))}' for k in diff)}; it now means "
                                 f"{', '.join(f'{k}={_param(now.get(k, _ABSENT))}' for k in diff)} (a changed "
                                 f"default), and the two would mix: give a new --out, or remove {folders[0]} to run "
                                 f"them again")
            methods[plan.spec] = current
            changed_any = True
        if changed_any:
            _write(out, {**data, "methods": methods})


_ABSENT = "<absent>"


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    """``{"self-extend": {"dynamic": true}}`` -> ``{"self-extend.dynamic": true}``."""
    return {f"{name}.{k}": v for name, fields in params.items() if isinstance(fields, dict) for k, v in fields.items()}


def _param(v: Any) -> str:
    """A parameter value as a spec spells it (``true``, ``null``, ``2048``, ``bound``)."""
    return _cut(v if isinstance(v, str) else json.dumps(v))


def _write(out: Path, data: dict[str, Any]) -> None:
    """sweep.json with every record it holds (settings, methods, models)."""
    body = {"format": FORMAT, "settings": data.get("settings"), "methods": data.get("methods") or {},
            "models": data.get("models") or {}}
    atomic_write(out / "sweep.json", json.dumps(body, indent=1))


# ------------------------------------------------------------------------------------------- models
_CONTENT: dict[tuple[Any, ...], str] = {}


def content_hash(path: Path) -> str:
    """A fast hash of a model file or folder: every file's relative name and size, and its first and
    last MiB (all of a file up to 2 MiB: config.json, the tokenizer). Hidden files are left out."""
    path = Path(path)
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        files = files[:_MAX_FILES]
    stats = tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in files)
    memo = (str(path), stats)
    if memo in _CONTENT:
        return _CONTENT[memo]
    h = hashlib.sha256()
    for (rel, p), (_, size, _) in zip(files, stats):
        h.update(f"{rel}\0{size}\0".encode("utf-8", "surrogateescape"))
        with open(p, "rb") as f:
            if size <= 2 * MIB:
                h.update(f.read())
            else:
                h.update(f.read(MIB))
                f.seek(-MIB, 2)
                h.update(f.read(MIB))
    _CONTENT[memo] = h.hexdigest()[:32]
    return _CONTENT[memo]


def weights_digest(model: Any) -> str:
    """A digest of a loaded model's parameters: names, shapes, dtypes and their first and last values."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}\0{tuple(p.shape)}\0{p.dtype}\0".encode())
        h.update(flat[:32].float().cpu().numpy().tobytes())
        h.update(flat[-32:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def spec_identity(spec: str) -> dict[str, Any]:
    """What a model spec names: a known model (package + version) or a path (resolved + content hash)."""
    from importlib import metadata

    from ..models import KNOWN_MODELS

    if spec in KNOWN_MODELS:
        package = KNOWN_MODELS[spec].package
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = None
        return {"model": spec, "package": package, "version": version}
    path = Path(spec).expanduser()
    if path.exists():
        try:
            resolved = path.resolve()
            return {"model": resolved.stem if resolved.is_file() else resolved.name, "path": str(resolved),
                    "content": content_hash(resolved)}
        except OSError as exc:
            raise BenchError(f"cannot read the model at {spec}: {exc.strerror}; check the path") from None
    return {"model": spec}


def model_id(cfg: Any, backend: Any, lm: Any = None, given: bool = False) -> ModelId:
    """The identity of the model a sweep's cells are for (``given``: the caller built ``backend``)."""
    from .runner import slug

    name = str(backend.model_name)
    ident: dict[str, Any] = {"backend": backend.name, "model": name}
    key = name  # the cells' "model" (their folder: slug(key))
    if given:
        return ModelId(key, ident)
    if backend.name == "local":
        ident["dtype"] = str(backend.describe().get("dtype"))
        if lm is not None:
            ident["weights"] = weights_digest(backend.lm.model)
        else:
            spec = spec_identity(cfg.model)
            ident.update({k: v for k, v in spec.items() if k != "model"})
            if "path" in spec:
                key = _path_key(slug(name), spec)
    elif backend.name == "openai":
        spec = spec_identity(cfg.model)  # the tokenizer that sizes the prompts
        ident["tokenizer"] = spec
    return ModelId(key, ident)


def _path_key(key: str, spec: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{spec['path']}\0{spec['content']}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"{key[:60]}-{digest[:8]}"
