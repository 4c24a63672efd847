"""Fuzz of every input surface (issue 13): method specs and parameters, config files, command lines, text
files and paths. Each surface gets at least 1,000 generated inputs per run (hypothesis), no model weights
(a fake ModelInfo, a load_model that refuses to run), and each input must end in success or the project's
one-line error (a LongreachError whose text is one line), never another exception, never a hang (each
input is time-boxed by SIGALRM). docs/reliability.md lists the counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from conftest import time_box as _time_box
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from longreach.errors import LongreachError
from longreach.memory import estimate_request
from longreach.models import ModelInfo, resolve_model
from longreach.spec import REGISTRY, Plan, method_names
from longreach.textio import check_text_file, read_documents, read_text_file

FUZZ = settings(max_examples=1000, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
SECONDS = 10  # per input: anything slower counts as a hang


def time_box(seconds: float = SECONDS):
    return _time_box(seconds)


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert isinstance(exc, LongreachError), f"{type(exc).__name__}: {text}"
    assert text and len(text.splitlines()) == 1, f"not one line: {text!r}"
    assert len(text) < 2000, f"{len(text)} characters: {text[:200]!r}..."


def outcome(fn, *args, **kwargs):
    """Run ``fn``; return its result, or the LongreachError it raised (checked to be one line)."""
    try:
        with time_box():
            return fn(*args, **kwargs)
    except LongreachError as exc:
        one_line(exc)
        return exc


# --------------------------------------------------------------------------------------- method specs
INFOS = [
    ModelInfo(name="fake-llama", arch="llama", window=2048, layers=2, heads=4, kv_heads=2, head_dim=16, hidden=64,
              vocab=260, rope={"full_attention": {"rope_theta": 10000.0, "rope_type": "default"}},
              layer_types=["full_attention"] * 2, sliding_window=None, parameters=10_000, dtype="float32",
              chat_template=False),
    ModelInfo(name="fake-gemma", arch="gemma3_text", window=4096, layers=3, heads=4, kv_heads=1, head_dim=32,
              hidden=64, vocab=260, rope={"sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
                                          "full_attention": {"rope_theta": 1e6, "rope_type": "default"}},
              layer_types=["sliding_attention", "sliding_attention", "full_attention"], sliding_window=64,
              parameters=10_000, dtype="bfloat16", chat_template=True),
]
NAMES = method_names()
PLAUSIBLE = ["1", "2", "4", "8", "0", "0.5", "0.1", "1.5", "32", "64", "256", "2k", "4k", "16k", "true", "false",
             "uniform", "bound", "-1", "3"]
HOSTILE = ["-3", "0.999", "1024", "1025", "1e305", "1e-320", "inf", "-inf", "nan", "1" * 400, "9" * 30, "16M",
           "17M", "100M", "0k", "1.5k", "yes", "off", "abc", "0x10", "1_000", "\u0663", "1e3", "nuq", "query",
           "16777216", "16777217", "-16777217", "1e12", "1.1e12"]


@st.composite
def grammar_specs(draw) -> str:
    """Spec text shaped by the grammar: registered (and unknown) names, real (and unknown) parameter names,
    values from numbers/lengths/booleans that probe every bound, joined with the grammar's separators."""
    parts = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
        name = draw(st.sampled_from(NAMES * 8 + ["nosuch", "Yarn", "yarn_", ""]))
        fields = [f.name for f in dataclasses.fields(REGISTRY[name])] if name in REGISTRY else []
        keys = st.sampled_from(fields * 4 + ["factorr", "x"])
        values = st.sampled_from(PLAUSIBLE * 3 + HOSTILE) | st.text(max_size=6)
        params = draw(st.lists(st.tuples(keys, values), max_size=2, unique_by=lambda kv: kv[0]))
        parts.append(name + (":" + ",".join(f"{k}={v}" for k, v in params) if params else ""))
    return draw(st.sampled_from(["+", " + ", "+"])).join(parts)


