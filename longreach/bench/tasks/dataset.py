"""``dataset``: a user's own copy of an official long-context benchmark, scored with its official metric.

``dataset:format=F,path=FILE[,subset=S][,limit=N]`` reads FILE (``.jsonl``, ``.json``: a list of rows or
JSON Lines, ``.parquet``: needs pyarrow or pandas) in the benchmark's published layout and builds each
prompt with the benchmark's own template; nothing is downloaded, generated or truncated.

| format | paper | rows | prompt, answer budget | metric (:mod:`longreach.bench.official_metrics`) |
|---|---|---|---|---|
| longbench | arXiv 2308.14508 | input, context, answers, dataset, all_classes, length, _id | dataset2prompt, dataset2maxlen | dataset2metric: QA F1, ROUGE-L, classification, retrieval, count, code edit similarity |
| longbench-v2 | arXiv 2412.15204 | _id, domain, sub_domain, difficulty, length, question, choice_A..D, answer, context | 0-shot template, 128 | the letter of "The correct answer is (X)" == answer |
| loogle | arXiv 2311.04939 | input, title, qa_pairs ([{Q, A, S, type}], JSON or Python literal), output; or one QA per row (input/context, question/Q, answer/A) | task2prompt, task2maxlen | QA: token F1 (exact match in the cell metrics); cloze: masks matched; summary: ROUGE-L |
| infinitebench | arXiv 2402.13718 | id, context, input, answer, options | the open-model templates, per-task budget | compute_scores.py per task |
| ruler | arXiv 2404.06654 | index, input, outputs, length, answer_prefix (validation.jsonl) | the file's prompt, tokens_to_generate | string_match_all (string_match_part for qa) |

``subset``: LongBench's ``dataset`` (needed when rows have none), InfiniteBench's task, RULER's task (both
read from the file name when it is one, e.g. ``kv_retrieval.jsonl``, ``niah_single_1/validation.jsonl``),
LooGLE's question ``type`` or file kind (shortdep_qa, longdep_qa, shortdep_cloze, summarization),
LongBench-v2's difficulty, length or domain (spaces written as ``-``). ``limit``: use the first N rows
(after ``subset``); 0 = all.

Sample ``seed`` -> row: the harness's sample seeds are ``--seed + i`` (i = 0 .. --samples-1), and seed
``s`` is row ``s`` of the selected rows in file order (LooGLE: the ``s``-th question, documents in file
order); a seed past the last row is refused. ``--lengths`` is a ceiling: a row whose prompt (with the
evaluated model's tokenizer and template) plus its answer budget is longer than the length raises
:class:`SampleRefused` (never truncated). The sample's real token count is in ``meta["tokens"]``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import official_metrics as om
from ..task import BenchError, Sample, SampleRefused, Task, make_task, prompt_tokens, register_task

FORMATS = ("longbench", "longbench-v2", "loogle", "infinitebench", "ruler")


# ---------------------------------------------------------------------------------------- templates
# LongBench config/dataset2prompt.json and dataset2maxlen.json
LONGBENCH_PROMPT: dict[str, str] = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",  # noqa: E501
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",  # noqa: E501
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",  # noqa: E501
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",  # noqa: E501
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",  # noqa: E501
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",  # noqa: E501
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",  # noqa: E501
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
LONGBENCH_MAXLEN: dict[str, int] = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}
LONGBENCH_CLASSIFICATION = ("trec", "lsht")

# LongBench-v2 prompts/0shot.txt
V2_HEAD = "Please read the following text and answer the question below.\n\n<text>\n"
V2_QUESTION = ("What is the correct answer to this question: {q}\nChoices:\n(A) {a}\n(B) {b}\n(C) {c}\n(D) {d}\n\n"
               'Format your response as follows: "The correct answer is (insert answer here)".')

# InfiniteBench src/prompt.py, the open-model templates (yarn_mistral_templates, used for Yi and ChatGLM3
# too), split as (text before the context, question after it, answer prefix); eval_utils.py budgets
_IB_FIND = "There is an important info hidden inside a lot of irrelevant text. Find it"
INFINITEBENCH: dict[str, tuple[str, str, str, int]] = {
    "passkey": (f"{_IB_FIND} and memorize it. I will quiz you about the important information.\n\n", "{input}",
                "The pass key is", 6),
    "number_string": (f"{_IB_FIND}. I will quiz you about the important information there.\n\n", "{input}",
                      "The sequence of digits is", 12),
    "kv_retrieval": ("Extract the value corresponding to the specified key in the JSON object below.\n\n", "{input}",
                     "", 50),
    "longbook_sum_eng": ("Summarize the book below.\n\n", "", "Summary:", 1200),
    "longbook_choice_eng": ("Read the book and answer the question.\n\n",
                            "Question: {input}\nA. {A}\nB. {B}\nC. {C}\nD. {D}", "The letter of the correct answer is",
                            40),
    "longbook_qa_eng": ("Read the book and answer the question. Be very concise in your answer.\n\n",
                        "Question: {input}", "Answer:", 40),
    "longbook_qa_chn": ("阅读以下书籍然后回答问题。\n\n", "问题：{input}", "答案：", 40),
    "longdialogue_qa_eng": ('Below is a dialogue script where one random occurrence of a character name is replaced '
                            'with "$$MASK$$", and you should try to guess who that character is.\n\n', "",
                            "The name that has been replaced with $$MASK$$ is likely", 40),
    "math_find": ("What is {target} in the following list?\n\n", "{input}", "", 3),
    "math_calc": ("Let us calculate the intermediate values of an expression.\n\nExpression: 1 + 3 + 4\n"
                  "Values: [1, 4, 8]\n\nExpression: 8 - 3 + 2 - 4\nValues: [8, 5, 7, 3]\n\nExpression: ", "",
                  "Values:", 30000),
    "code_run": ("There is a function called {func} in the following Python code.\n\n",
                 "Please compute the exact value of {call}.", "The value of {call} is", 5),
    "code_debug": ("Following is a Python code where exactly one of the functions/methods has a deliberate error "
                   "that makes it crash.\n\n", "Options:\nA. {A}\nB. {B}\nC. {C}\nD. {D}", "The correct option is:", 5),
}

# RULER scripts/data/synthetic/constants.py tokens_to_generate, by task family
RULER_BUDGET = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
RULER_TASK = re.compile(r"^(niah_[a-z0-9_]+|vt|cwe|fwe|qa_[0-9]+)$")

# LooGLE config/task2prompt.json and task2maxlen.json
LOOGLE_QA = ("Please answer the question based on the long texts below. \n", "Question: {q}", "Answer:")
LOOGLE_CLOZE = ("Please fill in the clozes based on the given long texts below. Each of the placeholder '<mask-n>' in "
                "the question could be an entity of Person, Location or Organiocation. The same masks represent the "
                "same entity. Output a json format answer, for example: {'<mask-0>': 'Bob', '<mask-1>': 'Gorrosion "
                "Magazine','<mask-2>': 'Bethel Horizon'}\n", "Question: {q} What are the masked entities?", "Answer:")
LOOGLE_SUMMARY = ("Please generate a summary of the below paper. \n", "", "Summarization:")
LOOGLE_MAXLEN = {"shortdep_qa": 300, "longdep_qa": 500, "shortdep_cloze": 50, "summarization": 500}

#: answer budget of each format when no subset pins it (the sample's own budget is the row's)
DEFAULT_BUDGET = {"longbench": 128, "longbench-v2": 128, "loogle": 500, "infinitebench": 40, "ruler": 128}


# ---------------------------------------------------------------------------------------- reading
_ROWS: dict[tuple[str, int, int], tuple[list[dict[str, Any]], str]] = {}
_ITEMS: dict[tuple[Any, ...], list[Item]] = {}
_ROWS_LOCK = threading.Lock()


def _fail(where: str, what: str, fix: str) -> BenchError:
    return BenchError(f"{where}: {what}; {fix}")


def read_rows(path: str) -> tuple[list[dict[str, Any]], str]:
    """The rows of a ``.jsonl`` / ``.json`` / ``.parquet`` file (each a mapping) and the file's sha256,
    read once per (path, size, mtime)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as exc:
        raise BenchError(f"dataset file {path}: {exc.strerror or exc}; give path= an existing .jsonl, .json or "
                         ".parquet file") from None
    if not p.is_file():
        raise BenchError(f"dataset file {path} is not a file; give path= a .jsonl, .json or .parquet file")
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _ROWS_LOCK:
        if key in _ROWS:
            return _ROWS[key]
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:24]
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(p)
    elif suffix in (".jsonl", ".json"):
        rows = _json_rows(path, raw)
    else:
        raise BenchError(f"dataset file {path}: unknown file type {suffix or '(none)'!r}; use .jsonl, .json or "
                         ".parquet")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _fail(f"{path} row {i}", f"is {type(row).__name__}, not an object", "each row must be a JSON "
                        "object with the benchmark's fields")
    with _ROWS_LOCK:
        if len(_ROWS) >= 8:
            _ROWS.pop(next(iter(_ROWS)))
        _ROWS[key] = (rows, digest)
    return rows, digest


