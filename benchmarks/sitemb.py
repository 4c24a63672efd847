"""Situated chunk embeddings (SitEmb, arXiv 2508.01959) on a generated task where a chunk's meaning depends on
its context, with the packaged all-MiniLM-L6-v2 and, for comparison, BM25.

Documents are made of short passages; each passage introduces one entity by name once ("Harlow Freight, a
shipping company founded in 1931, ..." or "Tamsin Quarry, a glassblower from ..."), and the later sentences
say only "the company" / "she" / "he". One of them states the fact that is asked: "The company's lucky mascot
is a ferret called Biscuit." Every entity gets a fact of the same few templates, so a fact chunk on its own
says WHAT but not WHOSE; the query names the entity: "What is Harlow Freight's lucky mascot?". The text is cut
into sentence-aligned chunks of at most 64 MiniLM tokens; the fact sentence sits more than 64 tokens after the
name, so its chunk never holds the name (checked). Score: recall@1 and recall@5 of the fact chunk among every
chunk of every document.

  bm25              bm25s (Lucene BM25, k1 1.5, b 0.75, English stop words) over the plain chunks
  plain             each chunk embedded alone (embed_window=0)
  situated-128@512  each chunk read with up to 128 tokens of its document on each side, pooled over its own
                    tokens (Embedder.embed_situated), embed_window=512
  situated-256@512  256 tokens each side, embed_window=512 (the context is trimmed to fit 512)
  situated-256@1024 256 tokens each side, embed_window=1024 (LongEmbed position interpolation beyond 512)

The BM25 column uses bm25s directly, not longreach.retrieval.bm25 (whose internals change in this issue): the
same formula and parameters.

    .venv/bin/python benchmarks/sitemb.py            # ~3 min on 2 CPU cores; writes sitemb.{json,md}
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from longreach.bench.store import environment
from longreach.bench.words import NAMES, PLACES
from longreach.retrieval.embed import default_folder, load_embedder

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 64
VARIANTS = {"plain": (0, 0), "situated-128@512": (128, 512), "situated-256@512": (256, 512),
            "situated-256@1024": (256, 1024)}  # name: (context tokens each side, embed_window)

TRADES = ["shipping", "textile", "clockmaking", "brewing", "printing", "glassware", "timber", "railway"]
SUFFIXES = ["Freight", "Mills", "Works", "Brothers", "Holdings", "Trading", "Foundry", "Supply"]
CRAFTS = ["glassblower", "cartographer", "violin maker", "beekeeper", "bookbinder", "stonemason", "potter",
          "astronomer"]
ANIMALS = ["ferret", "tortoise", "parrot", "goat", "hedgehog", "peacock", "donkey", "owl", "lizard", "rabbit"]
PET_NAMES = ["Biscuit", "Pickles", "Captain", "Noodle", "Pepper", "Waffles", "Duchess", "Tiger", "Mango", "Ziggy"]
DESSERTS = ["plum cake", "lemon tart", "rice pudding", "apple crumble", "honey flan", "cherry pie", "fig roll",
            "walnut fudge"]
TOPPINGS = ["whipped cream", "salted caramel", "crushed pistachios", "warm custard", "dark chocolate",
            "orange zest", "maple syrup", "toasted almonds"]
OBJECTS = ["brass telescope", "silver compass", "wooden chess set", "porcelain teapot", "leather atlas",
           "copper kettle", "glass paperweight", "pewter tankard"]
ROOMS = ["the cellar", "the attic", "the boiler room", "the front office", "the garden shed", "the library"]

COMPANY_FACTS = [  # (fact sentence, question); {c} = the company's name, values filled at random
    ("The company's lucky mascot is a {animal} called {pet}.", "What is {c}'s lucky mascot?"),
    ("The company keeps a {object} in {room} for good fortune.", "What does {c} keep for good fortune?"),
    ("The company's founding motto was carved above the door: {motto}.", "What was {c}'s founding motto?"),
]
PERSON_FACTS = [
    ("{Pro} favourite dessert is {dessert} with {topping}.", "What is {p}'s favourite dessert?"),
    ("{Sub} once lost a {object} in {room} and never found it.", "What did {p} once lose?"),
    ("{Sub} keeps a pet {animal} called {pet}.", "What pet does {p} keep?"),
]
MOTTOS = ["steady hands, honest weights", "first to the harbour", "mend before you spend", "every hour counts",
          "light the lamps early", "no knot left loose", "patience makes profit", "trust the tide"]
COMPANY_FILLER = [
    "The company opened a second warehouse {n} years later.",
    "Its workers were known across the district for their punctuality.",
    "The company weathered a difficult winter when the river froze.",
    "Its ledgers from those years are still kept in neat bound volumes.",
    "The company later bought out two smaller rivals in the same street.",
    "Its directors met every Thursday morning to review the accounts.",
    "The company printed its own calendars and gave them to customers.",
    "Its delivery carts were painted a recognisable shade of green.",
    "The company survived a fire in its {n}th year without losing a single order.",
    "Its apprentices trained for {n} months before handling real work.",
]
PERSON_FILLER = [
    "{Sub} moved to the coast as a young adult and stayed for {n} years.",
    "{Sub} kept a detailed diary of every commission.",
    "{Sub} was known for working late into the night by candlelight.",
    "{Sub} taught evening classes at the town hall for a while.",
    "{Pro} workshop was small but always tidy.",
    "{Sub} travelled by train to the capital twice a year.",
    "{Sub} rarely spoke about {pro} early life.",
    "{Pro} neighbours remember {obj} as generous and patient.",
    "{Sub} won a regional prize after {n} years of practice.",
    "{Sub} wrote long letters to an old friend abroad.",
]


# --------------------------------------------------------------------------------------------- data
def entity_passage(rng: random.Random, name: str, kind: str, before: int, after: int) -> tuple[str, str, str]:
    """(passage, fact sentence, question) for one entity; the name occurs in the first sentence only."""
    pick = {"animal": rng.choice(ANIMALS), "pet": rng.choice(PET_NAMES), "object": rng.choice(OBJECTS),
            "room": rng.choice(ROOMS), "motto": rng.choice(MOTTOS), "dessert": rng.choice(DESSERTS),
            "topping": rng.choice(TOPPINGS)}
    if kind == "company":
        intro = (f"{name}, a {rng.choice(TRADES)} company founded in {rng.randrange(1850, 1990)}, began in a "
                 f"rented room near the old docks.")
        fact, question = rng.choice(COMPANY_FACTS)
        words: dict[str, str] = {"c": name}
        filler = COMPANY_FILLER
    else:
        she = rng.random() < 0.5
        words = {"p": name, "Sub": "She" if she else "He", "Pro": "Her" if she else "His",
                 "pro": "her" if she else "his", "obj": "her" if she else "him"}
        intro = (f"{name}, a {rng.choice(CRAFTS)} from {rng.choice(PLACES)}, learned the trade from "
                 f"{'her' if she else 'his'} grandmother.")
        fact, question = rng.choice(PERSON_FACTS)
        filler = PERSON_FILLER
    lines = rng.sample(filler, before + after)
    fill = [s.format(n=rng.randrange(2, 30), **words) for s in lines]
    fact = fact.format(**pick, **words)
    return " ".join([intro, *fill[:before], fact, *fill[before:]]), fact, question.format(**words)


def sentence_chunks(tok: Any, text: str, size: int) -> list[tuple[int, int]]:
    """Character spans of sentence-aligned chunks of at most ``size`` tokens (a longer sentence alone)."""
    ends = [i + 1 for i, ch in enumerate(text) if ch in ".?!" and (i + 1 == len(text) or text[i + 1] == " ")]
    spans, start, prev = [], 0, 0
    for e in ends:
        if prev > start and len(tok(text[start:e], add_special_tokens=False)["input_ids"]) > size:
            spans.append((start, prev))
            start = prev + 1  # the space after the sentence
        prev = e
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def make_corpus(tok: Any, docs: int, passages: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    names: set[str] = set()
    texts, chunks, queries = [], [], []
    for d in range(docs):
        parts, facts = [], []
        for _ in range(passages):
            kind = rng.choice(["company", "person"])
            while True:
                name = (f"{rng.choice(PLACES)} {rng.choice(SUFFIXES)}" if kind == "company"
                        else f"{rng.choice(NAMES)} {rng.choice(PLACES)}")
                if name not in names and not any(name.split()[0] in n.split() for n in names):
                    break
            names.add(name)
            passage, fact, question = entity_passage(rng, name, kind, before=rng.randrange(6, 8),
                                                     after=rng.randrange(1, 3))
            parts.append(passage)
            facts.append((name, fact, question))
        text = " ".join(parts)
        texts.append(text)
        spans = sentence_chunks(tok, text, CHUNK)
        first = len(chunks)
        chunks += [(d, a, b) for a, b in spans]
        for name, fact, question in facts:
            at = text.index(fact)
            hit = [first + k for k, (a, b) in enumerate(spans) if a <= at < b]
            queries.append({"question": question, "name": name, "fact": fact, "chunk": hit[0],
                            "name_in_chunk": name in text[spans[hit[0] - first][0]:spans[hit[0] - first][1]]})
    return {"texts": texts, "chunks": chunks, "queries": queries}


# ----------------------------------------------------------------------------------------- retrieval
def situated_items(tok: Any, texts: list[str], chunks: list[tuple[int, int, int]], context: int
                   ) -> list[tuple[str, int, int]]:
    """(text with up to ``context`` tokens each side, start, end) per chunk, within its document."""
    offsets = [tok(t, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
               for t in texts]
    items = []
    for d, a, b in chunks:
        off = offsets[d]
        first = next(i for i, (s, e) in enumerate(off) if e > a)
        last = max(i for i, (s, e) in enumerate(off) if s < b)
        lo = off[max(0, first - context)][0]
        hi = off[min(len(off) - 1, last + context)][1]
        items.append((texts[d][lo:hi], a - lo, b - lo))
    return items


def recall(scores: np.ndarray, gold: np.ndarray, k: int) -> float:
    """Fraction of queries whose gold chunk is in the top k (scores (Q, N), ties broken by order)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
    return float(np.mean([g in row for g, row in zip(gold, top)]))