def exercise(plan: Plan) -> None:
    """What runs after the model is loaded, on fake model infos (no weights): checks, reach, the memory
    estimate and every rope method's frequencies. Raises only one-line errors for a spec that parsed."""
    for info in INFOS:
        try:
            plan.check(info)
        except LongreachError as exc:
            one_line(exc)
            continue
        reach = plan.reach(info)
        tokens = min(reach or 10**6, 10**6)
        for n in (1, info.window, tokens):
            kv = plan.kv_cache_bytes(info, n)
            assert isinstance(kv, int) and kv >= 0
            assert estimate_request(info, n, 2048, kv).total >= kv
        rope = plan.get("rope")
        if rope is not None and not (rope.name == "dprope" and rope.reach(info) > 1 << 16):  # dprope: seconds
            for t in sorted(set(info.layer_types)):
                inv, factor = rope.frequencies(info, t, tokens)
                assert inv.shape == (info.head_dim // 2,) and bool(inv.isfinite().all()) and bool((inv > 0).all())
                assert 0 < factor < 100


def check_spec(text: str) -> None:
    plan = outcome(Plan.from_spec, text)
    event("valid plan" if isinstance(plan, Plan) else type(plan).__name__)
    if isinstance(plan, Plan):
        assert Plan.from_spec(plan.spec).spec == plan.spec  # the canonical text parses back to the same plan
        with time_box():
            exercise(plan)


@FUZZ
@given(grammar_specs())
def test_fuzz_grammar_shaped_specs(text):
    check_spec(text)


@FUZZ
@given(st.text(max_size=60) | st.text(alphabet="abcdefgiklmnoprstuyz0123456789-:=,+. _", max_size=60))
def test_fuzz_arbitrary_spec_text(text):
    check_spec(text)


@pytest.mark.parametrize("spec,fragment", [
    ("pi:factor=1e305", "factor=1e+305 is out of range"), ("pi:factor=2000", "from 1 to 1024"),
    ("yarn:beta_fast=inf", "finite number"), ("yarn:beta_slow=1e-320", "beta_slow"),
    ("dprope:target=100M", "more than 16M tokens"), ("self-extend:group=" + "9" * 30, "at most 16,777,216"),
    ("logn:base=nan", "finite number"), ("pi:factor=yes", "valid number"),
])
def test_known_bad_parameters_are_one_line_spec_errors(spec, fragment):
    with pytest.raises(LongreachError) as err:
        Plan.from_spec(spec)
    assert fragment in str(err.value)
    one_line(err.value)


DPROPE_PEAK = """
import resource, torch
from longreach.methods.rope.base import default_inv_freq
from longreach.methods.rope.dprope import angle_histograms
inv = default_inv_freq(10000.0, 16)
angle_histograms(inv, 1000)  # allocator warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
h = angle_histograms(inv, 4 * 1024 * 1024)
assert abs(float(h.sum()) - 8.0) < 1e-9
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_dprope_memory_does_not_grow_with_the_target():
    """dprope:target=100M used to build (8, target) float64 tables (~20 GB) outside the memory pre-check.
    Targets are now at most 16M tokens and the histograms run over blocks of positions: a fresh process's
    peak grows by a few tens of MB (one (8, 4M) pass took about 800 MB)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", DPROPE_PEAK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) < 200, f"peak grew by {proc.stdout.strip()} MiB"


def test_dprope_blocked_histograms_match_one_pass():
    import math

    import torch

    from longreach.methods.rope.base import default_inv_freq
    from longreach.methods.rope.dprope import POSITION_BLOCK, angle_histograms

    inv, n = default_inv_freq(10000.0, 16), POSITION_BLOCK + 777
    p = torch.arange(n, dtype=torch.float64)
    idx = (torch.remainder(inv[:, None] * p, 2 * math.pi) * (360 / (2 * math.pi))).long().clamp(0, 359)  # (8, n)
    ref = torch.stack([torch.bincount(row, minlength=360) for row in idx]).double() / n
    assert torch.equal(angle_histograms(inv, n), ref)


# --------------------------------------------------------------------------------------- config files
FIELDS = ["model", "methods", "tasks", "lengths", "depths", "samples", "seed", "out", "backend", "dtype", "device",
          "prompt", "chunk_size", "decode_tokens", "memory_limit", "shard", "executor"]
POOL = ["none", "passkey", "yarn:factor=4", "pi:factor=1e305", "4k", "100M", "0.5", "a", "3/4", "cpu", "plain",
        "1" * 400, "niah:haystack=noise", "cwe:common=0", "oracle", "8GiB", "", " ", None, True, 0, -1, 3, 2**40,
        0.25, 1.5, float("inf"), float("nan"), [], [None], ["none", 5], [0.1, "x"], [[1]], {"name": "niah"},
        {"name": "niah", "haystack": "noise"}, {"haystack": "noise"}, {"name": 5}, {"name": "passkey", "digits": [1]}]
SCALARS = st.one_of(st.sampled_from(POOL), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=8))
JSONISH = SCALARS | st.lists(SCALARS, max_size=3)
YAML_VALUES = ["null", "[5]", "[a]", "[" + "1" * 400 + "]", ".inf", ".nan", "[.nan]", "!!binary aGVsbG8=",
               "&a [*a]", "{", "[[[[1]]]]", "2020-01-01", "[passkey, {name: niah, haystack: noise}]", "'4k,8k'",
               "[{name: 5}]", "[{haystack: noise}]", "!!set {a, b}", "[1k, 0]", "3", "0", "-1", "true", "'0/1'",
               "[none, 'yarn:factor=4,beta_fast=32']", "~", "''", "\"\\u0000\"", "[0.1, 0.5, 1.5]", "!!python/none ''"]