def _json_rows(path: str, raw: bytes) -> list[Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BenchError(f"dataset file {path}: not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8 JSON") from None
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BenchError(f"dataset file {path}: not valid JSON (line {exc.lineno}: {exc.msg}); fix the file or "
                             "write one JSON object per line (.jsonl)") from None
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BenchError(f"dataset file {path} line {n}: not JSON ({exc.msg}); JSON Lines need one complete "
                             "object per line") from None
    return rows


def _parquet_rows(p: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found]
    except ImportError:
        pq = None
    try:
        if pq is not None:
            return pq.read_table(p).to_pylist()
        import pandas as pd  # type: ignore[import-not-found]
    except ImportError:
        raise BenchError(f"dataset file {p}: reading .parquet needs pyarrow: pip install pyarrow (or convert the "
                         "file to .jsonl)") from None
    except Exception as exc:  # noqa: BLE001 - any reader error is the user's file
        raise BenchError(f"dataset file {p}: cannot read it as parquet ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None
    try:
        return json.loads(pd.read_parquet(p).to_json(orient="records", force_ascii=False))
    except Exception as exc:  # noqa: BLE001
        raise BenchError(f"dataset file {p}: cannot read it as parquet ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]})") from None


# ------------------------------------------------------------------------------------------- items
class Item(dict):
    """One prompt to build: ``parts`` (joined into the context only for the sample asked: the rows' long
    texts are not copied), question, prefix, references, budget, row, meta (what the scorer reads)."""


def _text(row: dict[str, Any], field: str, where: str, fmt: str) -> str:
    if field not in row or row[field] is None:
        raise _fail(where, f"has no {field!r} field", f"a {fmt} row needs {field!r} (see docs/datasets.md)")
    value = row[field]
    if not isinstance(value, str):
        raise _fail(where, f"field {field!r} is {type(value).__name__}, not text", f"{fmt} rows hold text there")
    return value


def _text_list(value: Any, where: str, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise _fail(where, f"field {field!r} is not a non-empty list of answers", "give a list of strings")


def split_label(tail: str) -> tuple[str, str]:
    """(question, answer prefix): a short last line ending in ':' becomes the prefix that starts the answer."""
    tail = tail.rstrip()
    body, _, last = tail.rpartition("\n")
    if re.fullmatch(r"[^\n]{1,60}[:：]", last.strip()):
        return body.strip(), last.strip()
    return tail.strip(), ""


def _slug(s: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-")


def longbench_items(rows: list[dict[str, Any]], path: str, subset: str) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        name = str(row.get("dataset") or subset)
        if not name:
            raise _fail(where, "has no 'dataset' field", "name the LongBench dataset with subset= (e.g. "
                        "subset=narrativeqa)")
        name = name.removesuffix("_e")  # LongBench-E rows
        if subset and name != subset.removesuffix("_e"):
            continue
        if name not in LONGBENCH_PROMPT:
            raise _fail(where, f"unknown LongBench dataset {name!r}", f"use one of {', '.join(LONGBENCH_PROMPT)}")
        context, question = _text(row, "context", where, "longbench"), _text(row, "input", where, "longbench")
        answers = _text_list(row.get("answers"), where, "answers")
        classes = row.get("all_classes") or []
        if name in LONGBENCH_CLASSIFICATION and not (isinstance(classes, list) and classes):
            raise _fail(where, f"{name} has no 'all_classes'", "classification rows need the list of classes")
        template = LONGBENCH_PROMPT[name]
        head, _, tail = template.partition("{context}")
        parts = [head, context]
        if tail.startswith("{input}"):  # repobench-p: the file's own code continues the context
            parts, tail = [*parts, question], tail.removeprefix("{input}")
        q, prefix = split_label(tail.replace("{input}", question))
        items.append(Item(row=i, parts=parts, question=q, prefix=prefix, references=answers,
                          budget=LONGBENCH_MAXLEN[name],
                          meta={"dataset": name, "metric": om.LONGBENCH_METRIC[name],
                                "all_classes": [str(c) for c in classes], "id": row.get("_id"),
                                "file_length": row.get("length"), "language": row.get("language")}))
    return items


def longbench_v2_items(rows: list[dict[str, Any]], path: str, subset: str) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        tags = {_slug(row.get(k)) for k in ("difficulty", "length", "domain", "sub_domain") if row.get(k)}
        if subset and _slug(subset) not in tags:
            continue
        fields = {k: _text(row, k, where, "longbench-v2").strip()
                  for k in ("question", "choice_A", "choice_B", "choice_C", "choice_D", "answer")}
        if fields["answer"] not in ("A", "B", "C", "D"):
            raise _fail(where, f"answer {fields['answer']!r} is not a letter", "LongBench-v2 answers are A, B, C or D")
        question = V2_QUESTION.format(q=fields["question"], a=fields["choice_A"], b=fields["choice_B"],
                                      c=fields["choice_C"], d=fields["choice_D"])
        items.append(Item(row=i, parts=[V2_HEAD, _text(row, "context", where, "longbench-v2").strip(), "\n</text>"],
                          question=question, prefix="", references=[fields["answer"]], budget=128,
                          meta={"metric": "letter", "id": row.get("_id"), "difficulty": row.get("difficulty"),
                                "file_length": row.get("length"), "domain": row.get("domain")}))
    return items


def _file_task(path: str, valid: Callable[[str], bool]) -> str:
    p = Path(path)
    for name in (p.stem, p.parent.name):
        name = name.removeprefix("preds_")
        if valid(name):
            return name
    return ""


def infinitebench_items(rows: list[dict[str, Any]], path: str, subset: str) -> list[Item]:
    task = subset or _file_task(path, lambda n: n in INFINITEBENCH)
    if task not in INFINITEBENCH:
        raise BenchError(f"dataset file {path}: {'unknown InfiniteBench task ' + repr(task) if task else 'no task'}; "
                         f"name it with subset= (one of {', '.join(INFINITEBENCH)}) or keep the official file name")
    head, question, prefix, budget = INFINITEBENCH[task]
    items = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        context = _text(row, "context", where, "infinitebench")
        inp = row.get("input") or ""
        if not isinstance(inp, str):
            raise _fail(where, "field 'input' is not text", "InfiniteBench rows hold the question there")
        if "answer" not in row:
            raise _fail(where, "has no 'answer' field", "InfiniteBench rows need 'answer'")
        answer = row["answer"]
        fill: dict[str, str] = {"input": inp}
        if task in ("longbook_choice_eng", "code_debug"):
            opts = row.get("options")
            if not (isinstance(opts, list) and len(opts) >= 4):
                raise _fail(where, "has no list of 4 'options'", f"{task} rows need 'options'")
            fill.update(A=str(opts[0]), B=str(opts[1]), C=str(opts[2]), D=str(opts[3]))
            gold = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
            if isinstance(gold, list) and len(gold) == 2 and gold[1] in ("A", "B", "C", "D"):
                label: Any = [str(gold[0]), gold[1]]
            elif isinstance(gold, str) and gold in opts:
                label = [gold, "ABCD"[opts.index(gold)]]
            else:
                raise _fail(where, f"answer {gold!r} is not one of its options", "give the option's text")
        elif task == "math_find":
            m = re.search(r"The .+ of", inp)
            if not m:
                raise _fail(where, "the input names no 'The ... of' target", "math_find inputs ask for a number")
            fill["target"] = m.group(0).lower()[:-3]
            label = _number(answer[0] if isinstance(answer, list) else answer, where)
        elif task == "code_run":
            m = re.search(r"func_[0-9]+\(\-?[0-9]+\)", inp)
            if not m:
                raise _fail(where, "the input names no call func_N(x)", "code_run inputs name the call")
            fill.update(call=m.group(0), func=m.group(0).split("(")[0])
            label = int(_number(answer[0] if isinstance(answer, list) else answer, where))
        elif task == "math_calc":
            values = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], list) else answer
            if not (isinstance(values, list) and all(isinstance(v, int) for v in values)):
                raise _fail(where, "answer is not a list of integers", "math_calc answers list the values")
            label = values
        else:
            label = _text_list(answer, where, "answer")
        refs = [str(label[0])] if task in ("longbook_choice_eng", "code_debug") else \
            [str(v) for v in label] if isinstance(label, list) else [str(label)]
        items.append(Item(row=i, parts=[_fmt(head, fill), context], question=_fmt(question, fill),
                          prefix=_fmt(prefix, fill), references=refs, budget=budget,
                          meta={"bench_task": task, "label": label, "id": row.get("id")}))
    return items


def _number(value: Any, where: str) -> int | float:
    if isinstance(value, bool):
        raise _fail(where, "answer is not a number", "give a number")
    if isinstance(value, (int, float)):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            return float(str(value).strip())
        except ValueError:
            raise _fail(where, f"answer {value!r} is not a number", "give a number") from None


def _fmt(template: str, fill: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), m.group(0)), template)


