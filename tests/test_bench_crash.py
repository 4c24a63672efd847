"""Crash tests: a sweep killed with SIGKILL at 20 random moments, or stopped by a full disk (a failing
``os.write``, and a real tmpfs where this machine lets a test mount one), and resumed each time, ends with
every finished sample present exactly once and the metrics of an uninterrupted run. Oracle backend."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
import traceback
from pathlib import Path

import pytest
import tqdm
import tqdm.auto

from longreach.bench.files import StorageError
from longreach.bench.runner import load_config, run_bench
from longreach.bench.store import SAMPLE_COLUMNS

SWEEP = dict(backend="oracle:delay=0.03", methods="none", tasks="passkey,vt", lengths="1k,2k", depths=3, samples=2)
TIMING = {"seconds", "seconds_per_sample", "load_average", "machine"}  # the machine and its load, not the sweep
N_SAMPLES = 2 * 3 * 2 + 2 * 2  # passkey: 3 depths x 2 samples at 2 lengths; vt: 2 samples at 2 lengths


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))


def cfg_for(out: Path):
    return load_config(None, {**SWEEP, "out": str(out)})


def snapshot(out: Path) -> tuple:
    """Everything a finished sweep holds that does not depend on timing; checks that every sample file
    is clean framed JSONL with each sample exactly once."""
    cells = out / "cells"
    files = sorted(p.relative_to(out).as_posix() for p in cells.rglob("*") if p.is_file())
    samples = {}
    for p in cells.rglob("samples.jsonl"):
        data = p.read_bytes()
        assert data.endswith(b"\n") and data.isascii(), p
        recs = [json.loads(line) for line in data.split(b"\n")[:-1]]
        ids = [r["id"] for r in recs]
        assert len(ids) == len(set(ids)), f"{p}: a sample stored twice"
        samples[p.parent.relative_to(cells).as_posix()] = sorted(
            ({k: v for k, v in r.items() if k not in TIMING} for r in recs), key=lambda r: r["id"])
    metrics = {p.parent.relative_to(cells).as_posix(): {k: v for k, v in json.loads(p.read_text()).items()
                                                         if k not in TIMING}
               for p in cells.rglob("metrics.json")}
    results = json.loads((out / "results.json").read_text())["results"]
    db = sqlite3.connect(out / "results.sqlite")
    rows = sorted(map(repr, db.execute(f"select {', '.join(SAMPLE_COLUMNS)} from samples")))
    db.close()
    assert sum(len(v) for v in samples.values()) == N_SAMPLES
    return files, samples, metrics, results, rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and how long it took (cold sample cache)."""
    root = tmp_path_factory.mktemp("reference")
    old = os.environ.get("LONGREACH_CACHE")
    os.environ["LONGREACH_CACHE"] = str(root / "cache")
    try:
        t0 = time.perf_counter()
        run_bench(cfg_for(root / "out"), progress=False)
        seconds = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("LONGREACH_CACHE", None)
        else:
            os.environ["LONGREACH_CACHE"] = old
    return snapshot(root / "out"), seconds


