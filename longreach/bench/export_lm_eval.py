"""Export generated tasks to lm-evaluation-harness: ``longreach export-tasks --format lm-eval DIR``.

Per task x length the export writes the generated samples as a local JSONL data file and a task YAML that
lm-eval reads with ``--include_path DIR``; one ``utils.py`` whose ``process_results`` scores each answer
with the task's own scorer through longreach (so the scores equal a ``longreach bench`` cell's); one group
YAML over every exported task and one per length::

    DIR/longreach-export.json          what was exported: command, tokenizer, tasks, samples, skipped cells
    DIR/utils.py                       process_results -> longreach.bench.export_lm_eval.score_doc
    DIR/<group>.yaml                   group over every task below (mean score, weighted by samples)
    DIR/<group>_<length>.yaml          group over the tasks of one length
    DIR/<group>_<task>_<length>.yaml   one lm-eval task: generate_until, doc_to_text: prompt
    DIR/data/<group>_<task>_<length>.jsonl

Each prompt is the exact text the harness feeds with ``--prompt plain`` (document, question, answer prefix,
no chat template), sized with the tokenizer of ``--model`` to the length (answer budget included), never
truncated. The samples are the sweep's own: same seeds (``seed + 1000 * depth_index + sample``), same
depths, and the same on-disk sample cache as ``longreach bench --prompt plain`` with that tokenizer.
Log-likelihood tasks (``ppl``) have no generate_until form, and tasks asked twice per sample (``beliefs``:
before and after the text) need two requests: neither is exported.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..textio import shown
from ..units import format_length
from .task import PROMPT_FORMAT, BenchError, Sample, SampleRefused, Task, make_task

FORMATS = ("lm-eval",)
MANIFEST = "longreach-export.json"
GROUP_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: The end-of-turn tokens the local engine also stops at (longreach.engine.eos_ids), when in the vocabulary.
_END_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|endoftext|>")

UTILS_PY = '''"""Written by `longreach export-tasks --format lm-eval`: each answer is scored by the longreach task's own
scorer (longreach must be installed where lm-eval runs)."""

from longreach.bench.export_lm_eval import score_doc


def process_results(doc, results):
    return {"score": score_doc(doc, results[0])}
'''


@dataclasses.dataclass
class ExportResult:
    folder: Path
    group: str
    tasks: list[str]  # lm-eval task names written
    samples: int  # docs written over all tasks
    refused: int  # samples a task refused to build (e.g. a user's file row too long): left out
    skipped: list[str]  # "task at length: reason" for cells not exported
    lengths: list[int]  # the lengths asked

    def lm_eval_command(self, model: str = "MODEL", max_length: int | None = None) -> str:
        length = f",max_length={max_length}" if max_length else ""
        return (f"lm_eval --model hf --model_args pretrained={model}{length} --include_path {self.folder} "
                f"--tasks {self.group}")


def lm_eval_name(group: str, spec: str, length: int) -> str:
    """``longreach``, ``niah:haystack=noise``, 4096 -> ``longreach_niah_haystack_noise_4k`` (a long spec,
    e.g. one naming a file, is cut and gets a hash of the whole spec)."""
    stem = re.sub(r"[^a-z0-9]+", "_", spec.lower()).strip("_") or "task"
    if len(stem) > 48:
        stem = stem[:39] + "_" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    return f"{group}_{stem}_{format_length(length).lower()}"


def stop_strings(tokenizer: Any) -> list[str]:
    """The text of the tokenizer's EOS and of the end-of-turn tokens the local engine stops at."""
    out: list[str] = []
    eos = getattr(tokenizer, "eos_token", None)
    if isinstance(eos, str) and eos:
        out.append(eos)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    out += [t for t in _END_TOKENS if t in vocab and t not in out]
    return out


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=120)