def ruler_items(rows: list[dict[str, Any]], path: str, subset: str) -> list[Item]:
    task = subset or _file_task(path, lambda n: bool(RULER_TASK.match(n)))
    if not RULER_TASK.match(task or ""):
        raise BenchError(f"dataset file {path}: {'unknown RULER task ' + repr(task) if task else 'no RULER task'}; "
                         "name it with subset= (niah_single_1 .. niah_multiquery, vt, cwe, fwe, qa_1, qa_2) or keep "
                         "RULER's layout TASK/validation.jsonl")
    family = task.split("_")[0]
    items = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        text = _text(row, "input", where, "ruler")
        refs = _text_list(row.get("outputs"), where, "outputs")
        prefix = row.get("answer_prefix") or ""
        if not isinstance(prefix, str):
            raise _fail(where, "field 'answer_prefix' is not text", "RULER rows hold text there")
        context, _, question = text.rstrip("\n").rpartition("\n")  # RULER's question is the prompt's last line
        items.append(Item(row=i, parts=[context], question=question, prefix=prefix.strip(), references=refs,
                          budget=RULER_BUDGET[family],
                          meta={"bench_task": task, "metric": "part" if family == "qa" else "all",
                                "id": row.get("index"), "file_length": row.get("length")}))
    return items


