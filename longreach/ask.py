"""``longreach.ask``: one question about one or more long documents."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .engine import Engine
from .memory import PeakMemory
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .prompt import check_format, effective_prefix, resolve_format
from .readers import Request
from .spec import Plan
from .textio import check_question, open_corpus, read_documents
from .units import MAX_LENGTH, check_count, parse_bytes


@dataclasses.dataclass
class Answer:
    """The answer and what it cost."""

    answer: str
    input_tokens: int
    output_tokens: int
    prefill_seconds: float
    decode_seconds: float
    peak_memory_bytes: int
    kv_cache_bytes: int
    model: str
    method: str
    dtype: str
    window: int
    reach: int | None
    evidence: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # the reader's (rag: retrieval, route: decision)
    answer_prefix: str = ""  # the text the prompt ended with (given, or derived from the question by +prefix)
    prompt: str = ""  # the concrete prompt format used (what auto became for this model)

    @property
    def full_answer(self) -> str:
        """The answer as a sentence: the answer prefix (when there was one) followed by the answer."""
        return f"{self.answer_prefix.strip()} {self.answer}".strip() if self.answer_prefix.strip() else self.answer

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.input_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prefill_tokens_per_second"] = round(self.prefill_tokens_per_second, 1)
        d["full_answer"] = self.full_answer
        return d

    def __str__(self) -> str:
        return self.answer


def ask(
    files: str | Path | Sequence[str | Path] | None = None,
    question: str | None = None,
    *,
    text: str | None = None,
    model: str | LoadedModel = DEFAULT_MODEL,
    method: str | Plan | None = "none",
    max_new_tokens: int = 64,
    answer_prefix: str = "",
    prompt: str = "auto",
    chunk_size: int = 2048,
    dtype: str | None = None,
    device: str | None = "auto",
    memory_limit: str | int | None = None,
    progress: bool = False,
) -> Answer:
    """Answer ``question`` about ``files`` (paths of files or folders, ``-`` for stdin) or about ``text``.

    >>> import longreach
    >>> a = longreach.ask("report.txt", "What is the pass key?")      # doctest: +SKIP
    >>> a.answer, a.input_tokens, a.peak_memory_bytes                  # doctest: +SKIP
    """
    question = check_question(question)
    plan = Plan.from_spec(method)  # validate the spec and every option before spending time on the model
    max_new_tokens = check_count(max_new_tokens, "max_new_tokens", 1, MAX_LENGTH)
    chunk_size = check_count(chunk_size, "chunk_size", 1, MAX_LENGTH)
    limit = parse_bytes(memory_limit) if memory_limit is not None else None
    prompt = check_format(prompt)
    reader = plan.make_reader()
    if text is not None:
        document: Any = text
    else:
        paths = [files] if isinstance(files, (str, Path)) else list(files or [])
        if not paths or any(str(p) == "-" for p in paths):
            document = read_documents(paths)  # stdin: read whole
        else:
            corpus = open_corpus(paths)  # folders walked; unreadable files inside them skipped with a warning
            if getattr(reader, "corpus", False):
                document = corpus  # the reader reads the files one by one (rag: evidence names file and lines)
            elif len(corpus.files) == 1 and getattr(reader, "streams", False):
                document = corpus.files[0]  # a streaming reader reads the file in pieces
            else:
                document = read_documents(corpus.files)
    lm = model if isinstance(model, LoadedModel) else load_model(model, dtype=dtype, device=device)
    plan.check(lm.info)
    prompt = resolve_format(prompt, lm.info.name, lm.info.chat_template)  # auto: this model's measured format
    request = Request(document, question, max_new_tokens, answer_prefix, chunk_size, limit, prompt)
    engine = Engine.for_model(lm)
    with PeakMemory(engine.device) as peak:
        result = engine.run(plan, request, progress=progress)
    return Answer(
        answer=result.answer,
        input_tokens=result.input_tokens,
        output_tokens=len(result.output_ids),
        prefill_seconds=round(result.prefill_seconds, 3),
        decode_seconds=round(result.decode_seconds, 3),
        peak_memory_bytes=peak.peak,
        kv_cache_bytes=result.kv_cache_bytes,
        model=lm.name,
        method=plan.spec,
        dtype=lm.info.dtype,
        window=lm.info.window,
        reach=plan.reach(lm.info),
        evidence=result.evidence,
        extra=result.extra,
        answer_prefix=effective_prefix(question, answer_prefix, prompt),
        prompt=prompt,
    )