def _fork_sweep(out: Path, cache: Path, log: Path) -> int:
    """Start the sweep in a forked child (this process' imports, no interpreter start-up); its pid."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        # tqdm's write lock is a multiprocessing semaphore shared by every process forked from this one:
        # a sibling killed while holding it (tqdm takes it even for a disabled bar) would hang every
        # later child. Separate processes (a user's runs) never share it; give this child its own.
        for cls in {tqdm.tqdm, tqdm.auto.tqdm}:
            cls.set_lock(threading.RLock())
        try:
            os.environ["LONGREACH_CACHE"] = str(cache)
            run_bench(cfg_for(out), progress=False)
        except BaseException:  # noqa: BLE001 - reported to the parent through the log and the exit code
            log.write_text(traceback.format_exc())
            code = 3
        os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_20_random_moments_then_resume(reference, tmp_path):
    ref, _ = reference
    out, cache, log = tmp_path / "out", tmp_path / "cache", tmp_path / "child.log"
    rng = random.Random(13)
    # seconds: a run gets a part of the sweep, so the kills land all over it; the window follows the
    # machine: it grows while kills find no new sample (a slow start), shrinks once runs finish first
    window = 0.35
    killed, attempts, progress, still = 0, 0, [], 0
    # Runs that finish before their kill do not count: keep starting runs until 20 were killed, so a slow
    # or busy machine cannot fail this.
    while killed < 20:
        attempts += 1
        assert attempts <= 120, f"only {killed} of {attempts - 1} runs could be killed"
        pid = _fork_sweep(out, cache, log)
        time.sleep(rng.uniform(0.0, window))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        done = sum(p.read_bytes().count(b"\n") for p in out.glob("cells/**/samples.jsonl"))
        if os.WIFSIGNALED(status):
            killed += 1
            still = still + 1 if progress and done == progress[-1] and done < N_SAMPLES else 0
            if still >= 3:  # three kills in a row before the next sample: give runs longer
                window, still = window * 1.5, 0
        else:  # it finished first: later kills aim at the (shorter) runs of a finished sweep
            assert os.WEXITSTATUS(status) == 0, log.read_text() if log.exists() else status
            window = max(0.005, window / 2)
        progress.append(done)
    assert len(set(progress)) >= 4, progress  # the kills fell at many points of the sweep
    pid = _fork_sweep(out, cache, log)  # the last resume, not killed (time-boxed)
    for _ in range(6000):
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the resumed sweep did not finish within 120 s")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log.read_text() if log.exists() else status
    assert snapshot(out) == ref
    assert not [p for p in out.rglob("*.tmp*")], "a temporary file outlived the resume"


def test_disk_full_mid_write_then_resume(reference, tmp_path, monkeypatch):
    """``os.write`` fails with ENOSPC after N writes (the last one short, as on a disk that fills up): a
    one-line error; once space returns, a resume completes the sweep exactly once."""
    ref, _ = reference
    out = tmp_path / "out"
    real_write = os.write
    calls = {"n": 0}

    def counting(fd, data):
        calls["n"] += 1
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    run_bench(cfg_for(tmp_path / "count"), progress=False)
    total = calls["n"]
    monkeypatch.setattr(os, "write", real_write)
    rng = random.Random(5)
    errors = 0
    for _ in range(10):
        left = {"n": rng.randrange(total // 4)}  # a few writes fit: each run gets a part of the sweep done

        def full(fd, data, left=left):
            if left["n"] <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left["n"] -= 1
            if left["n"] == 0 and len(data) > 1:
                return real_write(fd, bytes(data[:len(data) // 2]))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", full)
        try:
            run_bench(cfg_for(out), progress=False)
        except StorageError as exc:
            errors += 1
            text = str(exc)
            assert "\n" not in text and "No space left on device" in text and "free some space" in text
        monkeypatch.setattr(os, "write", real_write)  # space returns
    assert errors >= 6 and total > 20
    run_bench(cfg_for(out), progress=False)
    assert snapshot(out) == ref


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.name != "posix" or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def test_real_full_tmpfs_then_resume(reference, tmp_path):
    """A sweep into a tmpfs that is too small: a one-line error at each size; grown, the sweep resumes
    and completes exactly once. Skipped where this test cannot mount a tmpfs (not root, a container)."""
    ref, _ = reference
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        errors = []
        for size in ("8k", "16k", "32k", "48k", "64k", "96k", "4m"):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True,
                           timeout=10)
            try:
                run_bench(cfg_for(disk / "out"), progress=False)
            except StorageError as exc:
                errors.append(str(exc))
        assert len(errors) >= 2 and all("\n" not in e and "cannot write" in e for e in errors), errors
        assert snapshot(disk / "out") == ref
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=10)
