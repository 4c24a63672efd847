"""Load test of ``longreach serve``: mixed OpenAI-client traffic, statuses, latency, memory and KV reuse.

    .venv/bin/python benchmarks/serve_load.py                      # the full run (~6-12 min on 2 idle CPU cores)
    .venv/bin/python benchmarks/serve_load.py --quick --out /tmp/serve_load_quick.json   # smoke run (~1-2 min)
    .venv/bin/python benchmarks/serve_load.py --quick --model tiny --out /tmp/q.json     # plumbing only (~1 min)

Starts ``longreach serve --model smollm2-135m`` as a subprocess on a free loopback port (nothing else is
reached), then, in order:

1. warm-up: one short request per method (not counted);
2. KV reuse, alone (no other load): two questions on the same long document (method none, chat, not
   streamed); ratio = seconds of the 2nd / seconds of the 1st (goal <= 0.15: the 2nd skips the document's
   prefill through the server's document KV reuse cache);
3. server RSS "before" (psutil on the server pid) and ``longreach_kv_cache_bytes`` from ``/metrics``;
4. the mixed phase: ``--requests`` requests from ``--clients`` threads (the ``openai`` package, no retries):
   short documents (300-500 tokens of essays from :mod:`longreach.corpus`) and long ones (``Load.long_tokens``
   = 7,400 tokens, several questions each), methods by ``model=NAME@SPEC`` or the body field ``method`` (none, a static
   rope method, kv-int4), chat and completions, streamed or not, greedy or sampled with a seed, and ~10%
   invalid requests that must get a given status (bad spec 400, malformed JSON 400, too long 400, unknown
   model 404, n=2 400). ``--max-queue`` is sized so this load fits (expected: no 429 here);
5. RSS "after" and the KV bytes again: flat = (after - the KV reuse cache's growth) / before <= 1 + tolerance
   (the reuse cache is bounded by ``--kv-reuse-bytes``, so its growth is by design, not a leak);
6. a burst: ``max_running + max_queue + Load.burst_extra`` requests released at once: every one must get 200 or
   429 (with Retry-After), at least one 429;
7. SIGTERM: the server must exit by itself (its exit code is recorded).

``--model tiny`` serves a random-weight tiny Llama (window 4,096, byte tokenizer, no chat template) saved to
a temporary folder: it checks the script and the server's plumbing in seconds on a busy machine; its
latencies and KV-reuse ratio mean nothing (per-request overhead dominates such a model).

Per request it records the kind, the expected and the received status (and OpenAI error code), latency,
time to the first streamed token, token counts and the prompt tokens the server took from its reuse cache.
Long requests are reported as "long (cold)" (no cached tokens: the document's first question under that
method, or one whose entry the bounded reuse cache had evicted) and "long (reused)". Writes a JSON (load, command, versions, machine, git hash, every record) and
prints a table. Costs (this 2-core CPU, smollm2-135m float32): prefill ~320 tok/s at 2k tokens, ~200 tok/s
at 8k; decode ~20-30 tok/s; the defaults are sized to finish in <= 15 minutes (see ``estimate``: printed
before the run). Seconds are wall time of one machine, shared or not: see ``load_average_end`` in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import math
import os
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from longreach.bench.store import environment, git_hash
from longreach.corpus import source_units
from longreach.models import load_tokenizer

ROPE = "yarn:factor=2"  # a static rope method: its cache can be reused across requests
SPECS = ("none", ROPE, "kv-int4")  # kv-int4 (a cache method) never reuses; it reads short documents only
INVALID = ("bad-spec", "malformed-json", "too-long", "unknown-model", "n=2")
EXPECTED_INVALID = {  # kind -> (status, OpenAI error code or None = any)
    "bad-spec": (400, "invalid_method"),
    "malformed-json": (400, None),
    "too-long": (400, "context_length_exceeded"),
    "unknown-model": (404, "model_not_found"),
    "n=2": (400, None),
}
QUESTIONS = ("What is the text mainly about?", "Name one person or thing the text mentions.",
             "What does the author recommend?", "Give one example the author uses.",
             "What would be a good title for it?", "Is the author optimistic? Answer yes or no.")


@dataclasses.dataclass(frozen=True)
class Load:
    """The planned load (``--quick`` shrinks it)."""

    requests: int = 200  # the mixed phase
    clients: int = 8  # concurrent client threads
    short_min: int = 300  # short document tokens, uniform in [short_min, short_max]
    short_max: int = 500
    short_docs: int = 12  # distinct short documents (reused by several requests, as clients do)
    long_tokens: int = 7400  # long documents: smollm2-135m reads 8,192 tokens with method none
    long_docs: int = 2
    long_requests: int = 24  # questions on long documents in the mixed phase
    invalid_fraction: float = 0.1
    stream_fraction: float = 0.3
    sampled_fraction: float = 0.2  # temperature 0.7, top_p 0.9, a seed; the rest greedy
    short_max_tokens: int = 12
    long_max_tokens: int = 8
    max_queue: int = 12  # >= clients - max_running (+ slack for a slot released just after its response)
    burst_extra: int = 8  # the burst sends max_running + max_queue + this many at once
    burst_tokens: int = 300
    kv_reuse_bytes: str = "2GiB"


QUICK = Load(requests=24, clients=4, short_min=260, short_max=320, short_docs=4, long_tokens=1200,
             long_docs=1, long_requests=4, short_max_tokens=6, long_max_tokens=4, max_queue=6, burst_extra=4,
             burst_tokens=120, kv_reuse_bytes="256MiB")


@dataclasses.dataclass
class Job:
    kind: str  # short | long | invalid:<what> | burst | warm-up | reuse-1 | reuse-2
    endpoint: str = "chat"  # chat | completions | raw
    spec: str = "none"
    via_body: bool = False  # the method in the body field "method" instead of model=NAME@SPEC
    doc: int = -1
    question: str = ""
    stream: bool = False
    sampled: bool = False
    seed: int | None = None
    max_tokens: int = 8
    expect: int = 200
    expect_code: str | None = None
    expect_any: tuple[int, ...] = ()  # burst: any of these statuses is as expected


@dataclasses.dataclass
class Record:
    kind: str
    endpoint: str
    spec: str
    stream: bool
    expected: int | str
    got: int | str | None = None  # an HTTP status, or "connection" / "timeout" / "stream-error" / "skipped"
    code: str | None = None  # the OpenAI error code of a refused request
    ok: bool = False
    seconds: float | None = None
    first_token_seconds: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    retry_after: str | None = None
    message: str | None = None  # the error message of an unexpected answer (shortened)


# ------------------------------------------------------------------------------------------ documents
class Docs:
    """Essay text sized in the served model's tokens (its tokenizer only, no weights)."""

    def __init__(self, model: str, seed: int):
        self.tok = load_tokenizer(model)
        self.units, _ = source_units("essays")
        self.rng = random.Random(seed)

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False).input_ids)

    def make(self, tokens: int) -> str:
        """About ``tokens`` tokens (within a sentence) of consecutive essay sentences from a random start."""
        start, out, n = self.rng.randrange(len(self.units)), [], 0
        while n < tokens:
            sentence = self.units[(start + len(out)) % len(self.units)]
            n += self.count(" " + sentence)
            out.append(sentence)
        text = " ".join(out)
        while self.count(text) > tokens and len(out) > 1:  # the per-sentence sum can be off by a few
            out.pop()
            text = " ".join(out)
        return text