def _qa_pairs(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, list):
        pairs = value
    elif isinstance(value, str):
        try:
            pairs = json.loads(value)
        except json.JSONDecodeError:
            try:
                pairs = ast.literal_eval(value)  # the official files write Python literals
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise _fail(where, "'qa_pairs' is neither JSON nor a Python literal", "give a list of {Q, A} "
                            "objects") from None
    else:
        raise _fail(where, "'qa_pairs' is not a list", "give a list of {Q, A} objects")
    if not (isinstance(pairs, list) and all(isinstance(p, dict) and "Q" in p and "A" in p for p in pairs)):
        raise _fail(where, "'qa_pairs' is not a list of objects with 'Q' and 'A'", "give a list of {Q, A} objects")
    return pairs


def _masks(answer: Any) -> dict[str, str] | None:
    if isinstance(answer, str) and answer.lstrip().startswith("{"):
        try:
            answer = ast.literal_eval(answer)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return {str(k): str(v) for k, v in answer.items()} if isinstance(answer, dict) else None


def loogle_items(rows: list[dict[str, Any]], path: str, subset: str) -> list[Item]:
    items = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        doc_field = "input" if "input" in row else "context"
        document = _text(row, doc_field, where, "loogle")
        if "qa_pairs" in row:
            qa = row["qa_pairs"]
            pairs = [] if qa in (None, "", "none", "None") else _qa_pairs(qa, where)
            if not pairs:  # summarization: the gold summary is the row's output
                pairs = [{"Q": None, "A": _text(row, "output", where, "loogle summarization")}]
        else:  # one question per row
            q = row.get("question", row.get("Q"))
            a = row.get("answer", row.get("A", row.get("output")))
            if a is None:
                raise _fail(where, "has neither 'qa_pairs' nor 'answer'", "LooGLE rows hold qa_pairs (or "
                            "question and answer)")
            pairs = [{"Q": None if q in (None, "", "none") else q, "A": a, "type": row.get("type", row.get("task"))}]
        for j, pair in enumerate(pairs):
            q, a = pair["Q"], pair["A"]
            masks = _masks(a)
            if q is None:
                kind, (head, question, prefix) = "summarization", LOOGLE_SUMMARY
            elif masks is not None:
                kind, (head, question, prefix) = "shortdep_cloze", LOOGLE_CLOZE
            else:
                kind = "longdep_qa" if pair.get("type") else "shortdep_qa"
                head, question, prefix = LOOGLE_QA
            qtype = pair.get("type") or kind
            if subset and subset not in (qtype, kind) and not (subset == "longdep_summarization" and
                                                                 kind == "summarization"):
                continue
            if q is not None and not isinstance(q, str):
                raise _fail(f"{where} question {j}", "'Q' is not text", "LooGLE questions are text")
            if masks is None and not isinstance(a, str):
                raise _fail(f"{where} question {j}", "'A' is not text", "LooGLE answers are text (a mask dict for "
                            "cloze)")
            refs = [f"{k}: {v}" for k, v in masks.items()] if masks is not None else [a]
            items.append(Item(row=i, parts=[head, document], question=question.replace("{q}", q or ""),
                              prefix=prefix, references=refs, budget=LOOGLE_MAXLEN[kind],
                              meta={"kind": kind, "type": qtype, "question_index": j, "title": row.get("title"),
                                    **({"masks": masks} if masks is not None else {})}))
    return items


