"""ICL methods (issue 17 item 4): accuracy vs prompt tokens on many-label-icl for plain many-shot prompts,
in-context vectors (``icv``) and DynaICL (``dynaicl``).

Rows (one model, one length, the same queries in every row: many-label-icl's seeds fix the labels and the
test sentence whatever the number of shots):

  none   many-label-icl:shots=N for N in --shots (default 4, 16, 64) and all-that-fit (shots=0)
  icv    icv:strength=S on the all-that-fit document (the vector from every demonstration, none in the prompt)
  dynaicl  dynaicl:budget=B on the all-that-fit document (the controller picks 0/4/16/64/all per query)

The rows run as two resumable ``longreach bench`` sweeps under ``PREFIX/plain`` and ``PREFIX/steered``
(re-running the command skips finished cells and samples); this script then summarises them. Before the
sweeps, when the model has no fitted DynaICL controller yet (``$LONGREACH_CACHE/dynaicl/<model>.json``), a
calibration run fits one on --calibrate-samples generated many-label-icl samples (seeds 10000+, never the
evaluated ones): each answered with 0, 4, 16, 64, all demonstrations until right. A cost estimate is
printed before anything runs.

    .venv/bin/python benchmarks/icl_methods.py                          # smollm2-135m at 4k, 20 samples
    .venv/bin/python benchmarks/icl_methods.py --samples 50 --strength 0.1,0.5
    .venv/bin/python benchmarks/icl_methods.py --quick                  # toy: 1 sample at 512 tokens (temp folder)

Writes PREFIX.{json,md,png}, PREFIX = benchmarks/results/icl-methods by default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _length(text: str) -> int:
    from longreach.units import parse_length

    return parse_length(text)


def task_spec(labels: int, shots: int) -> str:
    return f"many-label-icl:labels={labels}" + (f",shots={shots}" if shots else "")


def prompt_tokens_of(record: dict[str, Any]) -> int:
    """The prompt the answer was decoded from (icv / dynaicl: their own; a plain read: its input)."""
    reader = record.get("reader") or {}
    for key in ("icv", "dynaicl"):
        if key in reader and "prompt_tokens" in reader[key]:
            return int(reader[key]["prompt_tokens"])
    return int(record.get("input_tokens") or 0)


def plan_rows(args: argparse.Namespace, tokenizer: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows that fit the length (with one sample's prompt tokens, for the estimate) and the skipped ones."""
    from longreach.bench.task import BenchError, make_task, prompt_tokens

    rows, skipped = [], []
    for shots in [*args.shots, 0]:
        spec = task_spec(args.labels, shots)
        try:
            sample = make_task(spec).generate(tokenizer, args.length, seed=args.seed)
        except BenchError as exc:
            skipped.append(f"{spec}: {exc}")
            continue
        rows.append({"method": "none", "task": spec, "tokens": prompt_tokens(tokenizer, sample),
                     "demos": sample.meta["demos"]})
    full = next((r for r in rows if r["task"] == task_spec(args.labels, 0)), None)
    if full is not None:
        for s in args.strength:
            rows.append({"method": f"icv:strength={s:g}", "task": full["task"], "tokens": 200 + 2 * full["tokens"],
                         "demos": 0})
        rows.append({"method": f"dynaicl:budget={args.budget}", "task": full["task"],
                     "tokens": min(args.budget, full["tokens"]), "demos": None})
    return rows, skipped


def calibrate_if_needed(args: argparse.Namespace, lm: Any, prompt: str) -> dict[str, Any]:
    from longreach.bench.task import make_task
    from longreach.engine import Engine
    from longreach.readers.dynaicl import CalibrationSample, calibrate, controller_path, load_controller

    have = load_controller(lm.info.name)
    if have is not None and not args.recalibrate and not args.quick:
        return {"controller": str(controller_path(lm.info.name)), "samples": have.samples, "counts": have.counts,
                "fitted_now": False}
    task = make_task(task_spec(args.labels, 0))
    samples, originals = [], {}
    for i in range(args.calibrate_samples):
        s = task.generate(lm.tokenizer, args.length, seed=10_000 + i)
        cs = CalibrationSample(s.context, s.question, s.answer_prefix, s.references, task.max_new_tokens)
        samples.append(cs)
        originals[id(cs)] = s
    def judge(cs: CalibrationSample, count: int, prediction: str) -> bool:
        return task.score(originals[id(cs)], prediction) > 0

    t0 = time.perf_counter()
    controller = calibrate(Engine.for_model(lm), samples, budget=args.budget, judge=judge, prompt=prompt,
                           save=not args.quick,  # a toy run keeps its controller in memory only
                           progress=lambda i, n: print(f"  calibration {i}/{n} ({time.perf_counter() - t0:.0f} s)",
                                                       flush=True))
    return {"controller": "in memory (--quick)" if args.quick else str(controller_path(lm.info.name)),
            "samples": controller.samples,
            "counts": controller.counts, "fitted_now": True, "seconds": round(time.perf_counter() - t0, 1),
            "saved": not args.quick}


