"""LoCoBench-style code tasks: real stdlib sources, sizing, gold answers checked against the sources with
independent (textual) checks, the generated edit, and the scorers on hand-written answers."""

from __future__ import annotations

import ast
import re

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks import locobench as loco

TOK = byte_tokenizer()
TASKS = ["code-definition", "code-callchain", "code-changed"]


def _files(context: str) -> dict[str, str]:
    """path -> the excerpt under its '# file:' header (the first copy, for code-changed)."""
    out: dict[str, str] = {}
    parts = re.split(r"^# file: (\S+)\n", context, flags=re.M)
    for path, body in zip(parts[1::2], parts[2::2]):
        out.setdefault(path, body.split("=== Version B ===")[0])
    return out


@pytest.mark.parametrize("name", TASKS)
def test_fits_the_length_and_grows_with_it(name):
    task = make_task(name)
    short, long = (task.generate(TOK, n, seed=4) for n in (3000, 9000))
    for s, n in ((short, 3000), (long, 9000)):
        budget = n - task.max_new_tokens
        assert s.meta["tokens"] == prompt_tokens(TOK, s)
        assert 0.9 * budget <= s.meta["tokens"] <= budget
        assert s.meta["source"].startswith("python3.")
    assert long.meta["tokens"] > 2.5 * short.meta["tokens"]
    assert set(_files(long.context)) == set(long.meta["files"])


def test_packaged_tokenizer_fits():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    s = make_task("code-definition").generate(tok, 4096, seed=1)
    assert 0.95 * (4096 - 40) <= s.meta["tokens"] == prompt_tokens(tok, s) <= 4096 - 40


def test_too_short_raises():
    with pytest.raises(BenchError, match="longer length"):
        make_task("code-callchain:steps=5").generate(TOK, 600, seed=0)


@pytest.mark.parametrize("seed", range(2))
def test_definition_gold_is_in_its_file(seed):
    s = make_task("code-definition").generate(TOK, 5000, seed=seed)
    path, _, name = s.references[0].rpartition(":")
    files = _files(s.context)
    assert re.search(rf"^(class|def) {re.escape(name)}\b", files[path], flags=re.M)  # defined there
    caller_path, _, caller = s.meta["caller"].rpartition(":")
    assert re.search(rf"^def {re.escape(caller)}\(", files[caller_path], flags=re.M)
    called = s.meta["call"].split(".")
    assert called[-1] == name or called[-1] in files[caller_path]  # the name, or an alias imported there
    assert s.meta["call"] in s.question and caller_path in s.question


@pytest.mark.parametrize("seed", range(2))
def test_callchain_each_function_calls_the_next(seed):
    task = make_task("code-callchain")
    s = task.generate(TOK, 5000, seed=seed)
    files = _files(s.context)
    chain = [c.rpartition(":") for c in s.meta["chain"]]
    assert len(chain) == task.steps == len(s.references) and len({p for p, _, _ in chain}) >= 2
    for (path, _, fn), (_, _, nxt) in zip(chain, chain[1:]):
        body = re.search(rf"^def {re.escape(fn)}\(.*?(?=^\S|\Z)", files[path], flags=re.M | re.S).group(0)
        assert re.search(rf"\b{re.escape(nxt)}\(", body), (fn, nxt)


@pytest.mark.parametrize("seed", range(2))
def test_changed_versions_differ_in_one_function_only(seed):
    s = make_task("code-changed").generate(TOK, 6000, seed=seed)
    a, b = s.context.split("=== Version B ===")
    a = a.split("=== Version A ===")[1].strip()
    b = b.strip()
    la, lb = a.splitlines(), b.splitlines()
    diff = [i for i, (x, y) in enumerate(zip(la, lb)) if x != y]
    assert len(la) == len(lb) and len(diff) == 1
    path, _, name = s.references[0].rpartition(":")
    before = la[:diff[0] + 1]
    header = max(i for i, line in enumerate(before) if line.startswith("# file: "))
    assert before[header] == f"# file: {path}"
    top = max(i for i, line in enumerate(before) if re.match(r"(def|class|async def|@) ?", line))
    assert re.match(rf"(async )?def {re.escape(name)}\(", before[top]) or before[top].startswith("@")


def test_edits_change_behaviour_and_keep_syntax():
    c = loco.corpus()
    chunk = c.chunk(("json.decoder", "py_scanstring"))
    options = loco.edits(chunk)
    assert options
    for start, end, old, new in options:
        assert chunk.text[start:end] == old
        changed = chunk.text[:start] + new + chunk.text[end:]
        assert ast.dump(ast.parse(changed)) != ast.dump(ast.parse(chunk.text))


# ----------------------------------------------------------------------------------------------- scorers
def _s(ref: str, files: list[str]) -> Sample:
    return Sample("", "q", "Answer:", [ref], {"files": files})


def test_definition_scorer():
    t = make_task("code-definition")
    files = ["email/utils.py", "email/_parseaddr.py", "json/decoder.py", "http/cookiejar.py"]
    s = _s("email/_parseaddr.py:quote", files)
    assert t.score(s, "email/_parseaddr.py:quote") == 1.0
    assert t.score(s, "It resolves to the function `quote` defined in `email/_parseaddr.py`.") == 1.0  # verbose
    assert t.score(s, "_parseaddr.py:quote") == 1.0  # a unique suffix of the path
    assert t.score(s, "email/utils.py:quote") == 0.0  # wrong file (same name)
    assert t.score(s, "email/_parseaddr.py:mktime_tz") == 0.0  # right file, wrong name
    assert t.score(s, "email/utils.py or email/_parseaddr.py:quote") == 0.0  # the first path counts
    assert t.score(s, "quote") == 0.0 and t.score(s, "I could not find it.") == 0.0
    m = _s("json/decoder.py:JSONDecoder.decode", files)
    assert t.score(m, "json/decoder.py: JSONDecoder.decode") == 1.0
    assert t.score(m, "json/decoder.py, method decode") == 1.0


def test_callchain_scorer():
    t = make_task("code-callchain:steps=5")
    s = Sample("", "q", "Answer:", ["a_start", "b_mid", "c_mid", "d_mid", "z_end"], {})
    assert t.score(s, "a_start -> b_mid -> c_mid -> d_mid -> z_end") == 1.0
    assert t.score(s, "b_mid, c_mid, d_mid, z_end") == 1.0  # without the given start
    assert t.score(s, "1. email/utils.py:a_start()\n2. `b_mid()`\n3. c_mid\n4. d_mid\n5. z_end") == 1.0
    assert t.score(s, "a_start -> b_mid -> d_mid -> c_mid -> z_end") == pytest.approx(1 / 3)  # partial
    assert t.score(s, "a_start -> z_end") == 0.0
    assert t.score(s, "The chain is a_start calls b_mid, then c_mid, then d_mid, then z_end.") == 1.0  # verbose
    assert t.score(s, "I could not find it.") == 0.0
    assert loco.chain_steps("x.py: f -> `g()` -> h") == ["f", "g", "h"]
