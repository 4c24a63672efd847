"""The ``dataset`` task: official benchmark files (built by hand here, in each published layout), the
official prompts, refusals instead of truncation, and every official metric on hand-computed values."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import byte_tokenizer

from longreach.bench import official_metrics as om
from longreach.bench.task import BenchError, make_task, prompt_tokens
from longreach.bench.tasks.dataset import SampleRefused, split_label

TOK = byte_tokenizer()
STORY = "Mara kept the lighthouse on Keel Island for eleven winters. " * 8


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def task(fmt, path, **kw):
    extra = "".join(f",{k}={v}" for k, v in kw.items())
    return make_task(f"dataset:format={fmt},path={path}{extra}")


def lb_row(dataset="narrativeqa", i=0, **kw):
    row = {"input": f"Who kept the lighthouse? ({i})", "context": STORY, "answers": ["Mara"], "length": 90,
           "dataset": dataset, "language": "en", "all_classes": None, "_id": f"id{i}"}
    row.update(kw)
    return row


# ------------------------------------------------------------------------------------ metrics by hand
def test_qa_f1_and_normalisation():
    assert om.normalize_answer("The Cat, sat!") == "cat sat"
    assert om.qa_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)  # P = 2/2, R = 2/3
    assert om.qa_f1("cat", "dog") == 0.0
    assert om.qa_f1("Mara.", "mara") == 1.0
    assert om.exact_match("The Mara", "mara") == 1.0 and om.exact_match("Mara Keel", "mara") == 0.0
    assert om.qa_f1_zh_chars("灯塔守护者", "灯塔") == pytest.approx(2 * 1 * 0.4 / 1.4)  # P = 2/5, R = 1


def test_rouge_l_as_the_rouge_package():
    # one sentence each: distinct words 5 and 5, LCS words {the, cat, on, mat} -> P = R = 0.8
    assert om.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(0.8, abs=1e-6)
    # two predicted sentences: union of the LCS with each = {a, c}; R = 2/2, P = 2/4 -> F = 2/3
    assert om.rouge_l("a b. c d", "a c") == pytest.approx(2 / 3, abs=1e-6)
    assert om.rouge_l("", "a c") == 0.0 and om.rouge_l("...", "a c") == 0.0  # the package raises: 0
    assert om.rouge_l("x y", "a c") == 0.0


def test_longbench_metrics():
    classes = ["Location", "Description", "Human being", "Human"]
    assert om.classification_score("Human being", "Human being", classes) == 1.0  # "Human" is part of it
    assert om.classification_score("Location or Human being", "Human being", classes) == 0.5
    assert om.classification_score("Description", "Human being", classes) == 0.0
    # the official loop skips the element after a removal: "ab" survives, so 1/2
    assert om.classification_score("abc", "abc", ["a", "ab", "abc"]) == 0.5
    assert om.count_score("There are 3 unique, not 4", "3") == 0.5
    assert om.count_score("no number", "3") == 0.0
    assert om.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
    assert om.retrieval_score("Paragraph 1 or Paragraph 12", "Paragraph 12") == 0.5
    assert om.retrieval_score("段落3", "段落3", zh=True) == 1.0
    assert om.fuzz_ratio("abcd", "abce") == 75  # 2 x 3 matching / 8 characters
    assert om.code_sim_score("```python\n    return x + 1\n```", "    return x + 1") == 1.0
    assert om.code_sim_score("# comment\nabcd", "abce") == 0.75  # lines with # are skipped
    assert om.longbench_score("trec", "Human being\nLocation", ["Human being"], classes) == 1.0  # first line
    assert om.longbench_score("narrativeqa", "Mara", ["the keeper", "Mara"]) == 1.0  # best gold answer
    assert om.longbench_score("gov_report", "a b. c d", ["a c"]) == pytest.approx(2 / 3, abs=1e-6)


def test_longbench_v2_and_ruler_and_loogle_metrics():
    assert om.longbench_v2_letter("**The correct answer is (B)**") == "B"
    assert om.longbench_v2_letter("The correct answer is C, because") == "C"
    assert om.longbench_v2_letter("I think it is B") is None
    assert om.ruler_match_all("1234 and 5678", ["1234", "5678", "9999"]) == pytest.approx(2 / 3)
    assert om.ruler_match_all("SILENT-harbor", ["silent-Harbor"]) == 1.0
    assert om.ruler_match_part("1234 and 5678", ["9999", "5678"]) == 1.0
    assert om.ruler_match_part("none", ["9999"]) == 0.0
    masks = {"<mask-0>": "Bob", "<mask-1>": "Keel"}
    assert om.loogle_cloze_match("{'<mask-0>': 'Bob', '<mask-1>': 'Keel'}", masks) == 1.0
    assert om.loogle_cloze_match("{'<mask-0>': 'Bob', '<mask-1>': 'Reef'}", masks) == 0.5
    assert om.loogle_cloze_match("Bob and Keel", masks) == 0.0  # not a dict literal
    assert om.loogle_cloze_match("__import__('os')", masks) == 0.0  # never evaluated


def test_infinitebench_metrics():
    s = om.infinitebench_score
    assert s("passkey", "71432. Remember it.", ["71432"]) == 1.0
    assert s("passkey", "is 7 or 71432", ["71432"]) == 0.0  # the first integer counts
    assert s("kv_retrieval", 'The value is "abc-1".', ["abc-1"]) == 1.0
    assert s("kv_retrieval", "abc-12", ["abc-1"]) == 0.0
    label = ["Snowfield", "C"]
    assert s("longbook_choice_eng", " C", label) == 1.0
    assert s("longbook_choice_eng", "B. Hall Farm", label) == 0.0
    assert s("longbook_choice_eng", "so the answer is: Snowfield", label) == 1.0
    assert s("code_debug", "C. cmd_gen", ["cmd_gen", "C"]) == 1.0
    assert s("code_debug", "The correct option is: A", ["cmd_gen", "C"]) == 0.0
    assert s("math_find", " 88, then 90", [88]) == 1.0
    assert s("math_calc", "[1, 4, 9, 13]", [1, 4, 8, 12]) == 0.5  # right until the first mistake
    assert s("code_run", "it returns 5. The value is 7", [7]) == 1.0
    assert s("longdialogue_qa_eng", "Ace Rothstein", ["ACE", "ACE ROTHSTEIN"]) == 1.0
    assert s("longbook_qa_eng", "the cat sat", ["a cat sat down"]) == pytest.approx(0.8)


def test_split_label():
    assert split_label("\n\nNow answer.\n\nQuestion: Who?\n\nAnswer:") == ("Now answer.\n\nQuestion: Who?", "Answer:")
    assert split_label("\n\nThe final answer is: ") == ("", "The final answer is:")
    assert split_label("\nQuestion: a long question without a label") == ("Question: a long question without a "
                                                                        "label", "")


# ------------------------------------------------------------------------------------------ formats
def test_longbench_rows_prompts_and_scores(tmp_path):
    f = jsonl(tmp_path / "narrativeqa.jsonl", [lb_row(i=i) for i in range(3)])
    t = task("longbench", f)
    s = t.generate(TOK, 2000, seed=1)
    assert s.context.startswith("You are given a story") and s.context.endswith(STORY)
    assert s.question.endswith("Question: Who kept the lighthouse? (1)") and s.answer_prefix == "Answer:"
    assert s.max_new_tokens == 128 and s.meta["row"] == 1 and s.meta["id"] == "id1"
    assert s.meta["tokens"] == prompt_tokens(TOK, s) and s.meta["tokens"] + 128 <= 2000
    assert t.score(s, "Mara") == 1.0  # right
    # verbose: "mara keeper of lighthouse" -> P = 1/4, R = 1
    assert t.score(s, "Mara, the keeper of the lighthouse") == pytest.approx(2 * 0.25 / 1.25)
    assert t.score(s, "Old Mara Keel") == pytest.approx(0.5)  # partial: P = 1/3, R = 1
    assert t.score(s, "I could not find it.") == 0.0  # wrong
    assert t.generate(TOK, 2000, seed=1) == s and t.generate(TOK, 2000, seed=2).meta["row"] == 2


def test_longbench_classification_code_count_and_subset(tmp_path):
    rows = [lb_row("trec", input="Question: Where is Keel Island?\nType:", answers=["Location"],
                   all_classes=["Location", "Human being", "Description"]),
            lb_row("lcc", input="", context="def f(x):\n    y = x + 1\n", answers=["    return y"]),
            lb_row("repobench-p", input="class A:\n    def g(self):\n", context="# utils.py\nimport os\n",
                   answers=["        return os.sep"]),
            lb_row("passage_count", answers=[7])]
    f = jsonl(tmp_path / "mixed.jsonl", rows)
    trec = task("longbench", f, subset="trec")
    s = trec.generate(TOK, 2000, seed=0)
    assert s.answer_prefix == "Type:" and s.question == "Question: Where is Keel Island?"
    assert s.max_new_tokens == 64 and trec.max_new_tokens == 64
    assert trec.score(s, "Location\nQuestion: next") == 1.0 and trec.score(s, "Location or Description") == 0.5
    lcc = task("longbench", f, subset="lcc").generate(TOK, 2000, seed=0)
    assert lcc.answer_prefix == "Next line of code:" and lcc.question == ""
    assert task("longbench", f).score(lcc, "    return y\n") == 1.0
    repo = task("longbench", f, subset="repobench-p").generate(TOK, 2000, seed=0)
    assert repo.context.endswith("import os\nclass A:\n    def g(self):\n")  # the file's code continues it
    count = task("longbench", f, subset="passage_count")
    s = count.generate(TOK, 2000, seed=0)
    assert s.references == ["7"] and s.answer_prefix == "The final answer is:"
    assert count.score(s, "7") == 1.0 and count.score(s, "7 or 8") == 0.5
    with pytest.raises(SampleRefused, match="seed 1"):
        count.generate(TOK, 2000, seed=1)  # one passage_count row


def test_longbench_v2(tmp_path):
    rows = [{"_id": f"v{i}", "domain": "Single-Document QA", "sub_domain": "Literary", "difficulty": d,
             "length": "short", "question": "Who kept the lighthouse?", "choice_A": "Mara", "choice_B": "Ona",
             "choice_C": "Ivo", "choice_D": "Pell", "answer": "A", "context": STORY} for i, d in
            enumerate(["easy", "hard"])]
    f = tmp_path / "data.json"
    f.write_text(json.dumps(rows))  # LongBench-v2's data.json: one JSON array
    t = task("longbench-v2", f)
    s = t.generate(TOK, 2000, seed=0)
    assert s.context.startswith("Please read the following text") and s.context.endswith("</text>")
    assert "(A) Mara\n(B) Ona" in s.question and s.question.endswith('"The correct answer is (insert answer here)".')
    assert t.score(s, "The correct answer is (A)") == 1.0
    assert t.score(s, "**The correct answer is A** since Mara kept it.") == 1.0  # verbose
    assert t.score(s, "The correct answer is (B)") == 0.0 and t.score(s, "A") == 0.0  # not in the asked form
    hard = task("longbench-v2", f, subset="hard").generate(TOK, 2000, seed=0)
    assert hard.meta["id"] == "v1"
    assert task("longbench-v2", f, subset="single-document-qa").generate(TOK, 2000, seed=1).meta["id"] == "v1"


def test_loogle_official_layout_and_flat_rows(tmp_path):
    pairs = [{"Q": "Who kept the lighthouse?", "A": "Mara kept it", "S": ["Mara kept the lighthouse"],
              "type": "comprehension_and_reasoning"},
             {"Q": "For how long?", "A": "eleven winters", "S": [], "type": "computation"}]
    cloze = [{"Q": "<mask-0> kept the lighthouse on <mask-1>.", "A": {"<mask-0>": "Mara", "<mask-1>": "Keel Island"},
              "S": []}]
    rows = [{"input": STORY, "title": "Keel", "qa_pairs": repr(pairs), "output": "none"},  # a Python literal
            {"input": STORY, "title": "Keel", "qa_pairs": json.dumps(cloze), "output": "none"},
            {"input": STORY, "title": "Keel", "qa_pairs": "none", "output": "Mara kept a lighthouse."},
            {"context": STORY, "question": "Where?", "answer": "Keel Island", "type": "timeline_reorder"}]
    f = jsonl(tmp_path / "loogle.jsonl", rows)
    t = task("loogle", f)
    s = t.generate(TOK, 3000, seed=1)  # the second question of the first document
    assert s.meta["row"] == 0 and s.meta["kind"] == "longdep_qa" and s.meta["type"] == "computation"
    assert s.context.startswith("Please answer the question based on the long texts below.")
    assert s.question == "Question: For how long?" and s.answer_prefix == "Answer:" and s.max_new_tokens == 500
    assert t.score(s, "eleven winters") == 1.0 and t.score(s, "eleven") == pytest.approx(2 / 3)
    c = t.generate(TOK, 3000, seed=2)
    assert c.meta["kind"] == "shortdep_cloze" and c.max_new_tokens == 50
    assert t.score(c, "{'<mask-0>': 'Mara', '<mask-1>': 'Keel Island'}") == 1.0
    assert t.score(c, "{'<mask-0>': 'Mara'}") == 0.5
    summ = t.generate(TOK, 3000, seed=3)
    assert summ.meta["kind"] == "summarization" and summ.answer_prefix == "Summarization:"
    assert t.score(summ, "Mara kept a lighthouse.") == pytest.approx(1.0, abs=1e-6)
    flat = t.generate(TOK, 3000, seed=4)
    assert flat.meta["type"] == "timeline_reorder" and flat.references == ["Keel Island"]
    only = task("loogle", f, subset="computation")
    assert only.generate(TOK, 3000, seed=0).question == "Question: For how long?"
    records = [{"meta": {"kind": "longdep_qa"}, "prediction": "The eleven winters.", "references": ["eleven winters"]},
               {"meta": {"kind": "longdep_qa"}, "prediction": "ten", "references": ["eleven winters"]}]
    assert t.cell_metrics(records) == {"exact_match": 0.5}


def test_infinitebench_tasks_from_file_names(tmp_path):
    hay = "Noise. " * 30 + "The pass key is 71432. " + "Noise. " * 30
    f = jsonl(tmp_path / "passkey.jsonl", [{"id": 0, "context": hay, "input": "What is the pass key?",
                                            "answer": ["71432"], "options": []}])
    t = task("infinitebench", f)
    s = t.generate(TOK, 1000, seed=0)
    assert s.answer_prefix == "The pass key is" and s.max_new_tokens == 6 and s.context.startswith("There is an")
    assert t.score(s, " 71432.") == 1.0 and t.score(s, "7143") == 0.0
    choice = jsonl(tmp_path / "longbook_choice_eng.jsonl", [
        {"id": 0, "context": STORY, "input": "Who kept it?", "answer": ["Mara"],
         "options": ["Ona", "Mara", "Ivo", "Pell"]}])
    t = task("infinitebench", choice)
    s = t.generate(TOK, 2000, seed=0)
    assert "Question: Who kept it?\nA. Ona\nB. Mara" in s.question and s.meta["label"] == ["Mara", "B"]
    assert t.score(s, " B") == 1.0 and t.score(s, " A. Ona") == 0.0
    other = jsonl(tmp_path / "mine.jsonl", [{"id": 0, "context": "def func_1(x):\n    return x + 2\n",
                                             "input": "What is func_1(3)?", "answer": 5}])
    with pytest.raises(BenchError, match="subset="):
        task("infinitebench", other).generate(TOK, 1000, seed=0)
    s = task("infinitebench", other, subset="code_run").generate(TOK, 1000, seed=0)
    assert s.answer_prefix == "The value of func_1(3) is" and s.context.startswith("There is a function called func_1")
    assert task("infinitebench", other, subset="code_run").score(s, " 5") == 1.0


def test_ruler_validation_file(tmp_path):
    folder = tmp_path / "niah_single_1"
    folder.mkdir()
    prompt = ("Some special magic numbers are hidden within the following text.\n" + "The grass is green. " * 20 +
              "One of the special magic numbers for calm-lake is: 4921733.\n"
              "What are all the special magic numbers for calm-lake mentioned in the provided text?")
    f = jsonl(folder / "validation.jsonl", [{"index": 0, "input": prompt, "outputs": ["4921733"], "length": 250,
                                             "answer_prefix": " The special magic numbers for calm-lake mentioned "
                                                              "in the provided text are"}])
    t = task("ruler", f)
    s = t.generate(TOK, 1000, seed=0)
    assert s.question.startswith("What are all the special magic numbers") and "4921733" in s.context
    assert s.answer_prefix.startswith("The special magic numbers") and s.max_new_tokens == 128
    assert t.score(s, " 4921733.") == 1.0 and t.score(s, "4921734") == 0.0
    qa = jsonl(tmp_path / "qa.jsonl", [{"index": 0, "input": "Docs.\n\nQuestion: Where?",
                                        "outputs": ["Keel", "Keel Island"]}])
    t = task("ruler", qa, subset="qa_1")
    s = t.generate(TOK, 500, seed=0)
    assert t.score(s, "on keel island") == 1.0 and t.max_new_tokens == 32  # string_match_part


def test_parquet_reads_like_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [lb_row(i=i, all_classes=[]) for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "nqa.parquet")
    a = task("longbench", tmp_path / "nqa.parquet").generate(TOK, 2000, seed=1)
    b = task("longbench", jsonl(tmp_path / "nqa.jsonl", rows)).generate(TOK, 2000, seed=1)
    assert (a.context, a.question, a.references) == (b.context, b.question, b.references)


def test_parquet_without_a_reader_names_the_fix(tmp_path, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(BenchError, match="pip install pyarrow"):
        task("longbench", tmp_path / "x.parquet").generate(TOK, 2000)


# ------------------------------------------------------------------------------- ceilings and errors
def test_a_row_longer_than_the_length_is_refused_not_truncated(tmp_path):
    t = task("longbench", jsonl(tmp_path / "n.jsonl", [lb_row()]))
    full = t.generate(TOK, 4000, seed=0).meta["tokens"]
    with pytest.raises(SampleRefused, match="refused, not truncated") as exc:
        t.generate(TOK, full + 127, seed=0)  # one token short of prompt + the 128-token answer
    assert exc.value.tokens == full
    assert t.generate(TOK, full + 128, seed=0).meta["tokens"] == full


def test_limit_and_the_seed_to_row_mapping(tmp_path):
    t = task("longbench", jsonl(tmp_path / "n.jsonl", [lb_row(i=i) for i in range(5)]), limit=2)
    assert [t.generate(TOK, 2000, seed=k).meta["row"] for k in (0, 1)] == [0, 1]
    with pytest.raises(SampleRefused, match="2 selected rows"):
        t.generate(TOK, 2000, seed=2)


@pytest.mark.parametrize("rows, message", [
    ([{"input": "q", "answers": ["a"], "dataset": "narrativeqa"}], r"row 0: has no 'context' field"),
    ([lb_row(), lb_row(answers=[])], r"row 1: field 'answers' is not a non-empty list"),
    ([lb_row(dataset="")], r"row 0: has no 'dataset' field; name the LongBench dataset with subset="),
    ([lb_row(dataset="nope")], r"unknown LongBench dataset 'nope'"),
    ([lb_row("trec")], r"trec has no 'all_classes'"),
    (["not an object"], r"row 0: is str, not an object"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_row(tmp_path, rows, message):
    f = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BenchError, match=message) as exc:
        task("longbench", f).generate(TOK, 2000, seed=0)
    assert str(f) in str(exc.value) and "\n" not in str(exc.value)


def test_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(lb_row()) + "\n{not json\n")
    with pytest.raises(BenchError, match="line 2: not JSON"):
        task("longbench", bad).generate(TOK, 2000)
    with pytest.raises(BenchError, match="No such file"):
        task("longbench", tmp_path / "missing.jsonl").generate(TOK, 2000)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(BenchError, match="use .jsonl, .json or .parquet"):
        task("longbench", tmp_path / "x.csv").generate(TOK, 2000)
    with pytest.raises(BenchError, match="format must be one of"):
        make_task(f"dataset:format=longbenchx,path={bad}")
    with pytest.raises(BenchError, match="give path="):
        make_task("dataset:format=ruler")
    with pytest.raises(BenchError, match="no longbench rows for subset=qasper"):
        task("longbench", jsonl(tmp_path / "n.jsonl", [lb_row()]), subset="qasper").generate(TOK, 2000)


def test_chinese_metric_without_jieba_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    f = jsonl(tmp_path / "zh.jsonl", [lb_row("multifieldqa_zh")])
    with pytest.raises(BenchError, match="pip install jieba"):
        task("longbench", f).generate(TOK, 2000)


def test_an_edited_file_changes_the_fingerprint(tmp_path):
    f = jsonl(tmp_path / "n.jsonl", [lb_row()])
    t = task("longbench", f)
    before = t.data_fingerprint()
    jsonl(f, [lb_row(answers=["Ona"]), lb_row()])
    assert t.data_fingerprint() != before and t.generate(TOK, 2000, seed=0).references == ["Ona"]


def test_packaged_tokenizer_counts_the_chat_prompt(tmp_path):
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    t = task("longbench", jsonl(tmp_path / "n.jsonl", [lb_row()]))
    s = t.generate(tok, 4096, seed=0)
    assert s.meta["tokens"] == prompt_tokens(tok, s) and 50 < s.meta["tokens"] < 1000
    with pytest.raises(SampleRefused):
        t.generate(tok, s.meta["tokens"] + 100, seed=0)
