"""The agents reader (ExtAgents, arXiv 2505.21471): the split covers the input once (a property over random
sentence lists) with the smallest largest chunk (against brute force), agents=N, one-line errors, findings
parsing, the BM25 ranking against bm25s, the synchronisation and coordinator prompts with a scripted fake
engine, the memory pre-check at 128k, and real reads on the tiny Llama and Gemma 3 (deterministic with and
without threads, the model as loaded afterwards)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from conftest import byte_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import longreach
from longreach.answers import declines
from longreach.engine import Engine
from longreach.errors import SettingError, SpecError
from longreach.memory import estimate_request
from longreach.prefix_cache import PrefixCache
from longreach.prompt import build_prompt, encode
from longreach.readers import ReadResult, Request
from longreach.readers.agents import (
    AGENT_INSTRUCTION,
    DECLINE,
    NOTES_HEADER,
    AgentsReader,
    Finding,
    bm25_scores,
    parse_findings,
    partition,
    rank_findings,
    split_sentences,
)
from longreach.retrieval.bm25 import stopwords, terms
from longreach.spec import Plan

TOK = byte_tokenizer()  # one token per UTF-8 byte: token counts are byte counts


# ------------------------------------------------------------------------------------------------- split
def brute_min_max(sizes: list[int], n: int) -> int:
    """The smallest possible largest part over every split of ``sizes`` into ``n`` contiguous parts."""
    best = None
    for cuts in itertools.combinations(range(1, len(sizes)), n - 1):
        bounds = [0, *cuts, len(sizes)]
        worst = max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=9), st.data())
def test_partition_is_n_parts_with_the_smallest_largest_part(sizes, data):
    n = data.draw(st.integers(1, len(sizes)))
    starts = partition(sizes, n)
    assert len(starts) == n and starts[0] == 0 and starts == sorted(set(starts))  # n non-empty parts, in order
    bounds = [*starts, len(sizes)]
    assert max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])) == brute_min_max(sizes, n)


SENTENCE = st.text(st.sampled_from("abc xyzé.!?\n"), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.lists(SENTENCE, min_size=1, max_size=30), st.integers(16, 64), st.integers(0, 4))
def test_split_covers_the_document_exactly_once(sentences, budget, agents):
    document = "".join(sentences)
    reader = AgentsReader(agents=agents)
    try:
        chunks = reader.split(TOK, document, budget)
    except SpecError as exc:  # agents=N that cannot be honoured: one line naming the fix
        assert agents and "\n" not in str(exc) and "agents=0" in str(exc)
        return
    assert "".join(chunks) == document  # every character to exactly one agent, in order, no overlap
    assert all(len(c.encode()) <= budget for c in chunks)
    assert all(c for c in chunks) or document == ""
    if agents:
        assert len(chunks) == agents
    else:  # the fewest chunks: greedy packing of the same sentences cannot do with fewer
        assert len(chunks) == len(AgentsReader().split(TOK, document, budget))
        assert len(chunks) >= -(-len(document.encode()) // budget)


def test_agents_n_is_honoured_and_chunks_are_even():
    document = "".join(f"Sentence {i:02d} is here. " for i in range(30))  # 30 x 21 bytes
    for n in (1, 2, 3, 5, 30):
        chunks = AgentsReader(agents=n).split(TOK, document, 10_000)
        assert len(chunks) == n and "".join(chunks) == document
        sizes = [len(c) for c in chunks]
        assert max(sizes) - min(sizes) <= 21  # within one sentence of each other
    auto = AgentsReader().split(TOK, document, 100)  # 100 bytes hold 4 sentences: 8 chunks
    assert len(auto) == 8 and max(len(c) for c in auto) <= 100


def test_impossible_splits_are_one_line_errors():
    sizes = [10] * 6
    with pytest.raises(SpecError, match=r"agents=2 would give a chunk more than the 25 tokens .* use agents>=3"):
        split_sentences(sizes, 25, 2)
    with pytest.raises(SpecError, match=r"agents=7 is more than the document's 6 sentences; use agents<=6"):
        split_sentences(sizes, 25, 7)
    assert split_sentences(sizes, 25, 0) == [0, 2, 4] and split_sentences([], 25, 3) == []


# ---------------------------------------------------------------------------------------------- findings
def test_parse_findings_drops_markers_and_nothing_found_lines():
    text = ("Here are the facts:\n1. The keeper was Orla Venn.\n2) Nothing relevant.\n- The text does not "
            "mention a cat.\n* \"Ink was born in 1931.\"\n- none\n3. The keeper was Orla Venn.\n4. Gulls nest on "
            "the rock.\n5. This part is irrelevant to the question.\n6. The tower is on Pellmore.")
    kept, declined = parse_findings(text, 3)
    assert kept == ["The keeper was Orla Venn.", "Ink was born in 1931.", "Gulls nest on the rock."]
    assert declined == 2  # "Nothing relevant." and the decline; "none" is under 8 characters (never a finding)
    assert parse_findings(text, 10)[0][-1] == "The tower is on Pellmore." and parse_findings(text, 10)[1] == 3
    assert parse_findings("nothing relevant", 3) == ([], 1) and parse_findings("::::::::", 3) == ([], 0)


PROSE = ["The old lighthouse keeper climbed the stairs every night.", "Ink the cat slept by the lighthouse lamp.",
         "The keeper's logbook recorded every ship.", "Storms broke over the harbour.",
         "The keeper named the cat Ink in the spring."]


@pytest.mark.parametrize("query", ["What is the name of the keeper's cat?", "lighthouse", "harbour storms",
                                   "the of and", "cat cat keeper"])
def test_bm25_ranking_equals_bm25s(query):
    import bm25s
    from bm25s.tokenization import Tokenized

    stop = stopwords()
    docs = [terms(t, stop) for t in PROSE]
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in d] for d in docs]
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
    q = list(dict.fromkeys(vocab[t] for t in terms(query, stop) if t in vocab))
    want = ref.get_scores(q) if q else np.zeros(len(PROSE))
    np.testing.assert_allclose(bm25_scores(PROSE, query), want, rtol=1e-5, atol=1e-6)
    findings = [Finding(i // 2, i % 2, t) for i, t in enumerate(PROSE)]
    order = rank_findings(findings, query)
    assert order == sorted(range(len(PROSE)), key=lambda i: (-round(float(want[i]), 5), i))  # ties: document order


# ---------------------------------------------------------------------------------- reader, fake engine
class FakeEngine:
    """The tiny Llama's tokenizer with a larger window; the model's text is scripted: an agent whose chunk
    holds a key phrase writes that phrase's fact, every other agent writes 'nothing relevant'; the
    coordinator answers 'Ink'. Records every sub-read."""

    FACTS = {"Orla": "The keeper is Orla Venn.", "Ink": "Orla Venn has a cat named Ink.",
             "Pellmore": "The tower is on Pellmore island."}

    def __init__(self, lm, window=4096):
        self.tokenizer, self.info = lm.tokenizer, dataclasses.replace(lm.info, window=window)
        self.calls: list[Request] = []
        self.caches: list = []  # the prefix_cache each sub-read was given

    @property
    def device(self):
        return torch.device("cpu")

    def run(self, plan, request, progress=False, prefix_cache=None):
        plan = Plan.from_spec(plan)
        assert plan.get("reader") is None  # every sub-read: the plain reader under the carried plan
        self.calls.append(request)
        self.caches.append(prefix_cache)
        prompt = encode(self.tokenizer, build_prompt(self.tokenizer, request.document, request.question,
                                                     request.answer_prefix, request.prompt))
        assert len(prompt) + request.max_new_tokens <= self.info.window  # every prompt fits one pass
        if AGENT_INSTRUCTION in request.question:
            chunk = request.document.split(f"\n\n{NOTES_HEADER}")[0]
            found = [f for k, f in self.FACTS.items() if k in chunk] or ["nothing relevant"]
            ids = self.tokenizer("\n".join(f"{i + 1}. {f}" for i, f in enumerate(found)),
                                 add_special_tokens=False).input_ids[:request.max_new_tokens]
            return ReadResult("", ids, len(prompt), 0.5, 0.25, 10)
        return ReadResult("Ink", [73, 110, 107], len(prompt), 0.5, 0.125, 20)


def story(n: int = 24) -> str:
    lines = [f"Day {i} was calm and the boats went out." for i in range(n)]
    lines[3] = "The keeper was called Orla."
    lines[12] = "Her cat was called Ink."
    lines[n - 4] = "The tower stands on Pellmore."
    return " ".join(lines)


QUESTION = "What is the name of the keeper's cat?"


def read(engine, spec, document, question=QUESTION, max_new_tokens=4):
    plan = Plan.from_spec(spec)
    return plan.make_reader().read(engine, plan, Request(document, question, max_new_tokens))


def test_rounds_sync_prompts_coordinator_and_extra(llama):
    e = FakeEngine(llama)
    doc = story()
    r = read(e, "agents:agents=4,rounds=2", doc)
    assert len(e.calls) == 4 * 3 + 1  # N agent reads per round (rounds + 1 of them) and the coordinator
    round0, sync1, sync2, (coord,) = e.calls[:4], e.calls[4:8], e.calls[8:12], e.calls[12:]
    assert "".join(c.document for c in round0) == doc  # every token to exactly one agent
    assert all(AGENT_INSTRUCTION in c.question and c.max_new_tokens == 96 for c in round0)
    for a, c in enumerate(sync1):  # its own chunk, then the OTHER agents' best notes (best first)
        chunk, _, notes = c.document.partition(f"\n\n{NOTES_HEADER}\n")
        assert chunk == round0[a].document and c.question == round0[a].question  # only the text grows
        own = [f for k, f in FakeEngine.FACTS.items() if k in chunk]
        others = [f for f in FakeEngine.FACTS.values() if f not in own]
        scores = dict(zip(FakeEngine.FACTS.values(), bm25_scores(list(FakeEngine.FACTS.values()), QUESTION)))
        assert notes.split("\n") == [f"- {f}" for f in sorted(others, key=lambda f: -scores[f])]  # best first
    assert [c.document for c in sync2] == [c.document for c in sync1]  # same findings: same prompts
    assert coord.question == "What is the name of the keeper's cat?" and coord.max_new_tokens == 4
    assert r.evidence == ["[part 1] The keeper is Orla Venn.", "[part 3] Orla Venn has a cat named Ink.",
                          "[part 4] The tower is on Pellmore island."]  # document order, tagged by agent
    assert coord.document == "\n".join(r.evidence) and r.answer == "Ink"
    x = r.extra["agents"]
    assert (x["agents"], x["rounds"], x["findings"], x["findings_total"], x["dropped"]) == (4, 2, [3, 3, 3], 3, 0)
    assert x["declined"] == 3  # agent 2 said "nothing relevant" in each of the three rounds
    prompts = [len(encode(e.tokenizer, build_prompt(e.tokenizer, c.document, c.question, "", "auto"))) for c in e.calls]
    assert x["tokens_read"] == r.input_tokens == sum(prompts) and x["answer_prompt_tokens"] == prompts[-1]
    assert set(x["seconds"]) == {"split", "read", "sync", "coordinate"} and r.kv_cache_bytes == 20
    assert r.decode_seconds == pytest.approx(12 * 0.25 + 0.125)


def test_round_zero_keeps_chunk_caches_and_sync_rounds_only_look_them_up(llama):
    e = FakeEngine(llama)
    r = read(e, "agents:agents=4,rounds=2", story())
    stores, lookups, coord = e.caches[:4], e.caches[4:12], e.caches[12]
    assert all(isinstance(c, PrefixCache) for c in stores) and len({id(c) for c in stores}) == 1
    assert all(type(c).__name__ == "_LookupOnly" and c.caches is stores[0] for c in lookups)
    assert coord is None and r.extra["agents"]["reuse_bytes"] == stores[0].max_bytes > 0
    e = FakeEngine(llama)
    read(e, "agents:agents=4,rounds=0", story())
    assert e.caches == [None] * 5  # no synchronisation round: nothing to keep
    e = FakeEngine(llama)
    read(e, "dynamic-ntk+agents:agents=4", story())
    assert e.caches == [None] * 9  # a length-dependent rope cannot reuse a prefix: every round reads again


def test_rounds_zero_skips_synchronisation_and_nothing_found_declines(llama):
    e = FakeEngine(llama)
    r = read(e, "agents:agents=3,rounds=0", story())
    assert len(e.calls) == 3 + 1 and r.extra["agents"]["findings"] == [3]
    e = FakeEngine(llama)
    r = read(e, "agents:agents=2", "Day 1 was calm. Day 2 was calm too.")
    assert r.answer == DECLINE and declines(r.answer) and r.evidence == [] and len(e.calls) == 4  # no coordinator
    assert "none of the 2 agents found anything" in r.extra["reason"]


def test_coordinator_prompt_is_budgeted_to_the_window(llama):
    class Wordy(FakeEngine):
        def run(self, plan, request, progress=False, prefix_cache=None):
            if AGENT_INSTRUCTION in request.question:
                self.calls.append(request)
                first = request.document.split()[1]  # "Day <i>": each agent writes 3 long findings
                text = "\n".join(f"Finding {first}.{j} about the keeper cat and the boats of day {first}."
                                 for j in range(3))
                return ReadResult("", self.tokenizer(text, add_special_tokens=False).input_ids, 1, 0.0, 0.0, 1)
            return super().run(plan, request, progress, prefix_cache)

    e = Wordy(llama, window=1024)
    r = read(e, "agents:agents=8,rounds=0,finding_tokens=200", story(), max_new_tokens=16)
    coord = e.calls[-1]
    x = r.extra["agents"]
    assert x["findings_total"] == 24 and 0 < x["dropped"] < 24 and len(r.evidence) == 24 - x["dropped"]
    size = len(encode(e.tokenizer, build_prompt(e.tokenizer, coord.document, coord.question, "", "auto")))
    assert size + 16 <= 1024  # within the window (FakeEngine.run checks it too)
    parts = [int(ev.split("]")[0].split()[1]) for ev in r.evidence]
    assert parts == sorted(parts)  # document order


@pytest.mark.parametrize("spec, fragment", [
    ("agents:agents=-1", "agents=-1 must be 0"), ("agents:rounds=17", "rounds=17"), ("agents:findings=0", "findings=0"),
    ("agents:finding_tokens=4", "finding_tokens=4"), ("agents:workers=0", "workers=0"), ("agents:colour=red", "colour"),
])
def test_bad_parameters_are_one_line(spec, fragment):
    with pytest.raises(SpecError) as exc:
        Plan.from_spec(spec)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_chunks_that_cannot_fit_are_one_line_errors(llama):
    with pytest.raises(SpecError, match=r"agents:chunk=4000 does not fit .* use chunk<=\d+ or chunk=0") as exc:
        read(FakeEngine(llama, window=1024), "agents:chunk=4000", story())
    assert "\n" not in str(exc.value)
    with pytest.raises(SpecError, match=r"use agents>=\d+ or agents=0"):
        read(FakeEngine(llama, window=1024), "agents:agents=1", story(200))
    with pytest.raises(SpecError, match=r"leave -?\d+ of .* lower finding_tokens or use rounds=0"):
        read(FakeEngine(llama, window=200), "agents", story())


# ------------------------------------------------------------------------------------- real tiny models
def probe_logits(model):
    with torch.inference_mode():
        return model(torch.tensor([[5, 17, 99, 3, 42, 7]])).logits


def test_real_read_is_deterministic_threaded_and_leaves_the_model_as_loaded(llama):
    text = "The keeper was called Orla. Her cat was called Ink. Day 1 was calm. The tower stands on Pellmore."
    text = f"{text} {text}"  # 196 bytes: the tiny Llama's 256-token window leaves about 60 per agent
    before = probe_logits(llama.model)
    state = {k: v.clone() for k, v in llama.model.state_dict().items()}
    engine = Engine(llama)
    runs = [engine.run(f"agents:finding_tokens=16,workers={w}", Request(text, "Who?", 4)) for w in (1, 1, 3)]
    a = runs[0]
    for b in runs[1:]:  # the same tokens in the same order, with or without threads (greedy, agent order)
        assert (b.output_ids, b.answer, b.evidence, b.input_tokens) == (a.output_ids, a.answer, a.evidence,
                                                                        a.input_tokens)
    x = a.extra["agents"]
    assert x["agents"] >= 3 and len(x["findings"]) == 2 and x["tokens_read"] == a.input_tokens
    assert a.input_tokens > 2 * len(text)  # every chunk read twice (+ the prompts)
    assert len(a.output_ids) >= 2 * x["agents"] and a.kv_cache_bytes > 0
    torch.testing.assert_close(probe_logits(llama.model), before)  # nothing installed, nothing left behind
    assert all(torch.equal(v, state[k]) for k, v in llama.model.state_dict().items())
    c = longreach.ask(text=text, question="Who?", model=llama, method="agents:finding_tokens=16", max_new_tokens=4)
    assert (c.answer, c.evidence, c.reach) == (a.answer, a.evidence, None)


def test_chunk_caches_give_the_answers_of_reading_every_chunk_again(llama):
    text = " ".join(f"On day {i} the keeper fed cat {i}." for i in range(12))  # no two chunks alike (an
    # agent whose round-0 prompt repeats an earlier one's would also reuse it in round 0, threads or not)
    engine = Engine(llama)
    plan = Plan.from_spec("agents:finding_tokens=16")
    before = probe_logits(llama.model)
    info = llama.info
    one_pass = estimate_request(info, info.window, 2048, Plan([]).kv_cache_bytes(info, info.window)).total
    runs = {}
    for name, limit, workers in (("kept", None, 1), ("kept-threads", None, 3), ("again", one_pass + 1, 1)):
        runs[name] = engine.run(f"agents:finding_tokens=16,workers={workers}",
                                Request(text, "Who?", 4, memory_limit=limit))
    kept, again = runs["kept"].extra["agents"], runs["again"].extra["agents"]
    assert again["reuse_bytes"] == 0 and again["tokens_reused"] == 0  # no memory left beside one pass
    assert kept["reuse_bytes"] > 0 and runs["kept-threads"].extra["agents"]["tokens_reused"] == kept["tokens_reused"]
    chunks = sum(kept["chunk_tokens"])
    assert chunks - 2 * kept["agents"] <= kept["tokens_reused"] < kept["tokens_read"] - chunks  # ~every chunk once
    for r in runs.values():  # the same tokens, findings and answer whether the chunks are kept or read again
        a = runs["again"]
        assert (r.output_ids, r.answer, r.evidence, r.input_tokens) == (a.output_ids, a.answer, a.evidence,
                                                                        a.input_tokens)
    assert plan.reuses_prefix(info) is False and Plan([]).reuses_prefix(info)
    torch.testing.assert_close(probe_logits(llama.model), before)  # the caches are copies: model as loaded


def test_plain_reads_reuse_a_shared_prefix_and_readers_refuse_one(llama):
    engine = Engine(llama)
    doc = " ".join(f"Day {i} was calm." for i in range(12))
    pc = PrefixCache(1 << 30, min_tokens=16)
    first = engine.run("none", Request(doc, "Who?", 4), prefix_cache=pc)
    second = engine.run("none", Request(doc, "Where?", 4), prefix_cache=pc)
    plain = engine.run("none", Request(doc, "Where?", 4))
    assert first.extra == {"cached_tokens": 0} and second.extra["cached_tokens"] >= len(doc) // 2
    assert (second.output_ids, second.answer, second.input_tokens) == (plain.output_ids, plain.answer,
                                                                       plain.input_tokens)
    assert pc.hits == 1 and pc.entries == 1  # the two prompts share the document: held once
    with pytest.raises(SettingError, match="prefix_cache is for plain reads; agents is a reader method") as exc:
        engine.run("agents", Request(doc, "Who?", 4), prefix_cache=pc)
    assert "\n" not in str(exc.value)


@pytest.mark.integration
def test_smollm2_findings_are_deterministic_with_threads(smollm2):
    facts = ["The lighthouse keeper was called Orla Venn.", "Orla Venn kept a cat named Ink."]
    filler = [f"The weather on day {i} was calm and the boats went out." for i in range(6)]
    text = " ".join(filler[:2] + [facts[0]] + filler[2:5] + [facts[1]] + filler[5:])  # ~110 tokens
    question = "What is the name of the lighthouse keeper's cat?"
    runs = [longreach.ask(text=text, question=question, model=smollm2, max_new_tokens=4,
                          method=f"agents:agents=2,finding_tokens=16,workers={w}") for w in (1, 2)]
    a, b = runs
    assert a.evidence and all(e.startswith(("[part 1] ", "[part 2] ")) for e in a.evidence)
    assert a.extra["agents"]["findings_total"] >= 1 and a.extra["agents"]["agents"] == 2
    assert (b.answer, b.evidence, b.output_tokens) == (a.answer, a.evidence, a.output_tokens)


def test_gemma3_reads_past_its_window(gemma):
    text = " ".join(f"Sentence {i} says the sky is blue." for i in range(40))  # ~1.3k byte tokens, window 512
    a = longreach.ask(text=text, question="What colour?", model=gemma, method="agents:finding_tokens=24",
                      max_new_tokens=4)
    x = a.extra["agents"]
    assert x["agents"] >= 3 and sum(x["chunk_tokens"]) >= len(text) - x["agents"]  # all of it, once
    assert max(x["chunk_tokens"]) <= x["chunk_budget"] + 8 and a.input_tokens > 2 * len(text)


def test_memory_pre_check_sizes_one_pass_not_the_document(llama):
    engine = Engine(llama)
    info = llama.info
    one_pass = estimate_request(info, info.window, 2048, Plan([]).kv_cache_bytes(info, info.window)).total
    whole = estimate_request(info, 131072, 2048, Plan([]).kv_cache_bytes(info, 131072)).total
    limit = 2 * one_pass
    assert whole > limit  # the 128k document's KV cache would not fit the limit ...
    plan = Plan.from_spec("agents")
    assert engine.refuse(plan, 131072, memory_limit=limit) is None  # ... but agents hold one pass at a time
    assert plan.held_tokens(info, 131072) == info.window
    engine.check_memory(plan, plan.held_tokens(info, 131072), memory_limit=limit)


def test_bench_records_keep_the_findings_cut_to_excerpts(llama):
    from longreach.bench.backends import EVIDENCE_CHARS, EVIDENCE_ITEMS, LocalBackend, evidence_excerpts
    from longreach.bench.task import Sample

    long = ["x" * (EVIDENCE_CHARS + 50)] * (EVIDENCE_ITEMS + 5)
    cut = evidence_excerpts(long)
    assert len(cut) == EVIDENCE_ITEMS and all(len(e) == EVIDENCE_CHARS and e.endswith("...") for e in cut)
    assert evidence_excerpts(["[part 1] Orla."]) == ["[part 1] Orla."]
    backend = LocalBackend(llama, prompt="plain")
    short = Sample("The keeper was called Orla.", "Who?", "", ["Orla"], {}, max_new_tokens=4)
    assert "evidence" not in backend.generate(short, Plan.from_spec("none"))  # a plain read has none
    sample = Sample(story(), QUESTION, "", ["Ink"], {}, max_new_tokens=4)
    fake = FakeEngine(llama)  # scripted findings

    class Outer:  # the backend's engine: the agents reader over the fake engine's sub-reads
        device = fake.device

        def run(self, plan, request, progress=False):
            return plan.make_reader().read(fake, plan, request)

    backend.engine = Outer()
    rec = backend.generate(sample, Plan.from_spec("agents:agents=4"))
    assert rec["evidence"] == ["[part 1] The keeper is Orla Venn.", "[part 3] Orla Venn has a cat named Ink.",
                               "[part 4] The tower is on Pellmore island."] and rec["prediction"] == "Ink"
    assert rec["reader"]["agents"]["agents"] == 4