@st.composite
def config_documents(draw) -> tuple[str, bytes]:
    """(suffix, bytes) of a config file: random JSON/YAML/TOML documents over the real field names (and
    others), YAML text with hostile values, or random bytes."""
    kind = draw(st.sampled_from(["near-valid", "near-valid", "json", "yaml", "yaml-text", "toml", "bytes"]))
    if kind == "near-valid":  # a valid sweep with a setting or two changed (valid or hostile)
        data = {"methods": ["none"], "tasks": ["passkey"], "lengths": ["1k"], "depths": 1, "backend": "oracle"}
        good = {"methods": "none,yarn:factor=4", "tasks": [{"name": "niah", "haystack": "noise"}], "lengths": "2k,4k",
                "depths": [0.1, 0.9], "samples": 2, "seed": 3, "prompt": "auto", "chunk_size": 512,
                "memory_limit": "8GiB", "shard": "1/2", "decode_tokens": 8, "device": "cpu", "dtype": "float32"}
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(FIELDS))
            data[key] = good.get(key, "none") if draw(st.booleans()) else draw(JSONISH)
        if draw(st.booleans()):
            return ".json", json.dumps(data).encode()
        return ".yaml", yaml.safe_dump(data, allow_unicode=True).encode()
    data = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6) | st.integers(), JSONISH, max_size=5))
    if kind == "json":
        return ".json", json.dumps(data, default=str).encode()
    if kind == "yaml":
        return draw(st.sampled_from([".yaml", ".yml", ".cfg"])), yaml.safe_dump(data, allow_unicode=True).encode()
    if kind == "yaml-text":
        lines = [f"{draw(st.sampled_from(FIELDS + ['5', 'lenghts', '? [a]']))}: {draw(st.sampled_from(YAML_VALUES))}"
                 for _ in range(draw(st.integers(1, 4)))]
        return ".yaml", "\n".join(lines).encode() + draw(st.sampled_from([b"", b"\n", b"\xff", b"\x00"]))
    if kind == "toml":
        body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in data.items() if isinstance(k, str) and k.isidentifier())
        return ".toml", (body + draw(st.sampled_from(["", "\n[x", "\nseed = 1e999"]))).encode()
    return draw(st.sampled_from([".yaml", ".json", ".toml"])), draw(st.binary(max_size=200))