def _prepare(folder: Path) -> None:
    """An empty or new folder, or one holding an earlier export (whose files are removed first)."""
    if folder.exists() and not folder.is_dir():
        raise BenchError(f"{shown(folder)} is a file; give a folder for the export")
    if not folder.exists():
        folder.mkdir(parents=True)
        return
    manifest = folder / MANIFEST
    if not manifest.exists():
        if any(folder.iterdir()):
            raise BenchError(f"{shown(folder)} is not empty and holds no earlier export ({MANIFEST}); give a new "
                             "or empty folder")
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
        files = [str(f) for f in old["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchError(f"{shown(manifest)} is unreadable; remove the folder's earlier export by hand") from None
    for name in files:
        path = (folder / name).resolve()
        if folder.resolve() in path.parents and path.is_file():  # only the earlier export's own files
            path.unlink()
    manifest.unlink()


def export_lm_eval(out: str | Path, tokenizer: Any, tasks: Any = None, lengths: Any = None, depths: Any = None,
                   samples: int | None = None, seed: int | None = None, model: str | None = None,
                   group: str = "longreach") -> ExportResult:
    """Write the lm-eval export of ``tasks`` x ``lengths`` into ``out`` (see the module docstring).

    ``tasks``, ``lengths``, ``depths``, ``samples``, ``seed``: as ``longreach bench`` takes them (same
    defaults, same validation); ``tokenizer``: the evaluated model's, sizing every prompt; ``model``: its
    name, recorded in the YAML metadata. A (task, length) that cannot be built (too short) is skipped and
    listed; a sample a task refuses is left out and counted."""
    from .cache import cached_sample
    from .runner import Cell, load_config, task_of

    if not GROUP_RE.match(group):
        raise BenchError(f"bad group name {group!r}: a lower-case letter, then letters, digits or '_' (<= 40)")
    cfg = load_config(None, {"tasks": tasks, "lengths": lengths, "depths": depths, "samples": samples,
                             "seed": seed, "model": model})
    folder = Path(out)
    task_objs: list[Task] = []
    skipped: list[str] = []
    for item in cfg.tasks:
        task = task_of(item)
        if task.kind != "generate":
            skipped.append(f"{task.spec}: a log-likelihood task (no generate_until form); not exported")
            continue
        if type(task).baseline is not Task.baseline:  # e.g. beliefs: asked with and without the text
            skipped.append(f"{task.spec}: needs two requests per sample (a baseline); not exported")
            continue
        task_objs.append(task)
    if not task_objs:
        raise BenchError("nothing to export: " + "; ".join(skipped))
    names = {(t.spec, n): lm_eval_name(group, t.spec, n) for t in task_objs for n in cfg.lengths}
    if len(set(names.values())) < len(names):
        raise BenchError("two task specs give the same lm-eval task name; export them in separate runs")

    _prepare(folder)
    (folder / "data").mkdir(exist_ok=True)
    written: list[str] = []
    by_length: dict[int, list[str]] = {}
    total = refused = 0
    stops = stop_strings(tokenizer)
    token = PROMPT_FORMAT.set("plain")
    try:
        for task in task_objs:
            for length in cfg.lengths:
                name = names[(task.spec, length)]
                try:
                    docs, n_refused = _docs(task, Cell(cfg.model, "none", task, length), cfg, tokenizer, cached_sample)
                except BenchError as exc:  # e.g. a length too short for the task
                    skipped.append(f"{task.spec} at {format_length(length)}: {exc}")
                    continue
                refused += n_refused
                if not docs:
                    skipped.append(f"{task.spec} at {format_length(length)}: every sample was refused")
                    continue
                data = folder / "data" / f"{name}.jsonl"
                data.write_text("".join(json.dumps(d, ensure_ascii=True) + "\n" for d in docs), encoding="ascii")
                cfg_yaml = _task_yaml(name, task, length, data.resolve(), stops, cfg.model)
                (folder / f"{name}.yaml").write_text(cfg_yaml, encoding="utf-8")
                written += [f"{name}.yaml", f"data/{name}.jsonl"]
                by_length.setdefault(length, []).append(name)
                total += len(docs)
    finally:
        PROMPT_FORMAT.reset(token)
    if not by_length:
        raise BenchError("nothing exported: " + "; ".join(skipped))

    tasks_written = [n for length in cfg.lengths for n in by_length.get(length, [])]
    meta = {"version": 1, "longreach_tokenizer": cfg.model, "longreach_prompt": "plain"}
    agg = [{"metric": "score", "aggregation": "mean", "weight_by_size": True}]
    (folder / f"{group}.yaml").write_text(_yaml({"group": group, "task": tasks_written,
                                                 "aggregate_metric_list": agg, "metadata": meta}))
    written.append(f"{group}.yaml")
    for length, members in by_length.items():
        sub = f"{group}_{format_length(length).lower()}"
        (folder / f"{sub}.yaml").write_text(_yaml({"group": sub, "task": members, "aggregate_metric_list": agg,
                                                   "metadata": meta}))
        written.append(f"{sub}.yaml")
    (folder / "utils.py").write_text(UTILS_PY)
    written.append("utils.py")
    from .. import __version__

    manifest = {"format": "lm-eval", "longreach": __version__, "tokenizer": cfg.model, "prompt": "plain",
                "group": group, "tasks": tasks_written, "samples": total, "refused": refused, "skipped": skipped,
                "seed": cfg.seed, "depths": cfg.depths, "samples_per_depth": cfg.samples,
                "lengths": cfg.lengths, "files": written}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return ExportResult(folder, group, tasks_written, total, refused, skipped, list(cfg.lengths))


def _docs(task: Task, cell: Any, cfg: Any, tokenizer: Any, cached_sample: Any) -> tuple[list[dict[str, Any]], int]:
    from ..prompt import build_prompt

    docs, refused = [], 0
    params = json.dumps(task.params())
    for sid, seed, depth in cell.sample_plan(cfg):
        try:
            sample = cached_sample(task, tokenizer, cell.length, seed, depth)
        except SampleRefused:
            refused += 1
            continue
        prompt = build_prompt(tokenizer, sample.context, sample.question, sample.answer_prefix, "plain")
        docs.append({"id": sid, "task": task.name, "task_params": params, "task_spec": task.spec,
                     "task_version": task.version, "length": cell.length, "seed": seed, "depth": depth,
                     "tokens": sample.meta["tokens"], "prompt": prompt, "target": " | ".join(sample.references),
                     "sample": json.dumps(sample.as_dict(), ensure_ascii=True)})
    return docs, refused


def _task_yaml(name: str, task: Task, length: int, data: Path, stops: list[str], model: str) -> str:
    cfg = {
        "task": name,
        "task_alias": f"{task.spec} @ {format_length(length)}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "doc_to_text": "prompt",  # a field name: lm-eval returns the text as is (no template rendering)
        "doc_to_target": "target",
        "generation_kwargs": {"until": stops, "max_gen_toks": task.max_new_tokens, "do_sample": False,
                              "temperature": 0.0},
        "metric_list": [{"metric": "score", "aggregation": "mean", "higher_is_better": task.higher_is_better}],
        "metadata": {"version": task.version, "longreach_task": task.spec, "longreach_family": task.family,
                     "longreach_length": length, "longreach_tokenizer": model, "longreach_prompt": "plain"},
    }
    return _yaml(cfg) + "process_results: !function utils.process_results\n"


# ------------------------------------------------------------------------------------------- scoring
@functools.lru_cache(maxsize=64)
def _task(name: str, params: str) -> Task:
    return make_task(name, **json.loads(params))


def score_doc(doc: dict[str, Any], prediction: Any) -> float:
    """The task's own score of ``prediction`` for an exported doc (what lm-eval's ``process_results`` calls);
    the prediction is stripped as the local engine's answers are."""
    task = _task(doc["task"], doc["task_params"])
    if task.version != doc["task_version"]:
        raise BenchError(f"{doc['task_spec']}: exported with task version {doc['task_version']}, but this longreach "
                         f"scores version {task.version}; export the task again")
    sample = Sample.from_dict(json.loads(doc["sample"]))
    text = prediction if isinstance(prediction, str) else "" if prediction is None else str(prediction)
    return float(task.score(sample, text.strip()))


def cmd_export_tasks(args: Any) -> int:
    """``longreach export-tasks --format lm-eval DIR``."""
    from ..models import DEFAULT_MODEL, load_tokenizer

    if args.format not in FORMATS:
        raise BenchError(f"unknown export format {args.format!r}; valid: {', '.join(FORMATS)}")
    model = args.model or DEFAULT_MODEL
    result = export_lm_eval(args.dir, load_tokenizer(model), tasks=args.tasks, lengths=args.lengths,
                            depths=args.depths, samples=args.samples, seed=args.seed, model=model,
                            group=args.group)
    print(f"{result.folder}: {len(result.tasks)} lm-eval tasks, {result.samples} samples (group {result.group!r}; "
          f"prompts sized with the {model} tokenizer, --prompt plain)")
    for line in result.skipped:
        print(f"skipped: {line}")
    if result.refused:
        print(f"left out: {result.refused} samples a task refused to build")
    print(f"run: {result.lm_eval_command(max_length=max(result.lengths))}")
    return 0


__all__ = ["FORMATS", "ExportResult", "cmd_export_tasks", "export_lm_eval", "lm_eval_name", "score_doc",
           "stop_strings"]