BUILDERS = {"longbench": longbench_items, "longbench-v2": longbench_v2_items, "loogle": loogle_items,
            "infinitebench": infinitebench_items, "ruler": ruler_items}


# -------------------------------------------------------------------------------------------- task
@register_task
class Dataset(Task):
    """A user-supplied official benchmark file (LongBench arXiv 2308.14508, LongBench-v2 arXiv 2412.15204,
    LooGLE arXiv 2311.04939, InfiniteBench arXiv 2402.13718, RULER arXiv 2404.06654): each sample is one
    row in the benchmark's own prompt, scored with its official metric; nothing is generated."""

    name = "dataset"
    family = "Official files"
    paper = ("LongBench (arXiv 2308.14508), LongBench v2 (2412.15204), LooGLE (2311.04939), "
             "InfiniteBench (2402.13718), RULER (2404.06654)")
    summary = "a user's copy of LongBench / LongBench-v2 / LooGLE / InfiniteBench / RULER, official prompts"
    scorer = "the benchmark's official metric (QA F1, ROUGE-L, classification, code edit sim, choice accuracy, ...)"
    max_new_tokens = 128

    format: str = ""
    path: str = ""
    subset: str = ""
    limit: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)} (got {self.format!r}); e.g. "
                             "dataset:format=longbench,path=narrativeqa.jsonl")
        if not self.path:
            raise ValueError("give path= the benchmark file (.jsonl, .json or .parquet)")
        if not 0 <= self.limit <= 10_000_000:
            raise ValueError(f"limit must be within [0, 10000000] (0 = every row), got {self.limit}")
        budget = DEFAULT_BUDGET[self.format]
        if self.format == "longbench" and self.subset in LONGBENCH_MAXLEN:
            budget = LONGBENCH_MAXLEN[self.subset]
        elif self.format == "infinitebench" and self.subset in INFINITEBENCH:
            budget = INFINITEBENCH[self.subset][3]
        elif self.format == "ruler" and RULER_TASK.match(self.subset):
            budget = RULER_BUDGET[self.subset.split("_")[0]]
        elif self.format == "loogle" and self.subset in LOOGLE_MAXLEN:
            budget = LOOGLE_MAXLEN[self.subset]
        object.__setattr__(self, "max_new_tokens", budget)  # nominal; each sample uses its row's budget

    # -- rows
    def items(self) -> list[Item]:
        """The selected prompts in file order (after ``subset`` and ``limit``), built once per file version."""
        rows, digest = read_rows(self.path)
        key = (self.format, self.path, self.subset, self.limit, digest)
        with _ROWS_LOCK:
            if key in _ITEMS:
                return _ITEMS[key]
        items = BUILDERS[self.format](rows, self.path, self.subset)
        if not items:
            raise BenchError(f"dataset file {self.path}: no {self.format} rows"
                             f"{' for subset=' + self.subset if self.subset else ''}; check format= and subset=")
        if self.format == "longbench" and any(it["meta"]["dataset"] in om.LONGBENCH_JIEBA for it in items):
            try:
                om.need_jieba()
            except ImportError as exc:
                raise BenchError(f"dataset file {self.path}: {exc}") from None
        if self.format == "infinitebench" and items[0]["meta"]["bench_task"] == "longbook_sum_eng":
            try:
                import rouge_score  # type: ignore[import-not-found]  # noqa: F401
            except ImportError:
                raise BenchError(f"dataset file {self.path}: longbook_sum_eng is scored with ROUGE-Lsum: "
                                 "pip install rouge-score") from None
        items = items[:self.limit] if self.limit else items
        with _ROWS_LOCK:
            if len(_ITEMS) >= 16:
                _ITEMS.pop(next(iter(_ITEMS)))
            _ITEMS[key] = items
        return items

    def data_fingerprint(self) -> str:
        """sha256 (24 hex) of the file's bytes: part of the sample-cache key, so an edited file is re-read."""
        return read_rows(self.path)[1]

    # -- generation
    def generate(self, tokenizer: Any, length: int, seed: int = 0, depth: float | None = 0.5,
                 answer_tokens: int | None = None, **params: Any) -> Sample:
        """Row ``seed``'s prompt, refused (:class:`SampleRefused`) when it plus its answer is beyond ``length``."""
        if params:
            return make_task(self.name, **{**self.params(), **params}).generate(tokenizer, length, seed, depth,
                                                                                answer_tokens)
        items = self.items()
        if not 0 <= seed < len(items):
            raise SampleRefused(f"dataset file {self.path}: no row for seed {seed} ({len(items)} selected rows, "
                                f"seeds 0..{len(items) - 1}); use --samples <= {len(items)} with --seed 0")
        item = items[seed]
        answer = item["budget"] if answer_tokens is None else answer_tokens
        sample = Sample("".join(item["parts"]), item["question"], item["prefix"], list(item["references"]),
                        {"format": self.format, "row": item["row"], **item["meta"]}, max_new_tokens=answer)
        tokens = prompt_tokens(tokenizer, sample)
        if tokens + answer > length:
            raise SampleRefused(f"dataset file {self.path} row {item['row']}: the prompt is {tokens:,} tokens "
                                f"(+{answer} to generate), beyond the length {length:,}; refused, not truncated "
                                "(give a longer --lengths)", tokens=tokens)
        sample.meta.update(task=self.name, spec=self.spec, length=length, seed=seed, depth=None, tokens=tokens)
        return sample

    # -- scoring
    def score(self, sample: Sample, prediction: str) -> float:
        meta, refs = sample.meta, sample.references
        fmt = meta.get("format", self.format)
        if fmt == "longbench":
            return om.longbench_score(meta["dataset"], prediction, refs, meta.get("all_classes") or ())
        if fmt == "longbench-v2":
            return float(om.longbench_v2_letter(prediction) == refs[0])
        if fmt == "infinitebench":
            return om.infinitebench_score(meta["bench_task"], prediction, meta["label"])
        if fmt == "ruler":
            return (om.ruler_match_part if meta["metric"] == "part" else om.ruler_match_all)(prediction, refs)
        if meta["kind"] == "shortdep_cloze":
            return om.loogle_cloze_match(prediction, meta["masks"])
        if meta["kind"] == "summarization":
            return om.rouge_l(prediction, refs[0])
        return max(om.qa_f1(prediction, r) for r in refs)

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """LooGLE QA: the exact-match rate beside the F1 score (SQuAD normalisation)."""
        qa = [r for r in records if (r.get("meta") or {}).get("kind") in ("shortdep_qa", "longdep_qa")
              and not r.get("error") and isinstance(r.get("prediction"), str)]
        if not qa:
            return {}
        hits = [max(om.exact_match(r["prediction"], str(g)) for g in r.get("references") or [""]) for r in qa]
        return {"exact_match": sum(hits) / len(hits)}