@pytest.fixture(scope="module")
def work_dir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(doc=config_documents())
@example(doc=(".yaml", b"?"))  # found by this test in CI: YAML's {None: None}, a key that is None
def test_fuzz_config_files(work_dir, doc):
    from longreach.bench.runner import BenchConfig, load_config

    suffix, data = doc
    path = work_dir / f"sweep{suffix}"
    path.write_bytes(data)
    with mock.patch.dict(os.environ, {"LONGREACH_CACHE": str(work_dir / "cache")}):
        cfg = outcome(load_config, path, {})
    event(f"{suffix}: " + ("valid" if isinstance(cfg, BenchConfig) else type(cfg).__name__))
    if isinstance(cfg, BenchConfig):  # what the sweep then relies on
        assert cfg.lengths and all(1 <= n <= 1 << 24 for n in cfg.lengths) and cfg.methods and cfg.tasks
        assert all(0 <= d <= 1 for d in cfg.depth_list()) and 1 <= cfg.samples <= 10_000


@pytest.mark.parametrize("text,fragment", [
    (b"methods: [caf\xe9]\n", "not UTF-8"), (b"5: x\n", "setting name 5 is not text"),
    (b"methods: null\n", "config methods: None is not a list"), (b"tasks: [5]\n", "config tasks[0]: 5 is not a task"),
    (b"depths: [a]\n", "config depths[0]: 'a' is not a number between 0 and 1"),
    (b"lengths: [" + b"1" * 400 + b"]\n", "config lengths[0]: length 111"),
    (b"lenghts: [1k]\n", "config lenghts: unknown setting"), (b"[" * 1200 + b"]" * 1200, "cannot parse"),
])
def test_known_bad_config_files(tmp_path, text, fragment):
    from longreach.bench.runner import load_config

    path = tmp_path / "sweep.yaml"
    path.write_bytes(text)
    with pytest.raises(LongreachError) as err:
        load_config(path, {})
    assert fragment in str(err.value)
    one_line(err.value)


# -------------------------------------------------------------------------------------- command lines
ASK_MODULE = importlib.import_module("longreach.ask")  # (the package's `ask` attribute is the function)


class ReachedModel(Exception):
    """The fake load_model / load_tokenizer was called: every option had been validated by then."""


def _refuse_to_load(spec=None, *args, **kwargs):
    """Check the model name as the real loaders do (one line for a bad one), then stop before any work."""
    if isinstance(spec, str):
        resolve_model(spec)
    raise ReachedModel


BAD, GOOD, ANY = "bad", "good", "any"  # a value every check must refuse before the model / a valid one / unknown


def _pairs(option: str, good: list[str], bad: list[str]) -> st.SearchStrategy:
    """(option, value, tag): a good value three times in four, so that whole command lines pass too."""
    goods = st.sampled_from([(option, v, GOOD) for v in good])
    return st.one_of(goods, goods, goods, st.sampled_from([(option, v, BAD) for v in bad])) if bad else goods