def prompt_text(doc: str, question: str) -> str:
    return f"{doc}\n\nQuestion: {question}"


# ------------------------------------------------------------------------------------------ the plan
def long_pairs(load: Load) -> list[tuple[int, str]]:
    """(long document, method) pairs of the mixed phase: every document with none, the first with the rope
    method (each pair's first question is a cold prefill, the others reuse its KV)."""
    return [(d, "none") for d in range(load.long_docs)] + [(0, ROPE)]


def n_invalid_of(load: Load) -> int:
    """Invalid requests in the mixed phase: the fraction asked for, but every kind at least once."""
    return min(load.requests, max(len(INVALID), round(load.requests * load.invalid_fraction)))


def plan_mixed(load: Load, rng: random.Random) -> list[Job]:
    """The mixed phase's jobs, shuffled (seeded)."""
    jobs: list[Job] = []
    n_invalid = n_invalid_of(load)
    for i in range(n_invalid):
        what = INVALID[i % len(INVALID)]
        status, code = EXPECTED_INVALID[what]
        jobs.append(Job(f"invalid:{what}", endpoint="raw" if what == "malformed-json" else rng.choice(
            ["chat", "completions"]), spec="none", doc=i % load.short_docs, question=QUESTIONS[0],
            max_tokens=load.short_max_tokens, expect=status, expect_code=code))
    pairs = long_pairs(load)
    n_long = min(load.long_requests, load.requests - n_invalid)
    for i in range(n_long):
        doc, spec = pairs[i % len(pairs)]
        jobs.append(Job("long", endpoint="chat", spec=spec, via_body=spec != "none" and i % 2 == 1, doc=doc,
                        question=QUESTIONS[(i // len(pairs)) % len(QUESTIONS)], max_tokens=load.long_max_tokens))
    for i in range(load.requests - n_invalid - n_long):
        spec = SPECS[i % len(SPECS)]
        jobs.append(Job("short", endpoint=rng.choice(["chat", "completions"]), spec=spec,
                        via_body=spec != "none" and rng.random() < 0.5, doc=rng.randrange(load.short_docs),
                        question=rng.choice(QUESTIONS), max_tokens=load.short_max_tokens))
    for i, job in enumerate(jobs):
        if job.kind in ("short", "long"):
            job.stream = rng.random() < load.stream_fraction
            job.sampled = rng.random() < load.sampled_fraction
            job.seed = i if job.sampled else None
    rng.shuffle(jobs)
    return jobs


def estimate(load: Load, prefill_short: float = 320.0, prefill_long: float = 200.0, decode: float = 25.0,
             decode_long: float = 15.0, startup: float = 20.0, kv_int4_factor: float = 1.3) -> dict[str, float]:
    """Rough seconds of each phase on this CPU (rates in tokens/s; requests run one at a time)."""
    short = (load.short_min + load.short_max) / 2
    n_invalid = n_invalid_of(load)
    n_long = min(load.long_requests, load.requests - n_invalid)
    n_short = load.requests - n_invalid - n_long
    cold = len(long_pairs(load)) - 1  # (document, method) pairs; one was read in the reuse phase
    long_cold = min(n_long, cold) * load.long_tokens / prefill_long
    long_warm = n_long * (60 / prefill_long + load.long_max_tokens / decode_long + 0.5)  # + the cache copy
    reused = 2 / 3 * max(0, n_short - 2 * load.short_docs)  # none / rope requests on a document seen before
    short_s = ((n_short - reused) * short / prefill_short * (1 + (kv_int4_factor - 1) / 3)
               + reused * 30 / prefill_short + n_short * load.short_max_tokens / decode)
    phases = {
        "startup": startup,
        "warm-up": len(SPECS) * (short / prefill_short + load.short_max_tokens / decode),
        "reuse": load.long_tokens / prefill_long + 2 * load.long_max_tokens / decode_long + 2,
        "mixed": long_cold + long_warm + short_s,
        "burst": (1 + load.max_queue) * (load.burst_tokens / prefill_short + 4 / decode),
    }
    phases["total"] = sum(phases.values())
    return {k: round(v, 1) for k, v in phases.items()}


# ------------------------------------------------------------------------------------------ server
def tiny_model_folder() -> Path:
    """A random-weight tiny Llama (hidden 32, 2 layers, window 4,096) + the byte tokenizer in a temp folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from longreach.bench.backends import byte_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=True)
    folder = Path(tempfile.mkdtemp(prefix="serve_load-tiny-"))
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args: argparse.Namespace, load: Load, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("longreach")
    head = [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from longreach.cli import main; "
                                                                 "sys.exit(main())"]
    return head + ["serve", "--model", args.model_ref, "--host", "127.0.0.1", "--port", str(port),
                   "--max-queue", str(load.max_queue), "--max-running", "1", "--kv-reuse-bytes", load.kv_reuse_bytes,
                   "--request-timeout", str(args.request_timeout)] + shlex.split(args.server_args)


def wait_ready(proc: subprocess.Popen, root: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            status, _, _ = http_get(root, "/health", timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server was not ready within {seconds:.0f} s")


def http_get(root: str, path: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    host, port = root.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def metric(root: str, name: str) -> float | None:
    """The sum of a Prometheus metric's samples (all label sets) in ``GET /metrics``; None if absent."""
    status, _, body = http_get(root, "/metrics")
    if status != 200:
        return None
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$",
                                                      body.decode(), re.MULTILINE)]
    return sum(values) if values else None


def server_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


# ------------------------------------------------------------------------------------------ the client
class Client:
    """Sends jobs with the openai package (no retries) or, for malformed JSON, raw HTTP."""

    def __init__(self, root: str, served: str, docs: dict[str, list[str]], too_long: str, timeout: float):
        import openai

        self.openai = openai
        self.api = openai.OpenAI(base_url=f"{root}/v1", api_key="sk-load-test", max_retries=0, timeout=timeout)
        self.root, self.served, self.docs, self.too_long, self.timeout = root, served, docs, too_long, timeout

    def text(self, job: Job) -> str:
        if job.kind == "invalid:too-long":
            return self.too_long
        if job.kind == "burst":
            return prompt_text(self.docs["burst"][0], job.question)
        pool = self.docs["long" if job.kind in ("long", "reuse-1", "reuse-2") else "short"]
        return prompt_text(pool[job.doc], job.question)

    def send(self, job: Job) -> Record:
        expected: int | str = "|".join(map(str, job.expect_any)) if job.expect_any else job.expect
        rec = Record(job.kind, job.endpoint, job.spec, job.stream, expected)
        t0 = time.perf_counter()
        try:
            if job.endpoint == "raw":
                self._raw(job, rec)
            else:
                self._openai(job, rec, t0)
        except self.openai.APIStatusError as exc:
            rec.got = exc.status_code
            body = exc.body if isinstance(exc.body, dict) else {}
            rec.code = body.get("code") if isinstance(body.get("code"), str) else None
            rec.retry_after = exc.response.headers.get("retry-after")
            rec.message = str(body.get("message", exc))[:200]
        except self.openai.APITimeoutError as exc:
            rec.got, rec.message = "timeout", str(exc)[:200]
        except self.openai.APIConnectionError as exc:
            rec.got, rec.message = "connection", str(exc)[:200]
        except self.openai.APIError as exc:  # an `error` event in a stream
            rec.got, rec.message = "stream-error", str(exc)[:200]
        rec.seconds = round(time.perf_counter() - t0, 4)
        statuses = job.expect_any or (job.expect,)
        rec.ok = rec.got in statuses and (job.expect_code is None or rec.code == job.expect_code)
        if rec.got == 429 and not rec.retry_after:
            rec.ok, rec.message = False, "429 without Retry-After"
        return rec

    def _raw(self, job: Job, rec: Record) -> None:
        host, port = self.root.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            body = b'{"model": "' + self.served.encode() + b'", "messages": [{"role": "user", "content": '
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            rec.got = resp.status
            try:
                err = json.loads(resp.read()).get("error", {})
                rec.code, rec.message = err.get("code"), str(err.get("message"))[:200]
            except (ValueError, AttributeError):
                rec.message = "the error body is not an OpenAI error object"
        finally:
            conn.close()

    def _openai(self, job: Job, rec: Record, t0: float) -> None:
        model = self.served
        extra: dict[str, Any] = {}
        if job.kind == "invalid:bad-spec":
            model = f"{self.served}@no-such-method:x=1"
        elif job.kind == "invalid:unknown-model":
            model = "gpt-4-does-not-exist"
        elif job.spec != "none" and job.via_body:
            extra["method"] = job.spec
        elif job.spec != "none":
            model = f"{self.served}@{job.spec}"
        kwargs: dict[str, Any] = {"model": model, "max_tokens": job.max_tokens, "stream": job.stream}
        if job.kind == "invalid:n=2":
            kwargs["n"] = 2
        if job.sampled:
            kwargs.update(temperature=0.7, top_p=0.9, seed=job.seed)
        else:
            kwargs["temperature"] = 0
        if job.stream:
            kwargs["stream_options"] = {"include_usage": True}
        if extra:
            kwargs["extra_body"] = extra
        text = self.text(job)
        if job.endpoint == "chat":
            out = self.api.chat.completions.create(messages=[{"role": "user", "content": text}], **kwargs)
        else:
            out = self.api.completions.create(prompt=text + "\nAnswer:", **kwargs)
        usage = None
        if job.stream:
            for chunk in out:
                if rec.first_token_seconds is None and chunk.choices:
                    c = chunk.choices[0]
                    piece = c.delta.content if job.endpoint == "chat" else c.text
                    if piece:
                        rec.first_token_seconds = round(time.perf_counter() - t0, 4)
                if chunk.usage is not None:
                    usage = chunk.usage
        else:
            usage = out.usage
        rec.got = 200
        if usage is not None:
            rec.prompt_tokens, rec.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            details = getattr(usage, "prompt_tokens_details", None)
            rec.cached_tokens = getattr(details, "cached_tokens", None) if details is not None else None


def run_jobs(client_factory, jobs: list[Job], clients: int, deadline: float) -> list[Record]:
    """Send ``jobs`` from ``clients`` threads (each takes the next job when its previous one is answered)."""
    todo: queue.Queue[tuple[int, Job]] = queue.Queue()
    for i, job in enumerate(jobs):
        todo.put((i, job))
    out: list[Record | None] = [None] * len(jobs)

    def worker() -> None:
        client = client_factory()
        while True:
            try:
                i, job = todo.get_nowait()
            except queue.Empty:
                return
            if time.monotonic() > deadline:
                out[i] = Record(job.kind, job.endpoint, job.spec, job.stream, job.expect, got="skipped")
                continue
            out[i] = client.send(job)

    threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in out if r is not None]


def burst(client_factory, n: int, job: Job) -> list[Record]:
    """``n`` copies of ``job`` released at the same moment from ``n`` threads."""
    barrier, out = threading.Barrier(n), [None] * n
    clients = [client_factory() for _ in range(n)]

    def one(k: int) -> None:
        barrier.wait()
        out[k] = clients[k].send(job)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in out if r is not None]


