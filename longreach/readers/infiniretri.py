"""InfiniRetri reader: let the model's own attention pick the sentences worth keeping, chunk by chunk.

Paper: "Infinite Retrieval: Attention Enhanced LLMs in Long-Context Processing" (arXiv 2502.12962).

For each sentence-aligned chunk of the document, one forward pass reads (retained sentences + chunk +
question). A forward pre-hook on the scoring layer's attention module recomputes that layer's queries
(question rows only) and keys from its input hidden states (projections, q/k norms, RoPE from the
position embeddings the model hands the layer) and computes the question -> context attention in
float32; the pass then stops (nothing after the scoring layer runs, no KV cache is kept). The model
keeps its fast attention kernel everywhere: no eager attention, no O(n^2) weights of other layers.

Score of context token j: ``sum_i w_i * sum_{|j'-j| <= window/2} sum_h A[h, i, j']`` where i runs over
the question rows (the prompt after the document), A is the scoring layer's attention and the
question-token importance ``w_i = sum_h sum_{i' in question} A[h, i, i']``. Whole sentences holding
one of the ``top_k`` best tokens are retained (best-scored first if they would overflow the window)
and carried into the next pass. The answer is read from the retained sentences with the normal
prompt, chunked prefill and greedy decoding.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import MemoryBudgetError, SpecError
from ..memory import cache_bytes
from ..prompt import build_prompt, encode, question_last
from ..qk import apply_rope, project_k, project_q
from ..spec import Plan
from . import EngineLike, ReadResult, Request, SessionLike, decode_answer
from .sentences import Sentence, document_tail, iter_chunks, iter_sentences, iter_text

log = logging.getLogger(__name__)

_DOC = "\u2063LONGREACH-DOCUMENT\u2063"  # stands for the document while the prompt is split around it


# ------------------------------------------------------------------------------------- scoring layer
def decoder_layers(model: Any) -> Any:
    return model.get_decoder().layers


def resolve_layer(info: Any, layer: int) -> int:
    """Index of the scoring layer; ``-1`` means the last full-attention layer."""
    types = info.layer_types
    if layer == -1:
        full = [i for i, t in enumerate(types) if t != "sliding_attention"]
        if not full:
            raise SpecError(f"{info.name} has no full-attention layer to score with; infiniretri needs one")
        return full[-1]
    index = layer + info.layers if layer < 0 else layer
    if not 0 <= index < info.layers:
        raise SpecError(f"infiniretri:layer={layer} is out of range; {info.name} has {info.layers} layers")
    if types[index] == "sliding_attention":
        full = [i for i, t in enumerate(types) if t != "sliding_attention"]
        raise SpecError(
            f"infiniretri:layer={layer} is a sliding-window layer of {info.name} (it sees only "
            f"{info.sliding_window} tokens); choose a full-attention layer: {', '.join(map(str, full))}"
        )
    return index


def pass_span(plan: Any, info: Any) -> int:
    """Longest single pass: the native window, or what the plan's other extending methods (rope) reach."""
    return Plan.from_spec(plan).pass_span(info)