COMMON_BAD_NUMBERS = ["0", "-1", "1000000000", "abc", "1e3", "nan"]
ASK_OPTIONS = [
    _pairs("--max-new-tokens", ["1", "64"], COMMON_BAD_NUMBERS),
    _pairs("--chunk-size", ["16", "2048"], COMMON_BAD_NUMBERS),
    _pairs("--memory-limit", ["4GiB", "512M"], ["abc", "0", "1" * 400, "-1G", "1e400", ""]),
    _pairs("--method", ["none", "yarn:factor=4", "dynamic-ntk+kv-int4", "infiniretri"],
           ["pi:factor=1e305", "yarn:beta_fast=inf", "dprope:target=100M", "nosuch", "yarn:factor", "+"]),
    _pairs("--device", ["cpu", "auto"], ["tpu", "cuda:x", "cpu:0", "gpu"]),
    _pairs("--prompt", ["auto", "plain", "chat", "plain+qfirst+prefix"], ["xml", "plain+xml", "prefix"]),
    _pairs("--dtype", ["auto", "float32"], ["float8"]),
    _pairs("--model", ["smollm2-135m"], ["some/folder", "x" * 5000, "~nouser/m", "a\x00b", "", "doc.txt", "fifo"]),
]
BENCH_OPTIONS = [
    _pairs("--lengths", ["1k", "2k,4k"], ["0", "abc", "100M", "1k,,0", "1" * 400, "-4k"]),
    _pairs("--samples", ["1", "3"], COMMON_BAD_NUMBERS),
    _pairs("--depths", ["3", "0.1,0.5"], ["a", "0", "2.5", "101", "0.5,x", "-1"]),
    _pairs("--chunk-size", ["512"], COMMON_BAD_NUMBERS),
    _pairs("--decode-tokens", ["16"], COMMON_BAD_NUMBERS),
    _pairs("--memory-limit", ["8GiB"], ["abc", "0", "1e400"]),
    _pairs("--shard", ["0/1", "1/4"], ["3/2", "a/b", "0/0", "-1/2"]),
    _pairs("--methods", ["none", "none,yarn:factor=4,beta_fast=32"],
           ["pi:factor=1e305", "factor=4,none", "nosuch", "yarn:beta_slow=0"]),
    _pairs("--tasks", ["passkey", "niah:haystack=noise"],
           ["nosuch", "cwe:common=0", "niah:haystack=/nonexistent/x", "fwe:alpha=inf", "passkey:digits=99"]),
    _pairs("--backend", ["local"], ["foo", "local:x=1", "oracle:delay=inf", "oracle:delay=-1", "openai:ulr=x"]),
    _pairs("--device", ["cpu"], ["tpu"]),
    _pairs("--seed", ["0", "7"], ["-1", "99999999999999"]),
    _pairs("--config", ["good.yaml"], ["missing.yaml", "bad.yaml", "list.yaml", "latin1.yaml", "."]),
    _pairs("--executor", ["local"], ["dask"]),
    _pairs("--out", ["out1", "out 2"], []),
]
REPORT_OPTIONS = [
    _pairs("--threshold", ["50", "85.6"], ["nan", "inf", "-1", "101", "x"]),
    _pairs("--html", ["page.html"], ["/nonexistent/x.html", "results", "a\x00b/c"]),
    _pairs("--baseline", ["none"], []),
]


APPENDED = {"--methods", "--tasks"}  # bench options that add to a list: every value counts


@st.composite
def command_lines(draw) -> tuple[list[str], bool]:
    """(argv, must_refuse): a sub-command with options drawn from good and bad values (and random text);
    must_refuse is True when a value every check knows to be bad takes effect (argparse keeps the last
    of a repeated option; list options keep every value)."""
    cmd = draw(st.sampled_from(["ask", "bench", "info", "report", "methods", "tasks", "models", "", "--version"]))
    argv = [cmd] if cmd else []
    tags: dict[str, list[str]] = {}
    pools = {"ask": ASK_OPTIONS, "bench": BENCH_OPTIONS, "report": REPORT_OPTIONS,
             "info": [ASK_OPTIONS[4], ASK_OPTIONS[6], ASK_OPTIONS[7]]}.get(cmd, [])
    if cmd == "ask":
        good_files = st.sampled_from([("doc.txt", GOOD), ("-", GOOD)])
        files = draw(st.lists(good_files | good_files | st.sampled_from([
            # "." is a folder holding doc.txt: a corpus (its unreadable files skipped with a warning each)
            ("missing.txt", BAD), (".", GOOD), ("", BAD), ("empty.txt", BAD), ("binary.bin", BAD), ("fifo", BAD),
            ("/dev/zero", BAD), ("/proc/self/mem", BAD), ("x" * 300, BAD)]), max_size=2))
        argv += [f for f, _ in files]
        tags["files"] = [tag for _, tag in files]
        question, tag = draw(st.sampled_from([("What is the key?", GOOD)] * 5 + [(None, BAD), ("", BAD), ("  ", BAD)]))
        argv += ["-q", question] if question is not None else []
        tags["-q"] = [tag]
    if cmd == "report":
        d, tag = draw(st.sampled_from([("results", GOOD), ("missing-dir", BAD), ("doc.txt", BAD)]))
        argv.append(d)
        tags["dir"] = [tag]
    for strategy in draw(st.lists(st.sampled_from(pools), max_size=4)) if pools else []:
        option, value, tag = draw(strategy)
        argv += [option, value]
        tags.setdefault(option, []).append(tag)
    if cmd in ("methods", "tasks") and draw(st.booleans()):
        argv.append(draw(st.sampled_from(["--json", "--markdown"])))
    bad = any(BAD in (ts if option in APPENDED or option == "files" else ts[-1:]) for option, ts in tags.items())
    if draw(st.integers(0, 9)) == 0:  # stray random text: argparse's own checks
        argv.insert(draw(st.integers(0, len(argv))), draw(st.text(max_size=8)))
        bad = False  # unknown: the stray token may be a valid file name or value
    return argv, bad