def bm25_scores(chunk_texts: list[str], questions: list[str]) -> np.ndarray:
    import bm25s

    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    retriever.index(bm25s.tokenize(chunk_texts, stopwords="en", show_progress=False), show_progress=False)
    q = bm25s.tokenize(questions, stopwords="en", show_progress=False, return_ids=False)  # lists of terms
    vocab = retriever.vocab_dict
    return np.stack([retriever.get_scores([t for t in terms if t in vocab]) if any(t in vocab for t in terms)
                     else np.zeros(len(chunk_texts)) for terms in q])  # (Q, N)


def run(args: argparse.Namespace) -> dict[str, Any]:
    folder = str(default_folder())
    plain = load_embedder(folder, "cpu", 0)
    tok = plain.tokenizer
    corpus = make_corpus(tok, args.docs, args.passages, args.seed)
    texts, chunks, queries = corpus["texts"], corpus["chunks"], corpus["queries"]
    chunk_texts = [texts[d][a:b] for d, a, b in chunks]
    gold = np.array([q["chunk"] for q in queries])
    sizes = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in chunk_texts]
    print(f"{len(texts)} documents, {len(chunks)} chunks (tokens {min(sizes)}-{max(sizes)}, mean "
          f"{np.mean(sizes):.0f}), {len(queries)} queries; fact chunks holding the entity's name: "
          f"{sum(q['name_in_chunk'] for q in queries)}", flush=True)
    cost = sum(min(2 * c + 64, w or 256) for c, w in VARIANTS.values()) * len(chunks)
    print(f"cost estimate: ~{cost:,} tokens / ~2500 tok/s = ~{cost / 2500 / 60:.1f} min", flush=True)
    questions = [q["question"] for q in queries]
    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    s = bm25_scores(chunk_texts, questions)
    rows["bm25"] = {"recall@1": recall(s, gold, 1), "recall@5": recall(s, gold, 5)}
    print(f"bm25               {rows['bm25']}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    qv = plain.embed(questions)  # (Q, d)
    for name, (context, window) in VARIANTS.items():
        t0 = time.perf_counter()
        e = load_embedder(folder, "cpu", window)
        if context == 0:
            vecs = e.embed(chunk_texts)  # (N, d)
        else:
            vecs = e.embed_situated(situated_items(tok, texts, chunks, context))  # (N, d)
        s = qv @ vecs.T  # (Q, N)
        rows[name] = {"recall@1": recall(s, gold, 1), "recall@5": recall(s, gold, 5)}
        print(f"{name:18s} {rows[name]}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return {"results": rows, "corpus": {"documents": len(texts), "chunks": len(chunks), "queries": len(queries),
                                        "chunk_tokens_mean": float(np.mean(sizes)), "chunk_tokens_max": max(sizes),
                                        "fact_chunks_with_name": sum(q["name_in_chunk"] for q in queries)},
            "examples": queries[:6], "example_document": texts[0]}


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(meta: dict[str, Any], out: dict[str, Any]) -> str:
    m, c = meta["machine"], out["corpus"]
    lines = [
        "# Situated chunk embeddings (SitEmb) on context-dependent chunks, all-MiniLM-L6-v2",
        "",
        f"Command: `{meta['command']}`  ",
        f"Git: {meta['git']}, date: {meta['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['platform']}, Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        "",
        f"{c['documents']} generated documents of {meta['passages']} passages, each passage naming one entity "
        "(a company or a person) once and then saying only \"the company\" / \"she\" / \"he\"; the asked fact is "
        "stated in a later sentence, in one of a few templates shared by all entities. "
        f"{c['chunks']} sentence-aligned chunks of at most {CHUNK} tokens (mean {c['chunk_tokens_mean']:.0f}); "
        f"{c['queries']} queries naming the entity; fact chunks that contain the entity's name: "
        f"{c['fact_chunks_with_name']}. Recall@k of the fact chunk among all chunks.",
        "",
        "| retriever | context each side | embed_window | recall@1 | recall@5 |",
        "|---|---:|---:|---:|---:|",
        f"| bm25 (bm25s) | - | - | {out['results']['bm25']['recall@1']:.2f} | "
        f"{out['results']['bm25']['recall@5']:.2f} |",
    ]
    for name, (context, window) in VARIANTS.items():
        r = out["results"][name]
        lines.append(f"| dense {name} | {context} | {window} | {r['recall@1']:.2f} | {r['recall@5']:.2f} |")
    ex = out["examples"][0]
    lines += ["", f"Example: query \"{ex['question']}\"; fact chunk holds \"{ex['fact']}\" (without the name).",
              "", "## Reading", "", meta["conclusion"], ""]
    return "\n".join(lines)