def memory_span(engine: EngineLike, plan: Any, span: int, least: int, memory_limit: int | None) -> int:
    """The longest single pass of at most ``span`` tokens whose memory estimate fits (one forward of the whole
    pass: its activations grow with its length), found by bisection; ``least`` tokens must fit, else the
    one-line MemoryBudgetError of that size. A 32k-window model on a small machine thus reads with a
    narrower pass (less room for retained sentences) instead of being refused."""
    try:
        engine.check_memory(plan, span, span, memory_limit)
        return span
    except MemoryBudgetError:
        pass
    engine.check_memory(plan, least, least, memory_limit)  # the smallest useful pass: raises when even it fails
    lo, hi = least, span  # lo fits, hi does not
    while hi - lo > max(1, span // 64):  # within 1/64 of the window: 512 tokens of 32k, 4 of 256
        mid = (lo + hi) // 2
        try:
            engine.check_memory(plan, mid, mid, memory_limit)
            lo = mid
        except MemoryBudgetError:
            hi = mid
    return lo


def _attention_rows(attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    first_row: int) -> torch.Tensor:
    """Attention probabilities of query rows ``first_row:`` over all keys, float32, shape (H, Q, T)."""
    _, t, _ = hidden.shape  # (1, T, hidden)
    # any architecture's projections (fused qkv, q/k norms; longreach.qk), RoPE in float32 when present
    q = project_q(attn, hidden[:, first_row:]).float()  # (1, H, Q, hd)
    k = project_k(attn, hidden).float()  # (1, KV, T, hd)
    if cos is not None:  # (1, T, R) -> (1, 1, T, R); no RoPE (GPT-2): positions are in the hidden states
        cos, sin = cos.float().unsqueeze(1), sin.float().unsqueeze(1)
        q, k = apply_rope(q, cos[:, :, first_row:], sin[:, :, first_row:]), apply_rope(k, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (1, H, T, hd): grouped-query heads
    logits = (q @ k.transpose(-1, -2)) * attn.scaling  # (1, H, Q, T)
    rows = torch.arange(first_row, t, device=hidden.device).unsqueeze(1)  # (Q, 1)
    logits = logits.masked_fill(torch.arange(t, device=hidden.device).unsqueeze(0) > rows, float("-inf"))  # causal
    return logits.softmax(-1)[0]  # (H, Q, T)


def question_attention(session: SessionLike, ids: list[int], layer: int, first_row: int) -> torch.Tensor:
    """One forward pass over ``ids`` (stopped at ``layer``); attention of rows ``first_row:``, (H, Q, T)."""
    return session.probe(ids, layer, lambda module, hidden, cos, sin: _attention_rows(module, hidden, cos, sin,
                                                                                     first_row))


def token_scores(attn: torch.Tensor, ctx: slice, window: int) -> torch.Tensor:
    """Score per context token from the question rows' attention ``attn`` (H, Q, T); shape (C,).

    The question occupies the last Q positions. Heads are summed, each row is smoothed along the
    context with a width-``window`` box (phrase level) and weighted by the row's attention on the question.
    """
    a = attn.sum(0)  # (Q, T)
    q = a.shape[0]
    weight = a[:, a.shape[1] - q:].sum(1, keepdim=True)  # (Q, 1): importance of each question token
    context = a[:, ctx].unsqueeze(1)  # (Q, 1, C)
    kernel = torch.ones(1, 1, window, dtype=a.dtype, device=a.device)
    smooth = F.conv1d(context, kernel, padding=window // 2)[:, 0, : context.shape[-1]]  # (Q, C)
    return (weight * smooth).sum(0)  # (C,)


def select_sentences(sentences: list[Sentence], scores: torch.Tensor, top_k: int,
                     budget: int) -> list[Sentence]:
    """Sentences holding one of the ``top_k`` best tokens, best first while they fit ``budget`` tokens,
    returned in document order."""
    owner = torch.cat([torch.full((len(s.ids),), i, device=scores.device) for i, s in enumerate(sentences)])  # (C,)
    order = torch.sort(scores, descending=True, stable=True).indices[: min(top_k, len(scores))]
    best: dict[int, None] = {}
    for j in order.tolist():  # sentences in order of their best token
        best.setdefault(int(owner[j]), None)
    kept, used = [], 0
    for i in best:
        if used + len(sentences[i].ids) <= budget:
            kept.append(i)
            used += len(sentences[i].ids)
    return [sentences[i] for i in sorted(kept)]


# ------------------------------------------------------------------------------------------- reader
@dataclasses.dataclass
class InfiniRetriReader:
    """Chunk, score with one layer's attention, retain whole sentences, answer from what was retained."""

    chunk: int = 1024
    top_k: int = 300
    window: int = 8
    layer: int | str = "auto"  # calibrated once per model (readers/infiniretri_layer.py), or a layer number
    answer: bool = True  # False: retrieval only (evidence = the retained sentences, no answer pass)
    name = "infiniretri"
    streams = True  # reads Request.document given as a str, a file path or an iterable of str pieces

    def read(self, engine: EngineLike, plan: Any, request: Request, progress: bool = False) -> ReadResult:
        tok, info = engine.tokenizer, engine.info
        layer = resolve_layer(info, -1 if self.layer == "auto" else int(self.layer))
        question = request.question
        span = pass_span(plan, info)
        query = question if question.strip() else self._tail_query(tok, request.document, span // 8)
        prefix, suffix = self._prompt_parts(tok, query, request.answer_prefix, request.prompt)
        budget = span - len(prefix) - len(suffix) - self.chunk - request.max_new_tokens
        if budget <= 0:
            raise SpecError(
                f"infiniretri:chunk={self.chunk} leaves no room for retained sentences in the "
                f"{span:,}-token window of {info.name}; use chunk <= {max(16, (budget + self.chunk) // 2)} "
                f"(or a rope method that widens the window)"
            )
        # a pass is one forward of chunk + retained sentences: bound it by memory as well as by the window
        # (the retained sentences then get less room), refusing only when the chunk alone does not fit
        try:
            fits = memory_span(engine, plan, span, span - budget + 1, request.memory_limit)
        except MemoryBudgetError as exc:
            raise MemoryBudgetError(f"one infiniretri pass: {exc}, or a smaller infiniretri:chunk (now "
                                    f"{self.chunk})") from None
        budget -= span - fits

        retained: list[Sentence] = []
        doc_tokens, passes, longest = 0, 0, 0
        bar = tqdm(unit="tok", unit_scale=True, desc="infiniretri", disable=not progress, leave=False)
        t0 = time.perf_counter()
        with engine.session(plan) as sess:
            calibration = None
            if self.layer == "auto":  # the earliest layer that ranks planted needles as well as the best one
                from .infiniretri_layer import calibrated_layer

                full = [i for i, t in enumerate(info.layer_types) if t != "sliding_attention"]
                tokens = min(2 * self.chunk, fits - len(prefix) - len(suffix) - request.max_new_tokens - 64)
                c0 = time.perf_counter()
                try:
                    calibration = calibrated_layer(engine, sess, full, tokens, self.window, request.prompt,
                                                   progress)
                    layer = calibration.layer
                except SpecError as exc:  # no room for a calibration document: the paper's last layer
                    log.warning("%s; scoring with the last full-attention layer (layer=-1)", exc)
                calibration_seconds = time.perf_counter() - c0  # ~0 once calibrated: memory or disk
            sentences = iter_sentences(iter_text(request.document))
            chunks: Iterable[list[Sentence]] = iter_chunks(sentences, tok, self.chunk)
            for chunk in chunks:
                context = retained + chunk
                ids = prefix + [t for s in context for t in s.ids] + suffix
                attn = question_attention(sess, ids, layer, len(ids) - len(suffix))
                ctx = slice(len(prefix), len(ids) - len(suffix))
                scores = token_scores(attn, ctx, self.window)
                retained = select_sentences(context, scores, self.top_k, budget)
                new = sum(len(s.ids) for s in chunk)
                doc_tokens += new
                passes += 1
                longest = max(longest, len(ids))
                bar.update(new)
            bar.close()
            t1 = time.perf_counter()
            answer, out, prompt, held = "", [], [], 0
            if self.answer:
                evidence_text = "".join(s.text for s in retained)
                answer_text = build_prompt(tok, evidence_text, question, request.answer_prefix, request.prompt)
                prompt = encode(tok, answer_text)
                # the cache method's question-agnostic preparation: the question is not compressed
                cache = sess.make_cache(answer_text, prompt, question)
                logits = sess.prefill(prompt, cache, request.chunk_size)
                t2 = time.perf_counter()
                out, answer_ids = decode_answer(engine, sess, cache, logits, len(prompt), request)
                answer = tok.decode(answer_ids, skip_special_tokens=True).strip()
                held = cache_bytes(cache)
            else:  # retrieval only (alr2:source=infiniretri quotes from the retained sentences itself)
                t2 = t1
            t3 = time.perf_counter()
        extra: dict[str, Any] = {
            "passes": passes, "document_tokens": doc_tokens, "longest_pass_tokens": longest,
            "retained_tokens": sum(len(s.ids) for s in retained), "answer_prompt_tokens": len(prompt),
            "scoring_seconds": round(t1 - t0, 3), "scoring_layer": layer}
        if calibration is not None:
            extra.update(scoring_layer_mrr=calibration.mrr, calibration_seconds=round(calibration_seconds, 3))
        return ReadResult(
            answer=answer,
            output_ids=out,
            input_tokens=doc_tokens + len(prefix) + len(suffix),
            prefill_seconds=t2 - t0,
            decode_seconds=t3 - t2,
            kv_cache_bytes=held,
            evidence=[s.text.strip() for s in retained],
            extra=extra,
        )

    @staticmethod
    def _tail_query(tok: Any, document: Any, max_tokens: int) -> str:
        """No question: the end of the document is the query (as in the paper), at most ``max_tokens``."""
        ids = tok(document_tail(document), add_special_tokens=False).input_ids
        return tok.decode(ids[-max_tokens:])

    @staticmethod
    def _prompt_parts(tok: Any, question: str, answer_prefix: str, fmt: str = "auto"
                      ) -> tuple[list[int], list[int]]:
        """Token ids of the prompt before and after the document (the question rows are the latter: a
        question-first format scores with the question after the document, the answer prompt keeps it)."""
        before, _, after = build_prompt(tok, _DOC, question, answer_prefix, question_last(fmt)).partition(_DOC)
        return encode(tok, before), tok(after, add_special_tokens=False).input_ids