@pytest.fixture(scope="module")
def cli_dir():
    """A working folder with the files the command lines name."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "doc.txt").write_text("The pass key is 12345. " * 20)
        (root / "empty.txt").write_bytes(b"\xef\xbb\xbf  \n")
        (root / "binary.bin").write_bytes(b"abc\x00def")
        os.mkfifo(root / "fifo")
        (root / "good.yaml").write_text("methods: [none]\ntasks: [passkey]\nlengths: [1k]\ndepths: 1\n")
        (root / "bad.yaml").write_text("depths: [a]\n")
        (root / "list.yaml").write_text("- none\n")
        (root / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
        (root / "results").mkdir()
        yield root


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=command_lines())
def test_fuzz_command_lines(cli_dir, case):
    """Exit 0 (success), 2 (a usage or input error) or 3 (memory), stderr one line and no traceback; a
    value known to be bad never reaches the model (load_model and load_tokenizer refuse to run here)."""
    from longreach import cli

    argv, must_refuse = case
    out, err = io.StringIO(), io.StringIO()
    stdin = io.TextIOWrapper(io.BytesIO(b"A document read from stdin. The key is 7."))
    reached = False
    old_cwd = os.getcwd()
    os.chdir(cli_dir)
    try:
        with mock.patch("longreach.models.load_model", _refuse_to_load), \
             mock.patch.object(ASK_MODULE, "load_model", _refuse_to_load), \
             mock.patch("longreach.models.load_tokenizer", _refuse_to_load), \
             mock.patch.dict(os.environ, {"LONGREACH_CACHE": str(cli_dir / "cache")}), \
             mock.patch.object(sys, "stdin", stdin), \
             contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_box():
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            except ReachedModel:
                reached, code = True, 0
    finally:
        os.chdir(old_cwd)
    text = err.getvalue()
    event(("reached the model" if reached else f"exit {code}") + (" (a bad value)" if must_refuse else ""))
    assert "Traceback" not in text, text
    assert code in (0, 2, 3), (argv, code, text)
    if code:  # one error line (after a warning line per file a folder corpus skipped, if any)
        lines = [ln for ln in text.strip().splitlines() if not ln.startswith("longreach: warning: skipped ")]
        assert len(lines) == 1 and "error" in lines[0], (argv, text)
    if must_refuse:
        assert not reached, f"{argv}: reached the model with a value that should have been refused"
        assert code in (2, 3), (argv, code, text)


@pytest.mark.parametrize("argv,fragment", [
    (["ask", "doc.txt", "-q", "q", "--memory-limit", "abc"], "--memory-limit: not a memory size: 'abc'"),
    (["ask", "doc.txt", "-q", "q", "--max-new-tokens", str(10**9)], "--max-new-tokens must be between 1 and"),
    (["ask", "doc.txt", "-q", "q", "--method", "pi:factor=1e305"], "factor=1e+305 is out of range"),
    (["bench", "--lengths", "0"], "--lengths: a length is a whole number of tokens >= 1"),
    (["bench", "--samples", "-1"], "--samples: -1 is out of range"),
    (["bench", "--chunk-size", "0"], "--chunk-size: 0 is out of range"),
    (["bench", "--depths", "a"], "--depths[0]: 'a' is not a number between 0 and 1"),
    (["ask", "doc.txt", "-q", "q", "--prompt", "xml"], "unknown prompt format 'xml'"),
    (["ask", "doc.txt", "-q", "q", "--prompt", "plain+qfirst+both"], "use one of them"),
])
def test_known_bad_options_before_the_model(cli_dir, capsys, monkeypatch, argv, fragment):
    from longreach import cli

    monkeypatch.chdir(cli_dir)
    monkeypatch.setattr("longreach.models.load_model", _refuse_to_load)
    monkeypatch.setattr(ASK_MODULE, "load_model", _refuse_to_load)
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_python_api_checks_options_before_loading(cli_dir, monkeypatch):
    """``longreach.ask`` refuses a bad memory limit, count or prompt format before it loads the model."""
    from longreach.ask import ask

    monkeypatch.setattr(ASK_MODULE, "load_model", _refuse_to_load)
    doc = str(cli_dir / "doc.txt")
    for kwargs, fragment in [({"memory_limit": "abc"}, "not a memory size"), ({"max_new_tokens": 0}, "max_new_tokens"),
                             ({"chunk_size": 10**9}, "chunk_size"), ({"prompt": "xml"}, "prompt format")]:
        with pytest.raises(LongreachError, match=fragment) as err:
            ask(doc, "q?", **kwargs)
        one_line(err.value)


# ------------------------------------------------------------------------------- text files and paths
@FUZZ
@given(data=st.binary(max_size=300) | st.sampled_from([b"\xef\xbb\xbf", b"\xef\xbb\xbf \n\t", b" " * 9000 + b"\x00",
                                                       b"a" * 9000 + b"\x00", b"caf\xe9", b"\xed\xa0\x80"]),
       text=st.text(max_size=100), limit=st.sampled_from([None, "64"]))
def test_fuzz_text_file_contents(work_dir, data, text, limit):
    """Random bytes (and random text as UTF-8) in a file: a document with text in it, or one line."""
    path = work_dir / "doc.txt"
    env = {"LONGREACH_MAX_READ_BYTES": limit} if limit else {}
    for raw in (data, text.encode("utf-8", "surrogatepass")):
        path.write_bytes(raw)
        with mock.patch.dict(os.environ, env):
            got = outcome(read_text_file, path)
            if isinstance(got, str):
                assert got.replace("\ufeff", "").strip() and "\x00" not in got
                assert limit is None or len(raw) <= int(limit)
            checked = outcome(check_text_file, path)
            assert isinstance(checked, Path) or isinstance(got, LongreachError)  # a full read can't pass when this fails
            both = outcome(read_documents, [path, path])
            assert isinstance(both, str) == isinstance(got, str)


SPECIAL_PATHS = ["/proc/self/mem", "/proc/self/status", "/dev/zero", "/dev/null", "/dev/stdin", "/", ".", "..", "",
                 "fifo", "dir", "loop", "dangling", "doc.txt", "x" * 300, "y/" * 3000, "a\x00b", "~", "~nouser/x",
                 "noread.txt", "\ud800", "sock", "-"]


@FUZZ
@given(paths=st.lists(st.sampled_from(SPECIAL_PATHS) | st.text(max_size=30), min_size=0, max_size=3))
def test_fuzz_paths(path_dir, paths):
    """Random path strings and special files (FIFO, /dev/zero, /proc, links, long names, NUL) through
    every reader: a read document, or one line; never a hang on a FIFO or an endless device."""
    old = os.getcwd()
    os.chdir(path_dir)
    stdin = io.TextIOWrapper(io.BytesIO(b"stdin text"))
    try:
        with mock.patch.object(sys, "stdin", stdin):
            for p in paths:
                outcome(read_text_file, p)
                if p != "-":
                    outcome(check_text_file, p)
            outcome(read_documents, paths)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def path_dir():
    import socket

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "doc.txt").write_text("Some text.")
        (root / "dir").mkdir()
        os.mkfifo(root / "fifo")
        os.symlink("loop", root / "loop")
        os.symlink("nowhere", root / "dangling")
        (root / "noread.txt").write_text("secret")
        os.chmod(root / "noread.txt", 0)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(str(root / "sock"))
        except OSError:
            pass
        yield root
        s.close()
        os.chmod(root / "noread.txt", stat.S_IRUSR | stat.S_IWUSR)


def test_time_box_catches_a_hang():
    """The guard the fuzz relies on: a blocking open of a FIFO without a writer is interrupted."""
    with tempfile.TemporaryDirectory() as d:
        fifo = Path(d) / "f"
        os.mkfifo(fifo)
        with pytest.raises(TimeoutError):
            with time_box(0.3):
                open(fifo, "rb").close()