def conclusion(out: dict[str, Any]) -> str:
    r = out["results"]
    best = max((n for n in VARIANTS if n != "plain"), key=lambda n: (r[n]["recall@1"], r[n]["recall@5"]))
    return (f"Plain chunk embeddings find the fact chunk first for {r['plain']['recall@1']:.0%} of the queries "
            f"(recall@5 {r['plain']['recall@5']:.0%}); read in context, {best} reaches {r[best]['recall@1']:.0%} "
            f"(recall@5 {r[best]['recall@5']:.0%}). BM25 on the plain chunks: {r['bm25']['recall@1']:.0%} / "
            f"{r['bm25']['recall@5']:.0%} (it can only match the template words, never the name).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=8, help="documents")
    p.add_argument("--passages", type=int, default=5, help="entity passages per document")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for sitemb.{json,md}")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    out = run(args)
    meta = {"command": shlex.join([".venv/bin/python", "benchmarks/sitemb.py", *(argv or sys.argv[1:])]),
            "git": git_hash(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": environment(), "docs": args.docs, "passages": args.passages, "seed": args.seed,
            "chunk": CHUNK, "variants": VARIANTS, "model": str(default_folder()),
            "seconds": round(time.perf_counter() - t0, 1)}
    meta["conclusion"] = conclusion(out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sitemb.json").write_text(json.dumps({"meta": meta, **out}, indent=1) + "\n")
    (args.out / "sitemb.md").write_text(markdown(meta, out))
    print(f"wrote {args.out}/sitemb.{{json,md}} in {meta['seconds']} s")


if __name__ == "__main__":
    main()
