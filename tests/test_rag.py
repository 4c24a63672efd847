"""The rag reader end to end on the tiny models (tiny random BERT encoder): retrieval far past the window,
evidence with file and line spans, corpora (folders, several files, unreadable files skipped with one
warning line), parameter checks, and the index reused across requests."""

from __future__ import annotations

import json

import pytest

import longreach
from longreach.errors import InputError, SpecError
from longreach.spec import Plan

KEY_LINE = "The pass key is 4242."


def _doc(n: int = 80) -> str:
    lines = [f"Sentence {i} says the sky is blue." for i in range(n)]
    lines.insert(n // 2, KEY_LINE)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("retriever", ["bm25", "dense", "hybrid"])
def test_ask_reads_far_past_the_window(tiny, rag_env, retriever):
    text = _doc()  # ~2.8k byte tokens: 5-10 times the tiny windows
    spec = f"rag:chunk=48,overlap=8,top_k=4,retriever={retriever}"
    a = longreach.ask(text=text, question="What is the pass key?", model=tiny, method=spec, max_new_tokens=4)
    assert a.reach is None and a.input_tokens > 2 * tiny.info.window
    assert a.evidence and all(e.startswith("[lines ") for e in a.evidence)
    for e in a.evidence:  # each passage is the document's text at the lines it names
        span, body = e[len("[lines "):].split("] ", 1)
        first, last = map(int, span.split("-"))
        lines = "\n".join(text.split("\n")[first - 1:last])
        assert body in lines and (body.split("\n")[0] in text.split("\n")[first - 1])
    if retriever != "dense":  # BM25 finds the only chunk with "pass" and "key" (the encoder is random)
        assert any(KEY_LINE in e for e in a.evidence)
    b = longreach.ask(text=text, question="What is the pass key?", model=tiny, method=spec, max_new_tokens=4)
    assert (a.answer, a.evidence) == (b.answer, b.evidence)  # deterministic, second time from the cache


def test_bm25_alone_needs_no_encoder(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGREACH_EMBED_MODEL", str(tmp_path / "absent"))
    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    a = longreach.ask(text=_doc(), question="pass key?", model=llama, method="rag:retriever=bm25,chunk=32,overlap=8",
                      max_new_tokens=2)
    assert any(KEY_LINE in e for e in a.evidence)
    with pytest.raises(SpecError, match="not a Hugging Face model folder"):
        longreach.ask(text=_doc(), question="pass key?", model=llama, method="rag:chunk=32,overlap=8", max_new_tokens=2)


def test_folder_corpus_names_files_and_skips_unreadable(llama, rag_env, tmp_path, capsys):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(f"Alpha line {i} is here." for i in range(30)) + "\n")
    (folder / "sub" / "b.md").write_text("# Notes\n\nNothing.\n" + KEY_LINE + "\nMore text.\n")
    (folder / "c.bin").write_bytes(b"\x00\x01binary")
    (folder / "d.txt").write_bytes(b"caf\xe9 latin-1")
    (folder / ".hidden.txt").write_text("The pass key is 9999.")
    a = longreach.ask(folder, "What is the pass key?", model=llama, method="rag:retriever=bm25,chunk=32,overlap=8",
                      max_new_tokens=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("longreach: warning: skipped ") for line in err)
    assert any("c.bin" in line and "binary" in line for line in err)
    assert any("d.txt" in line and "not UTF-8" in line for line in err)
    assert a.evidence[0] == f"[{folder / 'sub' / 'b.md'}:4-4] {KEY_LINE}"
    assert not any("9999" in e for e in a.evidence)


def test_several_files_are_one_corpus(llama, rag_env, tmp_path):
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("The zorp is red.\nThe sky is blue.\n")
    two.write_text("Line one.\nThe blick is green.\n")
    a = longreach.ask([one, two], "What colour is the blick?", model=llama,
                      method="rag:retriever=bm25,chunk=24,overlap=0,top_k=1", max_new_tokens=2)
    assert a.evidence == [f"[{two}:2-2] The blick is green."]
    b = longreach.ask([one, two], "zorp or blick?", model=llama,
                      method="rag:retriever=bm25,chunk=24,overlap=0,top_k=4", max_new_tokens=2)
    assert [e.split("]")[0] for e in b.evidence] == [f"[{one}:1-1", f"[{two}:2-2"]  # document order


def test_explicit_bad_file_and_empty_folder_are_errors(llama, rag_env, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(InputError, match="not UTF-8"):
        longreach.ask([bad], "q?", model=llama, method="rag:retriever=bm25")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="is a folder with no readable text file"):
        longreach.ask(empty, "q?", model=llama, method="rag:retriever=bm25")


def test_folder_with_the_default_reader_is_joined(llama, tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    a = longreach.ask(tmp_path, "what?", model=llama, max_new_tokens=1)
    assert a.input_tokens > len("=== a.txt ===\nalpha\n\n=== b.txt ===\nbeta")


@pytest.mark.parametrize("spec,fragment", [
    ("rag:overlap=200,chunk=256", "overlap=200"),
    ("rag:chunk=4", "too small"),
    ("rag:top_k=0", "top_k"),
    ("rag:retriever=tfidf", "retriever"),
    ("rag:embed_window=10", "embed_window=10"),
    ("rag:situated=3000", "situated=3000"),
    ("rag:pool=-1", "pool=-1"),
])
def test_bad_parameters_are_one_line(spec, fragment):
    with pytest.raises(SpecError, match=fragment) as exc:
        Plan.from_spec(spec)
    assert "\n" not in str(exc.value)


def test_chunk_larger_than_the_window_is_refused(llama, rag_env):
    with pytest.raises(SpecError, match="does not fit"):
        longreach.ask(text=_doc(), question="q?", model=llama, method="rag:chunk=1k,retriever=bm25")


def test_cli_ask_folder_json(rag_env, tmp_path, capsys, monkeypatch):
    """The command line reads a folder as a corpus (tiny model through the API's model argument)."""
    from longreach.cli import main

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(_doc(20))
    import importlib

    ask_mod = importlib.import_module("longreach.ask")
    from conftest import tiny_llama, wrap

    lm = wrap(tiny_llama(), "tiny-llama")
    monkeypatch.setattr(ask_mod, "load_model", lambda name, dtype=None, device="auto": lm)
    code = main(["ask", str(folder), "-q", "pass key?", "--method", "rag:retriever=bm25,chunk=32,overlap=8", "--json",
                 "--max-new-tokens", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code in (0, None) and any(KEY_LINE in e for e in out["evidence"])


def test_new_parameters_reach_the_index_and_index_seconds(llama, rag_env, tmp_path):
    """embed_window / situated name the dense cache; pool limits what is embedded; index_seconds is the
    time spent building in this call (0 when everything was cached)."""
    from longreach.engine import Engine
    from longreach.readers import Request
    from longreach.retrieval.embed import load_embedder

    text = _doc(60)
    spec = "rag:chunk=48,overlap=8,top_k=2,embed_window=128,situated=16,pool=3"
    engine = Engine.for_model(llama)
    a = engine.run(spec, Request(text, "What is the pass key?", max_new_tokens=2))
    assert a.extra["index_built"] and a.extra["index_seconds"] > 0 and a.extra["chunks"] > 3
    assert any(KEY_LINE in e for e in a.evidence)  # BM25 puts the key chunk in the pool and the ranking
    folders = list((tmp_path / "cache" / "rag").glob("*/dense-*"))
    fp = load_embedder(str(rag_env), "cpu", 128).fingerprint
    assert [f.name for f in folders] == [f"dense-{fp}-w128-s16"]
    import numpy as np

    assert int(np.load(folders[0] / "done.npy").sum()) <= 3 < a.extra["chunks"]  # only the pool was embedded
    b = engine.run(spec, Request(text, "What is the pass key?", max_new_tokens=2))
    assert not b.extra["index_built"] and b.extra["index_seconds"] == 0 and b.evidence == a.evidence


def test_memory_precheck_sizes_one_pass_of_a_streaming_reader(llama):
    """A 1M-token input is fine for rag / infiniretri (one window at a time), refused for a full read."""
    from longreach.engine import Engine

    engine = Engine.for_model(llama)
    window = llama.info.window
    for spec in ("rag", "infiniretri", "route"):
        assert Plan.from_spec(spec).held_tokens(llama.info, 1 << 20) == window
        assert engine.refuse(spec, 1 << 20, memory_limit=64 << 20) is None
    assert Plan.from_spec("yarn:factor=4+rag").held_tokens(llama.info, 1 << 20) == 4 * window
    assert Plan.from_spec("none").held_tokens(llama.info, 100) == 100
    # the same budget refuses a plan that holds every token (a rope method reaching the length)
    assert "memory pre-check" in engine.refuse(f"yarn:target={1 << 20}", 1 << 20, memory_limit=64 << 20)


def test_corpus_checks_named_files_before_walking_folders(tmp_path):
    """A bad file named next to a folder fails with its one line before the folder's skip warnings; an
    empty path is an error (not the current folder)."""
    from longreach.textio import open_corpus

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("Some text.")
    (tmp_path / "d" / "b.bin").write_bytes(b"\x00\x01binary")
    warned: list[str] = []
    with pytest.raises(InputError, match="missing.txt: no such file"):
        open_corpus([tmp_path / "d", tmp_path / "missing.txt"], warn=warned.append)
    assert warned == []
    with pytest.raises(InputError, match="empty file name"):
        open_corpus(["", tmp_path / "d"], warn=warned.append)
    corpus = open_corpus([tmp_path / "d"], warn=warned.append)
    assert [f.name for f in corpus.files] == ["a.txt"] and len(warned) == 1
