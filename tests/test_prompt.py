"""Prompt formats (``BASE[+MOD...]``), derived answer prefixes, ``auto`` resolution and the comparison summary."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
from pathlib import Path

import pytest
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach import prompt as P
from longreach.errors import InputError, LongreachError
from longreach.prompt import build_prompt, derive_prefix, parse_format, resolve_format

DOC = "The ledger was moved to the third shelf of the east archive. Rain fell all day."
Q = "Which shelf holds the missing ledger?"
CHAT = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}"
ALL_FORMATS = [str(parse_format("+".join([b, *mods]))) for b in ("chat", "plain")
               for r in range(4) for mods in itertools.combinations(P.MODIFIERS, r)
               if not {"qfirst", "both"} <= set(mods)]


@pytest.fixture(autouse=True)
def shipped_table(monkeypatch):
    """These tests resolve `auto` with the shipped, measured table (the rest of the suite uses the bare formats of
    tests/data/prompt_formats_tests.json, see conftest.py)."""
    monkeypatch.setenv(P.FORMAT_TABLE_ENV, str(P.FORMAT_TABLE))
    P.format_table.cache_clear()
    yield
    monkeypatch.undo()
    P.format_table.cache_clear()


@pytest.fixture(scope="module")
def base_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    tok = byte_tokenizer()
    tok.chat_template = CHAT
    return tok


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_builds_with_document_once_and_question_in_place(fmt, chat_tok, base_tok):
    parsed = parse_format(fmt)
    tok = chat_tok if parsed.base == "chat" else base_tok
    text = build_prompt(tok, DOC, Q, "", fmt)
    assert text.count(DOC) == 1
    assert text.count(Q) == (2 if "both" in parsed.mods else 1)
    doc_at, q_first, q_last = text.index(DOC), text.index(Q), text.rindex(Q)
    assert (q_first < doc_at) == ("qfirst" in parsed.mods or "both" in parsed.mods)
    assert (q_last > doc_at) == ("qfirst" not in parsed.mods)
    assert ("<|user|>" in text) == (parsed.base == "chat")  # the chat template only for chat formats
    assert (P.INSTRUCTION in text) == ("instruct" in parsed.mods)
    prefix = "The shelf that holds the missing ledger is"
    assert text.endswith(prefix) == ("prefix" in parsed.mods)
    if parsed.base == "chat":  # one user turn, the answer starts after the generation prompt
        assert text.count("<|user|>") == 1 and text.index("<|bot|>") > text.rindex(Q)


def test_bare_formats_are_byte_identical_to_the_old_templates(chat_tok, base_tok):
    assert build_prompt(base_tok, f" {DOC}\n", f" {Q} ", "", "plain") == f"{DOC}\n\nQuestion: {Q}\nAnswer:"
    assert build_prompt(base_tok, DOC, Q, " The shelf is ", "plain") == f"{DOC}\n{Q} The shelf is"
    assert build_prompt(chat_tok, DOC, Q, "The shelf is", "chat") == f"<|user|>{DOC}\n\n{Q}<|end|><|bot|>The shelf is"
    # auto without a model name: the template decides (chat_default / base_default of the shipped table)
    table = P.format_table()
    assert build_prompt(chat_tok, DOC, Q, "", "auto") == build_prompt(chat_tok, DOC, Q, "", table["chat_default"])
    assert build_prompt(base_tok, DOC, Q, "", "auto") == build_prompt(base_tok, DOC, Q, "", table["base_default"])
    assert build_prompt(chat_tok, DOC, Q, "", "auto") != build_prompt(base_tok, DOC, Q, "", "auto")


def test_exact_layouts_of_the_modifiers(chat_tok, base_tok):
    i = P.INSTRUCTION
    assert build_prompt(base_tok, DOC, Q, "", "plain+qfirst") == f"Question: {Q}\n\n{DOC}\n\nAnswer:"
    assert build_prompt(base_tok, DOC, Q, "", "plain+both+instruct") == (
        f"{i}\n\nQuestion: {Q}\n\n{DOC}\n\nQuestion: {Q}\nAnswer:")
    assert build_prompt(base_tok, DOC, Q, "X is", "plain+qfirst") == f"Question: {Q}\n\n{DOC}\nX is"
    assert build_prompt(chat_tok, DOC, Q, "", "chat+both+instruct") == (
        f"<|user|>{i}\n\n{Q}\n\n{DOC}\n\n{Q}<|end|><|bot|>")


def test_prefix_modifier_derives_only_when_the_caller_gave_none(base_tok):
    assert build_prompt(base_tok, DOC, Q, "", "plain+prefix").endswith(f"\n{Q} The shelf that holds the missing ledger is")
    assert build_prompt(base_tok, DOC, Q, "It is on shelf", "plain+prefix").endswith(f"{Q} It is on shelf")
    # no rule applies: the prompt is the one without the modifier
    yes_no = "Is the ledger on the third shelf?"
    assert build_prompt(base_tok, DOC, yes_no, "", "plain+prefix") == build_prompt(base_tok, DOC, yes_no, "", "plain")
    assert P.effective_prefix(Q, "", "chat+prefix") == "The shelf that holds the missing ledger is"
    assert P.effective_prefix(Q, "", "chat") == "" and P.effective_prefix(Q, "Given", "plain") == "Given"


def test_chat_on_a_model_without_template_is_one_line(base_tok):
    with pytest.raises(InputError, match="no chat template") as err:
        build_prompt(base_tok, DOC, Q, "", "chat+prefix")
    one_line(err.value)


@pytest.mark.parametrize("fmt,fragment", [
    ("xml", "unknown prompt format 'xml'"), ("plain+fancy", "unknown prompt modifier 'fancy'"),
    ("plain+qfirst+both", "use one of them"), ("chat+prefix+prefix", "repeats 'prefix'"),
    ("prefix", "is a modifier"), ("", "not a format name"), (None, "not a format name"), ("plain+", "modifier ''"),
])
def test_bad_formats_are_one_line_errors(fmt, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        parse_format(fmt)
    one_line(err.value)


def test_canonical_spelling():
    assert P.check_format(" Plain+Prefix+qfirst ") == "plain+qfirst+prefix"
    assert P.check_format("chat+prefix+instruct") == "chat+instruct+prefix"
    assert P.question_last("plain+qfirst+prefix") == "plain+prefix" and P.question_last("chat+both") == "chat+both"


# ------------------------------------------------------------------------------------------ resolution
def test_resolution_table():
    table = P.format_table()
    assert table["version"] == 1 and table["source"].endswith("prompt-formats.md")
    for name, fmt in table["models"].items():  # the shipped entries are concrete and resolve to themselves
        assert resolve_format("auto", name, parse_format(fmt).base == "chat") == str(parse_format(fmt))
        assert P.resolve_by_name("auto", name) == str(parse_format(fmt))
    assert resolve_format("auto", "some-local-folder", True) == table["chat_default"]
    assert resolve_format("auto", None, False) == table["base_default"]
    assert P.resolve_by_name("auto", "some-local-folder") is None
    assert P.resolve_by_name("plain+both", "some-local-folder") == "plain+both"
    # auto+MODS: the entry's base with exactly these modifiers
    base = parse_format(table["models"]["gemma3-270m"]).base
    assert resolve_format("auto+prefix+qfirst", "gemma3-270m", False) == f"{base}+qfirst+prefix"
    assert resolve_format("plain+instruct", "smollm2-135m", True) == "plain+instruct"  # concrete: unchanged
    with pytest.raises(InputError, match="no chat template"):
        resolve_format("chat", "gemma3-270m", False)


def test_resolution_follows_the_table(monkeypatch):
    table = {"version": 1, "models": {"m-chat": "chat+prefix", "m-base": "plain+both"}, "chat_default": "plain+instruct",
             "base_default": "plain+qfirst", "source": "x"}
    monkeypatch.setattr(P, "format_table", lambda path=None: table)
    assert resolve_format("auto", "M-Chat", True) == "chat+prefix"
    assert resolve_format("auto", "m-chat", False) == "plain+qfirst"  # a chat entry never lands on a base model
    assert resolve_format("auto", "m-base", False) == "plain+both"
    assert resolve_format("auto", "other", True) == "plain+instruct"
    assert resolve_format("auto+instruct", "m-chat", True) == "chat+instruct"


def test_a_broken_table_is_one_line(tmp_path):
    for bad, fragment in [({"models": {"m": "auto"}, "chat_default": "chat", "base_default": "plain"}, "not a concrete"),
                          ({"models": {}, "chat_default": "chat", "base_default": "chat"}, "base_default"),
                          ({"models": {"m": "plain+qfirst+both"}, "chat_default": "chat", "base_default": "plain"},
                           "models.m"), ({"chat_default": "chat"}, "no 'models'")]:
        path = tmp_path / "t.json"
        path.write_text(json.dumps(bad))
        P.format_table.cache_clear()
        with pytest.raises(InputError, match=fragment) as err:
            P.format_table(str(path))
        one_line(err.value)
    P.format_table.cache_clear()


def test_engine_run_gives_readers_the_resolved_format(llama, monkeypatch):
    from longreach.engine import Engine
    from longreach.prompt import encode
    from longreach.readers import Request

    table = {"version": 1, "models": {"tiny-llama": "plain+both"}, "chat_default": "chat",
             "base_default": "plain", "source": "x"}
    monkeypatch.setattr(P, "format_table", lambda path=None: table)
    result = Engine(llama).run("none", Request(DOC, Q, max_new_tokens=1))
    want = len(encode(llama.tokenizer, build_prompt(llama.tokenizer, DOC, Q, "", "plain+both")))
    assert result.input_tokens == want != len(encode(llama.tokenizer, build_prompt(llama.tokenizer, DOC, Q, "", "plain")))


def test_infiniretri_scores_with_the_question_after_the_document(base_tok):
    from longreach.readers.infiniretri import InfiniRetriReader

    before, after = InfiniRetriReader._prompt_parts(base_tok, Q, "", "plain+qfirst")
    assert Q in base_tok.decode(after) and Q not in base_tok.decode(before)


# ------------------------------------------------------------------------------------------ derived prefix
@pytest.mark.parametrize("question,prefix", [
    ("What is the secret ingredient of the Velmora stew?", "The secret ingredient of the Velmora stew is"),
    ("What's the pass key?", "The pass key is"),
    ("What is the vault made of?", "The vault is made of"),
    ("What colour is the door?", "The colour of the door is"),
    ("Which shelf holds the missing ledger?", "The shelf that holds the missing ledger is"),
    ("Which city is the capital of Norway?", "The capital of Norway is"),
    ("Who is the captain of the ship?", "The captain of the ship is"),
    ("Who wrote the letter?", "The person who wrote the letter is"),
    ("Where is the ledger kept?", "The ledger is kept"),
    ("Where was the meeting held?", "The meeting was held"),
    ("Where is the seabed?", "The seabed is"),
    ("When was the treaty signed?", "The treaty was signed"),
    ("How many coins are in the chest?", "The number of coins in the chest is"),
    ("How many guards watch the gate?", "The number of guards that watch the gate is"),
    ("How much flour is in the jar?", "The amount of flour in the jar is"),
    ("How old is the captain?", "The captain is"),
    ("Read the report. What is the code?", "The code is"),
    ("Who is in charge of the boat club of Mirefield?", "The person in charge of the boat club of Mirefield is"),
    ("What password opens the Zephyria entrance?", "The password that opens the Zephyria entrance is"),
    ("How many trees does the orchard of Lunaris have?", "The orchard of Lunaris has"),
    ("In which vault can the silver spyglass of Thornby be found?", "The silver spyglass of Thornby can be found in"),
    ("In which room is the key kept?", "The key is kept in"),
    # requests ("Tell me ...") are questions too
    ("Tell me the pass key.", "The pass key is"),
    ("Tell me where the sealed diary of Northmarch is kept.", "The sealed diary of Northmarch is kept"),
    ("Tell me which ship carried the timber from Fenwald.", "The ship that carried the timber from Fenwald is"),
    ("Tell me how many windows the cathedral of Orrin has.", "The cathedral of Orrin has"),
    ("Can you tell me where the key is hidden?", "The key is hidden"),
    # no rule: no prefix
    ("Is the key 42?", ""), ("How many books did Anna buy?", ""), ("What does the code do?", ""),
    ("What year was the bridge built?", ""), ("Tell me a story.", ""), ("What is the pass key", ""),
    ("What happened to the ship?", ""), ("Which of the ships sank?", ""), ("Who did Anna meet?", ""),
    ("Why?", ""), ("", ""),
])
def test_derive_prefix_rules(question, prefix):
    assert derive_prefix(question) == prefix


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_derive_prefix_never_raises_and_stays_short(text):
    out = derive_prefix(text)
    assert isinstance(out, str) and len(out) <= 160 and "\n" not in out and out == out.strip()
    if not text.strip().endswith("?") and not any(r in text.lower() for r in P._REQUESTS):
        assert out == ""  # neither a question nor a request ("Tell me ..."): no prefix
    if out:
        assert len(out) <= len(text) + 20 and out[0] == out[0].upper()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["the", "red", "ledger", "of", "Velmora", "kept", "in", "shelf"]), min_size=1,
                max_size=8), st.sampled_from(["What is", "Where was", "Which shelf holds", "How many coins are"]))
def test_derive_prefix_keeps_the_question_words(words, start):
    question = f"{start} {' '.join(words)}?"
    out = derive_prefix(question)
    if out:  # every word of the question's subject survives, in order (the first one capitalised)
        rest = iter(w.lower() for w in out.split())
        assert all(any(w.lower() == x for x in rest) for w in words), (question, out)


# ------------------------------------------------------------------------------------------ harness and ask
def _oracle_cfg(tmp_path, **kw):
    from longreach.bench.runner import load_config

    return load_config(None, dict(methods="none", tasks="passkey", lengths="1k", depths=1, out=str(tmp_path / "o"),
                                  **kw))


def test_bench_defaults_to_auto_and_records_the_concrete_format(tmp_path):
    from longreach.bench.backends import OracleBackend
    from longreach.bench.runner import BenchConfig, run_bench

    base = P.format_table()["base_default"]  # what auto becomes for a model without a chat template
    assert BenchConfig().prompt == "auto"
    run_bench(_oracle_cfg(tmp_path), progress=False, backend=OracleBackend())
    out = tmp_path / "o"
    assert json.loads((out / "sweep.json").read_text())["settings"]["prompt"] == base  # byte tokenizer: base
    assert json.loads((out / "config.json").read_text())["prompt"] == base
    run_bench(_oracle_cfg(tmp_path, prompt=base), progress=False, backend=OracleBackend())  # the same sweep
    with pytest.raises(LongreachError, match=re.escape(f"prompt='{base}'")) as err:
        run_bench(_oracle_cfg(tmp_path, prompt="plain+qfirst"), progress=False, backend=OracleBackend())
    one_line(err.value)


def test_a_backend_known_only_after_loading_settles_auto_on_its_folder(tmp_path):
    from longreach.bench.runner import run_bench

    base = P.format_table()["base_default"]
    run_bench(_oracle_cfg(tmp_path, backend="oracle"), progress=False)  # auto: resolved once the backend is up
    out = tmp_path / "o"
    assert json.loads((out / "sweep.json").read_text())["settings"]["prompt"] == base
    assert run_bench(_oracle_cfg(tmp_path, backend="oracle"), progress=False).cells_skipped == 1  # resumed
    assert run_bench(_oracle_cfg(tmp_path, backend="oracle", prompt=base), progress=False).cells_skipped == 1
    with pytest.raises(LongreachError, match=re.escape(f"prompt='{base}'")) as err:
        run_bench(_oracle_cfg(tmp_path, backend="oracle", prompt="plain+qfirst"), progress=False)
    one_line(err.value)


def test_bench_config_checks_the_format():
    from longreach.bench.runner import early_prompt

    with pytest.raises(LongreachError, match="--prompt: unknown prompt modifier") as err:
        _oracle_cfg(Path("/nonexistent"), prompt="plain+xml")
    one_line(err.value)
    cfg = _oracle_cfg(Path("/nonexistent"), prompt="Plain+Prefix")
    assert cfg.prompt == "plain+prefix"
    known = _oracle_cfg(Path("/nonexistent"), model="gemma3-270m")
    assert early_prompt(known) == P.resolve_by_name("auto", "gemma3-270m") == P.format_table()["models"]["gemma3-270m"]
    assert early_prompt(_oracle_cfg(Path("/nonexistent"), model="/some/folder")) == "auto"  # needs the tokenizer


def test_ask_shows_prefix_and_answer(llama):
    from longreach.ask import ask

    a = ask(text=DOC, question=Q, model=llama, prompt="plain+prefix", max_new_tokens=2)
    assert a.prompt == "plain+prefix" and a.answer_prefix == "The shelf that holds the missing ledger is"
    assert a.full_answer == f"{a.answer_prefix} {a.answer}".strip()
    d = a.as_dict()
    assert d["answer"] == a.answer and d["answer_prefix"] == a.answer_prefix and d["full_answer"] == a.full_answer
    plain = ask(text=DOC, question=Q, model=llama, max_new_tokens=1)  # auto on a base model: the table's format
    assert plain.prompt == P.resolve_format("auto", "tiny-llama", False) and plain.full_answer == plain.answer


def test_cli_prompt_option_is_checked():
    from longreach.cli import build_parser

    args = build_parser().parse_args(["ask", "f.txt", "-q", "q?", "--prompt", "plain+prefix+qfirst"])
    assert args.prompt == "plain+qfirst+prefix"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ask", "f.txt", "-q", "q?", "--prompt", "plain+qfirst+both"])


# ------------------------------------------------------------------------------------------ the comparison summary
def _driver():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "prompt_formats.py"
    spec = importlib.util.spec_from_file_location("prompt_formats_driver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _fake_folder(root, model, fmt, scores, hays, seconds=2.0):
    folder = root / model / fmt.replace("+", "-")
    cell = folder / "cells" / model / "none" / "qa-mix" / "4k"
    cell.mkdir(parents=True)
    with (cell / "samples.jsonl").open("w") as f:
        for i, (s, h) in enumerate(zip(scores, hays)):
            f.write(json.dumps({"id": f"d0-s{i}", "model": model, "method": "none", "task": "qa-mix",
                                "task_spec": "qa-mix", "length": 4096, "depth": 0.5, "seed": i, "tokens": 4000,
                                "references": ["x"], "score": s, "seconds": seconds, "prediction": "x",
                                "input_tokens": 4000, "error": None, "meta": {"haystack": h, "style": "direct"}}) + "\n")
        f.write(json.dumps({"id": "refused", "model": model, "method": "none", "task": "qa-mix", "task_spec": "qa-mix",
                            "length": 4096, "depth": 0.5, "seed": 99, "tokens": 0, "references": [], "score": 0.0,
                            "seconds": 0.0, "prediction": "", "input_tokens": 0, "error": "refused: x",
                            "refused": True, "meta": {}}) + "\n")
    (cell / "metrics.json").write_text(json.dumps({"load_average": [1.5, 1.0, 0.5]}))
    (folder / "config.json").write_text(json.dumps({"prompt": fmt, "model_name": model, "tasks": ["qa-mix"],
                                                    "lengths": [4096], "runs": [{"command": "longreach bench", "git": "abc",
                                                                                 "date": "d"}]}))


def test_summary_of_a_fake_results_folder(tmp_path):
    drv = _driver()
    root = tmp_path / "prompt-formats"
    _fake_folder(root, "smollm2-135m", "chat", [1, 0, 0, 1, 0], ["code", "prose", "prose", "code", "lists"])
    _fake_folder(root, "smollm2-135m", "plain+prefix", [1, 1, 1, 0, 1], ["code", "prose", "prose", "code", "lists"], 3.0)
    _fake_folder(root, "gemma3-270m", "plain", [1, 1, 0, 0], ["code"] * 4)
    _fake_folder(root, "gemma3-270m", "plain+both", [1, 1, 0, 0], ["code"] * 4, seconds=1.0)
    s = drv.summarize(root)
    rows = {(r["model"], r["format"]): r for r in s["rows"]}
    r = rows[("smollm2-135m", "plain+prefix")]
    assert r["n"] == 5 and r["correct"] == 4 and r["accuracy"] == 0.8  # the refused record is left out
    assert r["ci95"] == pytest.approx(_wilson_by_hand(4, 5), abs=1e-9)
    assert drv.wilson(2.5, 5) == pytest.approx(_wilson_by_hand(2.5, 5), abs=1e-9)
    assert r["splits"]["haystack"]["prose"] == {"n": 2, "correct": 2, "accuracy": 1.0, "ci95": list(drv.wilson(2, 2))}
    assert r["seconds_per_sample"] == 3.0 and r["load_average_max"] == 1.5
    assert s["best"] == {"smollm2-135m": "plain+prefix", "gemma3-270m": "plain"}  # a tie: fewer modifiers wins
    result = drv.write_summary(root, tmp_path / "prompt-formats", "python benchmarks/prompt_formats.py", ["a note"])
    md = (tmp_path / "prompt-formats.md").read_text()
    assert "| `plain+prefix` | 80% | 38%-96% | 5 |" in md and "By haystack" in md and "a note" in md
    assert (tmp_path / "prompt-formats.png").stat().st_size > 1000
    assert json.loads((tmp_path / "prompt-formats.json").read_text())["best"] == result["best"]
    table = tmp_path / "table.json"
    table.write_text(P.FORMAT_TABLE.read_text())
    new = drv.apply_best(result, table)
    assert new["models"]["smollm2-135m"] == "plain+prefix" and new["chat_default"] == "plain+prefix"
    assert new["base_default"] == "plain" and new["models"]["gemma3-270m"] == "plain"
    P.format_table.cache_clear()
    P.format_table(str(table))  # still a valid table
    P.format_table.cache_clear()


def test_the_packaged_chat_template_gets_one_user_turn_and_the_prefix():
    """SmolLM2's real template (tokenizer only, no weights): one user turn, the prefix after the assistant tag."""
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    text = build_prompt(tok, DOC, Q, "", "chat+both+prefix")
    assert text.count("<|im_start|>user") == 1 and text.count(Q) == 2 and text.count(DOC) == 1
    assert text.endswith("<|im_start|>assistant\nThe shelf that holds the missing ledger is")
    assert resolve_format("auto", "smollm2-135m", P.has_chat_template(tok)) == P.format_table()["models"]["smollm2-135m"]