def summarise(folders: list[Path]) -> list[dict[str, Any]]:
    from longreach.bench.store import load_cells, load_samples

    out = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for cell in load_cells(folder):
            recs = [r for r in load_samples(cell) if not r.get("refused")]
            ok = [r for r in recs if not r.get("error")]
            row = {"method": cell["method"], "task": cell.get("task_spec", cell["task"]), "length": cell["length"],
                   "status": cell["status"], "n": len(recs), "errors": len(recs) - len(ok),
                   "accuracy": round(statistics.fmean(r["score"] for r in recs), 4) if recs else None,
                   "prompt_tokens": round(statistics.fmean(prompt_tokens_of(r) for r in ok), 1) if ok else None,
                   "input_tokens": round(statistics.fmean(r.get("input_tokens") or 0 for r in ok), 1) if ok else None,
                   "seconds_per_question": round(statistics.fmean(r["seconds"] for r in ok), 2) if ok else None}
            shots = [r["meta"].get("demos") for r in ok if r["method"] == "none"]
            if shots:
                row["demos"] = round(statistics.fmean(shots), 1)
            dyn = [r["reader"]["dynaicl"] for r in ok if "dynaicl" in (r.get("reader") or {})]
            if dyn:
                row["demos"] = round(statistics.fmean(d["kept"] for d in dyn), 1)
                row["predicted"] = {str(k): sum(d["predicted"] == k for d in dyn) for k in sorted({d["predicted"]
                                                                                                   for d in dyn})}
                row["controller"] = dyn[0]["controller"]
            icv = [r["reader"]["icv"] for r in ok if "icv" in (r.get("reader") or {})]
            if icv:
                row["demos"] = 0
                row["vector_seconds"] = round(statistics.fmean(d["vector_seconds"] for d in icv), 2)
            out.append(row)
    return sorted(out, key=lambda r: (r["method"] != "none", r["method"], r["prompt_tokens"] or 0))