# ------------------------------------------------------------------------------------------ report
def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def table_kind(rec: Record) -> str:
    if rec.kind == "long":
        return "long (reused)" if rec.cached_tokens else "long (cold)"
    return rec.kind


def summarize(records: list[Record]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, list[Record]] = {}
    for r in records:
        kinds.setdefault(table_kind(r), []).append(r)
    out = {}
    for kind, rs in sorted(kinds.items()):
        lat = [r.seconds for r in rs if r.seconds is not None and r.got != "skipped"]
        ttft = [r.first_token_seconds for r in rs if r.first_token_seconds is not None]
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[str(r.got)] = statuses.get(str(r.got), 0) + 1
        out[kind] = {"n": len(rs), "as_expected": sum(r.ok for r in rs), "statuses": statuses,
                     "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95),
                     "first_token_p50_s": pct(ttft, 0.5), "streamed": sum(r.stream for r in rs)}
    return out


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{'kind':<24} {'n':>4} {'ok':>4} {'p50 s':>8} {'p95 s':>8} {'ttft p50':>9}  statuses")
    for kind, s in report["mixed"]["kinds"].items():
        print(f"{kind:<24} {s['n']:>4} {s['as_expected']:>4} {_f(s['p50_s']):>8} {_f(s['p95_s']):>8} "
              f"{_f(s['first_token_p50_s']):>9}  {s['statuses']}")
    b = report["burst"]
    print(f"{'burst':<24} {b['n']:>4} {b['as_expected']:>4} {'':>8} {'':>8} {'':>9}  {b['statuses']}")
    r, m = report["kv_reuse"], report["memory"]
    print(f"\nKV reuse (alone): 1st question {_f(r['first_s'])} s, 2nd {_f(r['second_s'])} s "
          f"(cached {r['second_cached_tokens']} of {r['second_prompt_tokens']} prompt tokens): ratio "
          f"{_f(r['ratio'])} (goal <= {r['goal']})")
    print(f"server RSS: before {m['rss_before_mib']} MiB, middle {m['rss_mid_mib']} MiB, after {m['rss_after_mib']} MiB; "
          f"KV held {m['kv_bytes_before_mib']} -> {m['kv_bytes_mid_mib']} -> {m['kv_bytes_after_mib']} MiB; growth beyond "
          f"the KV cache: whole run {m['growth_beyond_kv_percent']:+.1f}%, second half "
          f"{m['second_half_growth_beyond_kv_percent']:+.1f}% (flat: <= {m['tolerance_percent']}%)")
    c = report["checks"]
    print(f"server errors (5xx): {c['server_errors']}; unexpected statuses: {c['unexpected']}; "
          f"server exit code after SIGTERM: {report['server']['exit_code']}; ok: {report['ok']}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


# ------------------------------------------------------------------------------------------ main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m",
                   help="a known model, folder or .gguf; 'tiny': a random tiny Llama (plumbing only)")
    p.add_argument("--quick", action="store_true", help="a smoke run with tiny sizes (~1-2 minutes)")
    p.add_argument("--requests", type=int, default=None, help="mixed-phase requests (default 200; quick 24)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 8; quick 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=10.0, help="RSS flatness tolerance, percent")
    p.add_argument("--max-seconds", type=float, default=1200.0,
                   help="the mixed phase sends no new request after this many seconds of the run (bounded time)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="server and client per-request limit")
    p.add_argument("--server-args", default="", help="more `longreach serve` flags, e.g. '--dtype float32'")
    p.add_argument("--out", default=None, help="default benchmarks/results/serve_load.json (quick: "
                                               "benchmarks/results/serve_load-quick.json)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # stopped from outside: still stop the server (the finally below)
    load = QUICK if args.quick else Load()
    if args.requests is not None:
        load = dataclasses.replace(load, requests=args.requests)
    if args.clients is not None:
        load = dataclasses.replace(load, clients=args.clients, max_queue=max(load.max_queue, args.clients + 4))
    out_path = Path(args.out or ("benchmarks/results/serve_load-quick.json" if args.quick
                                 else "benchmarks/results/serve_load.json"))
    est = estimate(load)
    print(f"planned: {load}\nestimate (s, 2 cores, alone): {est}", flush=True)

    t_start = time.monotonic()
    args.model_ref = str(tiny_model_folder()) if args.model == "tiny" else args.model
    rng = random.Random(args.seed)
    docs = Docs(args.model_ref, args.seed)
    short_docs = [docs.make(rng.randint(load.short_min, load.short_max)) for _ in range(load.short_docs)]
    long_docs = [docs.make(load.long_tokens) for _ in range(load.long_docs)]
    doc_texts = {"short": short_docs, "long": long_docs, "burst": [docs.make(load.burst_tokens)]}
    jobs = plan_mixed(load, rng)

    port = free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = server_command(args, load, port)
    log = tempfile.NamedTemporaryFile("w+", prefix="serve_load-", suffix=".log", delete=False)
    print(f"server: {shlex.join(cmd)} (log {log.name})", flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    exit_code: int | None = None
    try:
        wait_ready(proc, root, 300)
        t_ready = time.monotonic() - t_start
        _, _, body = http_get(root, "/v1/models")
        entry = json.loads(body)["data"][0]
        served = entry["id"]
        reach = entry.get("max_model_len") or 8192
        too_long = docs.make(int(reach) + 1000)
        make_client = lambda: Client(root, served, doc_texts, too_long, args.request_timeout)  # noqa: E731
        client = make_client()

        # 1. warm-up (one short request per method) -------------------------------------------------
        warm = [client.send(Job("warm-up", "chat", spec, doc=0, question=QUESTIONS[0],
                                max_tokens=load.short_max_tokens)) for spec in SPECS]
        # 2. KV reuse, alone -------------------------------------------------------------------------
        first = client.send(Job("reuse-1", "chat", "none", doc=0, question=QUESTIONS[0],
                                max_tokens=load.long_max_tokens))
        second = client.send(Job("reuse-2", "chat", "none", doc=0, question=QUESTIONS[1],
                                 max_tokens=load.long_max_tokens))
        ratio = second.seconds / first.seconds if first.ok and second.ok and first.seconds else None
        print(f"KV reuse: {first.seconds} s then {second.seconds} s (ratio {_f(ratio)})", flush=True)
        # 3. memory before ---------------------------------------------------------------------------
        time.sleep(1.0)  # the server trims freed memory when idle
        rss_before, kv_before = server_rss(proc.pid), metric(root, "longreach_kv_cache_bytes") or 0.0
        # 4. the mixed phase -------------------------------------------------------------------------
        t_mixed = time.monotonic()
        half = len(jobs) // 2  # RSS between the halves: growth in the second half is the steady state
        records = run_jobs(make_client, jobs[:half], load.clients, t_start + args.max_seconds)
        time.sleep(1.0)  # the server trims freed memory when idle
        rss_mid, kv_mid = server_rss(proc.pid), metric(root, "longreach_kv_cache_bytes") or 0.0
        records += run_jobs(make_client, jobs[half:], load.clients, t_start + args.max_seconds)
        mixed_seconds = time.monotonic() - t_mixed
        time.sleep(1.0)
        # 5. memory after ----------------------------------------------------------------------------
        rss_after, kv_after = server_rss(proc.pid), metric(root, "longreach_kv_cache_bytes") or 0.0
        # 6. the burst -------------------------------------------------------------------------------
        n_burst = 1 + load.max_queue + load.burst_extra
        burst_records = burst(make_client, n_burst, Job("burst", "completions", "none", doc=0,
                                                        question=QUESTIONS[2], max_tokens=4,
                                                        expect_any=(200, 429)))
        metrics_body = http_get(root, "/metrics")[2].decode()
    except BaseException:
        print(f"the run failed; the server's log is {log.name}", file=sys.stderr)
        raise
    finally:
        # 7. SIGTERM: the server should drain and exit by itself -------------------------------------
        t_term = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                exit_code = None
        else:
            exit_code = proc.returncode
        term_seconds = time.monotonic() - t_term
        log.flush()
        log.seek(0)
        server_log_tail = log.read()[-4000:]
        log.close()
        if args.model == "tiny":
            shutil.rmtree(args.model_ref, ignore_errors=True)

    burst_summary = summarize(burst_records)["burst"]
    n429 = burst_summary["statuses"].get("429", 0)
    every = records + burst_records + warm + [first, second]
    server_errors = sum(isinstance(r.got, int) and r.got >= 500 for r in every)
    unexpected = [dataclasses.asdict(r) for r in every if not r.ok]
    kv_growth = max(0.0, kv_after - kv_before)
    beyond = 100.0 * (rss_after - kv_growth - rss_before) / rss_before
    # the steady state: the second half of the mixed phase against the first (every kind of request, each
    # document and method, has been served by then: growth now would be a leak)
    steady = 100.0 * (rss_after - max(0.0, kv_after - kv_mid) - rss_mid) / rss_mid
    mib = lambda b: round(b / 2**20, 1)  # noqa: E731
    report = {
        "command": "python " + shlex.join(sys.argv), "server_command": shlex.join(cmd),
        "git": git_hash(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(),
        "versions": _versions(), "load": dataclasses.asdict(load), "quick": args.quick, "model": args.model,
        "specs": list(SPECS), "estimate_seconds": est,
        "seconds": {"ready": round(t_ready, 1), "mixed": round(mixed_seconds, 1),
                    "total": round(time.monotonic() - t_start, 1), "sigterm_to_exit": round(term_seconds, 2)},
        "load_average_end": os.getloadavg(),
        "server": {"exit_code": exit_code, "log_tail": server_log_tail},
        "kv_reuse": {"first_s": first.seconds, "second_s": second.seconds, "ratio": ratio, "goal": 0.15,
                     "second_cached_tokens": second.cached_tokens, "second_prompt_tokens": second.prompt_tokens,
                     "document_tokens": load.long_tokens, "ok": ratio is not None and ratio <= 0.15},
        "memory": {"rss_before_mib": mib(rss_before), "rss_mid_mib": mib(rss_mid), "rss_after_mib": mib(rss_after),
                   "kv_bytes_before_mib": mib(kv_before), "kv_bytes_mid_mib": mib(kv_mid),
                   "kv_bytes_after_mib": mib(kv_after),
                   "growth_percent": round(100.0 * (rss_after - rss_before) / rss_before, 2),
                   "growth_beyond_kv_percent": round(beyond, 2),
                   "second_half_growth_beyond_kv_percent": round(steady, 2), "tolerance_percent": args.tolerance,
                   "flat": steady <= args.tolerance},
        "mixed": {"requests": len(records), "clients": load.clients, "kinds": summarize(records)},
        "burst": {**burst_summary, "size": n_burst, "rate_limited": n429},
        "checks": {"server_errors": server_errors, "unexpected": len(unexpected),
                   "burst_got_429": n429 > 0, "clean_exit": exit_code == 0,
                   "skipped": sum(r.got == "skipped" for r in records)},
        "unexpected": unexpected[:50],
        "metrics_at_end": [ln for ln in metrics_body.splitlines() if ln.startswith("longreach_")
                           and "_bucket" not in ln],
        "records": [dataclasses.asdict(r) for r in records],
        "burst_records": [dataclasses.asdict(r) for r in burst_records],
    }
    c = report["checks"]
    report["ok"] = (c["server_errors"] == 0 and c["unexpected"] == 0 and c["burst_got_429"] and c["clean_exit"]
                    and c["skipped"] == 0 and report["memory"]["flat"] and report["kv_reuse"]["ok"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {out_path}")
    return 0 if report["ok"] else 1


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "uvicorn", "openai", "prometheus-client", "psutil"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