def test_the_shipped_table_holds_the_measured_best_formats():
    """longreach/data/prompt_formats.json is what benchmarks/prompt_formats.py --apply wrote from the committed
    measurement: each packaged model's best format, and the defaults for other chat / base models."""
    shipped = P.format_table(str(P.FORMAT_TABLE))
    measured = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                           / "prompt-formats.json").read_text())
    assert shipped["models"] == measured["best"] and set(shipped["models"]) == {"smollm2-135m", "gemma3-270m"}
    assert shipped["chat_default"] == measured["best"]["smollm2-135m"]  # the packaged chat model's
    assert shipped["base_default"] == measured["best"]["gemma3-270m"]  # the packaged base model's
    for fmt in (shipped["chat_default"], shipped["base_default"]):
        assert not P.is_auto(fmt)


def test_a_table_of_ones_own_via_the_environment(tmp_path, monkeypatch):
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"version": 1, "models": {"my-model": "plain+instruct"}, "chat_default": "chat+both",
                               "base_default": "plain+qfirst"}))
    monkeypatch.setenv(P.FORMAT_TABLE_ENV, str(own))
    P.format_table.cache_clear()
    try:
        assert P.resolve_format("auto", "my-model", False) == "plain+instruct"
        assert P.resolve_format("auto", "other", True) == "chat+both"
        assert P.resolve_format("auto", "other", False) == "plain+qfirst"
        own.write_text("{not json")
        P.format_table.cache_clear()
        with pytest.raises(InputError, match=r"LONGREACH_PROMPT_FORMATS") as err:
            P.resolve_format("auto", "other", False)
        assert "\n" not in str(err.value)
    finally:
        monkeypatch.undo()
        P.format_table.cache_clear()