def write_outputs(prefix: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_suffix(".json").write_text(json.dumps({**info, "rows": rows}, indent=1))
    lines = [f"# ICL methods: accuracy vs prompt tokens on many-label-icl ({info['model']}, {info['length']} tokens)",
             "", f"Command: `{info['command']}` (git {info['git']}, {info['date']})  ",
             f"Machine: {info['machine']}; load average {info['load_average']}.  ",
             f"DynaICL controller: {json.dumps(info['calibration'])}", "",
             "| method | task | demos | prompt tokens | input tokens | accuracy | n | s / question | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        notes = []
        if "predicted" in r:
            notes.append("predicted " + ", ".join(f"{'all' if k == '-1' else k}: {v}" for k, v in r["predicted"].items()))
        if "vector_seconds" in r:
            notes.append(f"vector {r['vector_seconds']} s (first question of a document)")
        if r["errors"]:
            notes.append(f"{r['errors']} errors")
        lines.append(f"| {r['method']} | {r['task']} | {r.get('demos', '-')} | {r['prompt_tokens']} | "
                     f"{r['input_tokens']} | {r['accuracy']} | {r['n']} | {r['seconds_per_question']} | "
                     f"{'; '.join(notes)} |")
    lines += ["", "prompt tokens = the prompt the answer is decoded from (icv: preamble + question, no "
              "demonstrations; dynaicl: what it kept). input tokens adds icv's vector passes (once per document)."]
    prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    plain = [r for r in rows if r["method"] == "none" and r["prompt_tokens"]]
    ax.plot([r["prompt_tokens"] for r in plain], [r["accuracy"] for r in plain], "o-", label="many-shot prompt")
    for r in plain:
        ax.annotate(f"{r.get('demos', '')}", (r["prompt_tokens"], r["accuracy"]), textcoords="offset points",
                    xytext=(3, 4), fontsize=7)
    for r in rows:
        if r["method"] != "none" and r["prompt_tokens"]:
            ax.plot([r["prompt_tokens"]], [r["accuracy"]], "s" if r["method"].startswith("icv") else "^",
                    label=r["method"])
    ax.set_xscale("log")
    ax.set_xlabel("prompt tokens (log)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"many-label-icl, {info['model']} at {info['length']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(prefix.with_suffix(".png"), dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--length", type=_length, default=4096)
    p.add_argument("--samples", type=int, default=20, help="questions per row")
    p.add_argument("--labels", type=int, default=20)
    p.add_argument("--shots", default="4,16,64", help="plain many-shot rows besides all-that-fit")
    p.add_argument("--strength", default="0.1", help="icv strengths, comma-separated")
    p.add_argument("--budget", type=int, default=2048, help="dynaicl's prompt-token budget")
    p.add_argument("--calibrate-samples", type=int, default=16)
    p.add_argument("--recalibrate", action="store_true", help="fit the DynaICL controller again")
    p.add_argument("--prompt", default="plain")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tok-per-second", type=float, default=300.0, help="prefill speed assumed by the estimate")
    p.add_argument("--out", type=Path, default=RESULTS / "icl-methods", help="PREFIX of the outputs")
    p.add_argument("--quick", action="store_true", help="toy run: 1 sample at 512 tokens, 4 labels, temp folder")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimate only")
    args = p.parse_args(argv)
    if args.quick:
        args.length, args.samples, args.labels, args.shots = 512, 1, 4, "4"
        args.calibrate_samples, args.budget = min(args.calibrate_samples, 4), min(args.budget, 256)
        args.out = Path(tempfile.mkdtemp(prefix="icl-methods-")) / "icl-methods"
    args.shots = [int(s) for s in str(args.shots).split(",") if s.strip()]
    args.strength = [float(s) for s in str(args.strength).split(",") if s.strip()]
    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    from longreach.bench.runner import BenchConfig, run_bench
    from longreach.bench.store import environment, git_hash
    from longreach.models import load_model
    from longreach.readers.dynaicl import load_controller

    lm = load_model(args.model, dtype=args.dtype)
    rows, skipped = plan_rows(args, lm.tokenizer)
    for s in skipped:
        print(f"skipped (does not fit {args.length} tokens): {s}")
    decode = 12 / 15  # ~12 answer tokens at ~15 tok/s
    per_row = [(r, args.samples * (r["tokens"] / args.tok_per_second + decode)) for r in rows]
    calib = 0.0 if load_controller(lm.info.name) is not None and not (args.recalibrate or args.quick) else (
        args.calibrate_samples * 3 * (min(args.budget, 2 * args.length) / 2 / args.tok_per_second + decode))
    print(f"plan: {len(rows)} rows x {args.samples} samples on {args.model} at {args.length} tokens")
    for r, sec in per_row:
        print(f"  {r['method']:<24} {r['task']:<36} ~{r['tokens']:>6} prompt tokens  ~{sec / 60:.1f} min")
    total = calib + sum(s for _, s in per_row)
    print(f"  calibration ~{calib / 60:.1f} min; total ~{total / 60:.1f} min at {args.tok_per_second:g} prefill tok/s "
          "(finished rows are skipped)", flush=True)
    if args.dry_run:
        return 0
    calibration = calibrate_if_needed(args, lm, args.prompt) if any(r["method"].startswith("dynaicl")
                                                                     for r in rows) else {}
    common = dict(model=args.model, lengths=[args.length], samples=args.samples, seed=args.seed, prompt=args.prompt,
                  dtype=args.dtype, depths=[0.5])
    plain = [r["task"] for r in rows if r["method"] == "none"]
    steered = sorted({r["method"] for r in rows if r["method"] != "none"})
    folders = [args.out / "plain", args.out / "steered"]
    run_bench(BenchConfig(methods=["none"], tasks=plain, out=str(folders[0]), **common), lm=lm)
    if steered:
        run_bench(BenchConfig(methods=steered, tasks=[task_spec(args.labels, 0)], out=str(folders[1]), **common),
                  lm=lm)
    env = environment()
    info = {"model": args.model, "length": args.length, "samples": args.samples, "labels": args.labels,
            "command": command, "git": (git_hash() or "?")[:7],
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}, {env['threads']} threads",
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()), "environment": env,
            "calibration": calibration, "skipped": skipped}
    table = summarise(folders)
    write_outputs(args.out, table, info)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
