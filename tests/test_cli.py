"""The command line: one-line errors with non-zero exit codes, listings, and `ask` on a tiny model."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from longreach import cli


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def doc(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_text("The sky is blue. " * 10)
    return p


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda d: [str(d / "missing.txt")], "no such file"),
        (lambda d: [str(d)], "is a folder"),
        (lambda d: [str(_write(d / "e.txt", b""))], "empty"),
        (lambda d: [str(_write(d / "b.bin", b"\x00\x01\x02abc"))], "binary"),
        (lambda d: [str(_write(d / "l.txt", b"caf\xe9"))], "not UTF-8"),
    ],
)
def test_bad_files_one_line(tmp_path, capsys, make, fragment):
    code, out, err = run(["ask", *make(tmp_path), "-q", "what?"], capsys)
    assert code == 2 and out == ""
    assert fragment in err and err.count("\n") == 1 and err.startswith("longreach: error:")


def _write(p, data):
    p.write_bytes(data)
    return p


def test_empty_question(doc, capsys):
    code, _, err = run(["ask", str(doc), "-q", "  "], capsys)
    assert code == 2 and "question is empty" in err


def test_unknown_method_before_model_load(doc, capsys):
    code, _, err = run(["ask", str(doc), "-q", "what?", "--method", "warp-drive"], capsys)
    assert code == 2 and "unknown method 'warp-drive'" in err and "valid methods: none" in err


def test_unknown_model(doc, capsys):
    code, _, err = run(["ask", str(doc), "-q", "what?", "--model", "gpt-17"], capsys)
    assert code == 2 and "unknown model 'gpt-17'" in err and "smollm2-135m" in err


def test_bad_numbers(doc, capsys):
    code, _, err = run(["ask", str(doc), "-q", "q?", "--max-new-tokens", "0"], capsys)
    assert code == 2 and "--max-new-tokens" in err


def test_models_and_methods_listing(capsys):
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "smollm2-135m" in out and "8192" in out and "gemma3-270m" in out and "32768" in out
    code, out, _ = run(["methods"], capsys)
    assert code == 0 and out.startswith("none")
    code, out, _ = run(["methods", "--json"], capsys)
    rows = json.loads(out)
    assert isinstance(rows, list) and all({"name", "slot", "params", "paper"} <= set(r) for r in rows)


def test_no_traceback_in_a_real_process(tmp_path):
    """The installed entry point prints one line for a user error, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "longreach.cli", "ask", str(tmp_path / "nope.txt"), "-q", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_ask_json_on_tiny_model(llama, doc, capsys, monkeypatch):
    ask_mod = importlib.import_module("longreach.ask")

    seen = {}
    monkeypatch.setattr(ask_mod, "load_model", lambda name, dtype=None, device="auto": seen.update(
        dtype=dtype, device=device) or llama)
    code, out, err = run(["ask", str(doc), "-q", "Which colour?", "--json", "--max-new-tokens", "5",
                          "--chunk-size", "64", "--device", "cpu"], capsys)
    assert code == 0, err
    assert seen == {"dtype": "auto", "device": "cpu"}
    result = json.loads(out)
    for key in ("answer", "input_tokens", "prefill_seconds", "decode_seconds", "peak_memory_bytes",
                "kv_cache_bytes", "model", "method"):
        assert key in result
    assert result["model"] == "tiny-llama" and result["method"] == "none"
    assert result["input_tokens"] > 170  # 170 document bytes + question + template, byte-level tokens
    # full-precision cache: 2 (k, v) x 2 layers x 2 kv heads x 8 dims x 4 bytes per token
    assert result["kv_cache_bytes"] == 2 * 2 * 2 * 8 * 4 * (result["input_tokens"] + 4)
    assert result["peak_memory_bytes"] > 0


def test_readme_method_table_matches_the_registry(capsys):
    """README's table is `longreach methods --markdown`: every registered method is documented."""
    from pathlib import Path

    code, out, _ = run(["methods", "--markdown"], capsys)
    assert code == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- methods-table -->") + len("<!-- methods-table -->")
    end = readme.index("<!-- /methods-table -->")
    assert readme[start:end].strip() == out.strip(), "regenerate: longreach methods --markdown"


def test_readme_task_table_matches_the_registry(capsys):
    """README's task list is `longreach tasks --markdown`: every registered task is listed with its paper."""
    from pathlib import Path

    code, out, _ = run(["tasks", "--markdown"], capsys)
    assert code == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- tasks-table -->") + len("<!-- tasks-table -->")
    end = readme.index("<!-- /tasks-table -->")
    assert readme[start:end].strip() == out.strip(), "regenerate: longreach tasks --markdown"


def test_every_task_names_its_paper(capsys):
    """`longreach tasks` shows a paper line for every task, and no task has an empty one."""
    from longreach.bench.task import describe_tasks

    rows = describe_tasks()
    assert rows and all(r["paper"].strip() for r in rows), [r["name"] for r in rows if not r["paper"].strip()]
    code, out, _ = run(["tasks"], capsys)
    assert code == 0
    assert out.count("paper: ") == len(rows)
    code, out, _ = run(["tasks", "--markdown"], capsys)
    body = out.strip().splitlines()[2:]
    assert len(body) == len(rows) and all(line.count(" | ") == 4 for line in body)
