"""LongEmbed-style passkey and needle retrieval at the embedding level (arXiv 2404.12096), on the packaged
all-MiniLM-L6-v2 (absolute positions, P = 512, max_seq_length 256), no language model involved.

For each document length L (MiniLM tokens, [CLS] and [SEP] included) there are M candidate documents of that
length and M queries; query i asks for the one fact held by document i, and the score is top-1 accuracy
(nDCG@1, LongEmbed's metric) of document i among the M by cosine similarity.

  passkey  the noise filler ("The grass is green. ...") holding "<person>'s pass key is <5 digits>.
           Remember it." at a random depth; query "What is <person>'s pass key?" (LongEmbed's personalized
           passkey task: the documents differ only in the name and the key)
  needle   a Paul Graham essay passage (one per length, shared by the M documents, so that they differ only in
           the needle and its depth, as in passkey) holding a NIAH-style needle "The best thing to do in <city>
           is <invented pastime>." at a random depth; query "What is the best thing to do in <city>?" (trials at
           256 tokens: with a different essay per document, or with NeedleBench's invented place names, the
           essay or one attractive object decided the ranking and every variant sat at chance)

Variants (how a document is read):

  truncate-256    window=0: the encoder's own limit, the first 256 tokens (sentence-transformers' default)
  window-512      window=512: the first 512 tokens, all with learned positions (P = 512)
  pi-2048         window=2048: LongEmbed linear position interpolation beyond 512 tokens, first 2,048 tokens
  pi-4096         window=4096: the same up to 4,096 tokens
  chunk-mean-512  the paper's parallel-context-window baseline: 512-token pieces read alone, the mean of
                  their unit vectors (then L2-normalised)

Queries are read with window=0. A document of n tokens gets the same vector from every variant that reads
all of it with learned positions (and from pi-2048 and pi-4096 alike when n <= 2048: each input is stretched
by its own length), so each distinct (text, tokens read) pair is encoded once.

    .venv/bin/python benchmarks/longembed.py            # ~10 min on 2 CPU cores; writes longembed.{json,md,png}
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
from longreach.bench.words import NAMES
from longreach.corpus import NOISE, source_units
from longreach.retrieval.embed import Embedder, default_folder, load_embedder

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (256, 512, 1024, 2048, 4096)
VARIANTS = {"truncate-256": 0, "window-512": 512, "pi-2048": 2048, "pi-4096": 4096, "chunk-mean-512": 512}
TASKS = ("passkey", "needle")
PIECE = 512
# NIAH-style needles ("The best thing to do in San Francisco is ..."): real cities, invented pastimes.
CITIES = ("Lisbon, Oslo, Nairobi, Toronto, Kyoto, Buenos Aires, Cairo, Melbourne, Reykjavik, Istanbul, Seoul, Lima, "
          "Dublin, Hanoi, Vienna, Marrakesh, Santiago, Helsinki, Mumbai, Quebec City, Prague, Havana, Auckland, "
          "Edinburgh").split(", ")
ACTIVITIES = ("to fly a paper kite from the old lighthouse, to race wooden ducks down the canal, to paint the harbour "
              "cranes at dawn, to play chess with the street musicians, to count the pigeons on the cathedral roof, "
              "to bake rye bread in a stone oven, to swim with the retired ferry captains, to whistle at the tram "
              "drivers, to collect buttons at the flea market, to juggle oranges in the central square, to read "
              "poems to the goats on the hill, to build sandcastles shaped like violins, to knit scarves for the "
              "bronze statues, to sail a bathtub across the bay, to feed the ducks with blueberry muffins, to sing "
              "opera in the subway tunnels, to ride a camel to the train station, to sort seashells by colour, to "
              "dance the tango with the museum guards, to grow tomatoes on the rooftops, to climb the clock tower "
              "at midnight, to map the city's secret staircases, to teach parrots to say good morning, to brew "
              "tea from pine needles").split(", ")
SPEED = 2500  # tokens per second assumed for the cost estimate (MiniLM on 2 CPU cores, short inputs)


# --------------------------------------------------------------------------------------------- data
def cut_to_tokens(tok: Any, text: str, n: int) -> str:
    """The longest prefix of ``text`` of at most ``n`` tokens, cut at a token end."""
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    return text if len(offsets) <= n else text[:offsets[n - 1][1]]


def insert_at_depth(filler: str, fact: str, depth: float) -> str:
    """``fact`` placed after the sentence ending nearest after ``depth`` of ``filler``."""
    p = filler.find(". ", int(depth * len(filler)))
    p = len(filler) if p < 0 else p + 1
    return f"{filler[:p]} {fact}{filler[p:]}".strip()


def make_task(task: str, tok: Any, length: int, m: int, seed: int) -> dict[str, Any]:
    """M documents of ``length`` tokens (specials included) and the M queries, query i -> document i."""
    rng = random.Random(f"{task}:{length}:{seed}")
    if task == "passkey":
        names = rng.sample(NAMES, m)
        keys = [f"{rng.randrange(10000, 100000)}" for _ in range(m)]
        facts = [f"{n}'s pass key is {k}. Remember it." for n, k in zip(names, keys)]
        queries = [f"What is {n}'s pass key?" for n in names]
        unit_texts = [NOISE] * m
    else:
        cities = rng.sample(CITIES, m)
        acts = rng.sample(ACTIVITIES, m)
        facts = [f"The best thing to do in {c} is {a}." for c, a in zip(cities, acts)]
        queries = [f"What is the best thing to do in {c}?" for c in cities]
        units, _ = source_units("essays")
        start = rng.randrange(len(units))
        unit_texts = [" ".join(units[(start + k) % len(units)] for k in range(length // 8 + 40))] * m
    docs, depths = [], []
    for fact, filler in zip(facts, unit_texts):
        budget = length - 2 - len(tok(fact, add_special_tokens=False)["input_ids"]) - 1
        while len(tok(filler, add_special_tokens=False, verbose=False)["input_ids"]) < budget:
            filler = f"{filler} {filler}"
        depth = rng.random()
        docs.append(insert_at_depth(cut_to_tokens(tok, filler, budget), fact, depth))
        depths.append(round(depth, 3))
    return {"docs": docs, "queries": queries, "facts": facts, "depths": depths}


# ----------------------------------------------------------------------------------------- encoding
class Encoder:
    """Document vectors per variant, each distinct (text, tokens read) encoded once."""

    def __init__(self, folder: str):
        self.embedders = {w: load_embedder(folder, "cpu", w) for w in sorted(set(VARIANTS.values()))}
        self.tok = self.embedders[0].tokenizer
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        self.encoded_tokens = 0

    def tokens(self, text: str) -> int:
        return len(self.tok(text, verbose=False)["input_ids"])

    def pieces(self, text: str) -> list[str]:
        """``text`` cut into pieces of PIECE - 2 tokens (at token ends)."""
        offsets = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
            "offset_mapping"]
        step = PIECE - 2
        return [text[offsets[i][0]:offsets[min(i + step, len(offsets)) - 1][1]] for i in range(0, len(offsets), step)]

    def plan(self, variant: str, text: str) -> list[tuple[str, int]]:
        """(text, tokens read) pairs the variant needs for one document."""
        if variant == "chunk-mean-512":
            return [(p, min(self.tokens(p), PIECE)) for p in self.pieces(text)]
        e = self.embedders[VARIANTS[variant]]
        return [(text, min(self.tokens(text), e.max_length))]

    def cost(self, variant: str, texts: list[str], seen: set[tuple[str, int]]) -> int:
        total = 0
        for t in texts:
            for key in self.plan(variant, t):
                if key not in seen:
                    seen.add(key)
                    total += key[1]
        return total

    def vectors(self, variant: str, texts: list[str]) -> np.ndarray:
        """(len(texts), d) unit vectors of the documents under ``variant``."""
        e = self.embedders[VARIANTS[variant]]
        plans = [self.plan(variant, t) for t in texts]
        todo = sorted({k for p in plans for k in p if k not in self.cache})
        if todo:
            vecs = e.embed([k[0] for k in todo])
            for k, v in zip(todo, vecs):
                self.cache[k] = v
            self.encoded_tokens += sum(k[1] for k in todo)
        out = np.stack([np.mean([self.cache[k] for k in p], axis=0) for p in plans])  # (M, d)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    enc = Encoder(str(default_folder()))
    data = {(t, n): make_task(t, enc.tok, n, args.docs, args.seed) for t in args.tasks for n in args.lengths}
    seen: set[tuple[str, int]] = set()
    cost = sum(enc.cost(v, d["docs"], seen) for v in VARIANTS for d in data.values())
    print(f"cost estimate: {cost:,} document tokens to encode (after sharing) / ~{SPEED} tok/s = "
          f"~{cost / SPEED / 60:.1f} min (longer inputs run slower: attention grows with length)", flush=True)
    results: dict[str, Any] = {}
    q_embedder: Embedder = enc.embedders[0]
    for (task, n), d in data.items():
        q = q_embedder.embed(d["queries"])  # (M, d)
        row = results.setdefault(task, {}).setdefault(str(n), {})
        row["document_tokens"] = float(np.mean([enc.tokens(t) for t in d["docs"]]))
        for v in VARIANTS:
            t0 = time.perf_counter()
            docs = enc.vectors(v, d["docs"])  # (M, d)
            top1 = (q @ docs.T).argmax(axis=1)  # (M,)
            row[v] = float(np.mean(top1 == np.arange(len(top1))))
            print(f"{task:8s} {n:5d} {v:15s} top-1 {row[v]:.2f}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    for task in results:
        results[task]["average"] = {v: float(np.mean([results[task][str(n)][v] for n in args.lengths]))
                                    for v in VARIANTS}
    samples = {f"{t}@{n}": {"facts": d["facts"], "depths": d["depths"], "queries": d["queries"]}
               for (t, n), d in data.items()}
    return {"results": results, "samples": samples, "encoded_tokens": enc.encoded_tokens,
            "estimated_tokens": cost}


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(meta: dict[str, Any], out: dict[str, Any], lengths: list[int]) -> str:
    m = meta["machine"]
    lines = [
        "# LongEmbed-style passkey and needle retrieval with all-MiniLM-L6-v2 (embedding level)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Git: {meta['git']}, date: {meta['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['platform']}, Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        "",
        f"{meta['docs']} candidate documents of each length and {meta['docs']} queries (one fact per document, "
        "at a random depth); top-1 accuracy (nDCG@1) of the right document by cosine similarity; chance = "
        f"{1 / meta['docs']:.2f}. Lengths are MiniLM tokens with [CLS]/[SEP]. Variants: `truncate-256` = "
        "embed_window=0 (first 256 tokens), `window-512` = the first 512 tokens with the learned positions, "
        "`pi-2048` / `pi-4096` = LongEmbed linear position interpolation (embed_window=2048 / 4096), "
        "`chunk-mean-512` = mean of the vectors of 512-token pieces (the paper's parallel-context-window "
        "baseline). Plot: [longembed.png](longembed.png).",
    ]
    for task, rows in out["results"].items():
        lines += ["", f"## {task}", "", "| variant | " + " | ".join(str(n) for n in lengths) + " | average |",
                  "|---|" + "---:|" * (len(lengths) + 1)]
        for v in VARIANTS:
            cells = [f"{rows[str(n)][v]:.2f}" for n in lengths] + [f"**{rows['average'][v]:.2f}**"]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "## Reading", "", meta["conclusion"], ""]
    return "\n".join(lines)


def conclusion(out: dict[str, Any], lengths: list[int]) -> str:
    parts = []
    for task, rows in out["results"].items():
        avg = rows["average"]
        best = max(avg, key=avg.get)
        longest = str(max(lengths))
        parts.append(f"{task}: best average {best} ({avg[best]:.2f}); at {longest} tokens "
                     + ", ".join(f"{v} {rows[longest][v]:.2f}" for v in VARIANTS) + ".")
    return " ".join(parts)


def plot(out: dict[str, Any], lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(out["results"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = out["results"][task]
        for v in VARIANTS:
            ax.plot(lengths, [rows[str(n)][v] for n in lengths], marker="o", label=v)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("document length (MiniLM tokens)")
        ax.set_ylabel("top-1 accuracy (nDCG@1)")
        ax.set_title(f"{task}: all-MiniLM-L6-v2")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="document lengths in MiniLM tokens")
    p.add_argument("--docs", type=int, default=20, help="candidate documents (= queries) per length")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for longembed.{json,md,png}")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.tasks = [t for t in args.tasks.split(",") if t]
    if bad := [t for t in args.tasks if t not in TASKS]:
        p.error(f"--tasks {','.join(bad)}: use {','.join(TASKS)}")
    t0 = time.perf_counter()
    out = run(args)
    meta = {"command": shlex.join([".venv/bin/python", "benchmarks/longembed.py", *(argv or sys.argv[1:])]),
            "git": git_hash(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": environment(), "docs": args.docs, "lengths": args.lengths, "seed": args.seed,
            "variants": VARIANTS, "model": str(default_folder()), "seconds": round(time.perf_counter() - t0, 1)}
    meta["conclusion"] = conclusion(out, args.lengths)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "longembed.json").write_text(json.dumps({"meta": meta, **out}, indent=1) + "\n")
    (args.out / "longembed.md").write_text(markdown(meta, out, args.lengths))
    plot(out, args.lengths, args.out / "longembed.png")
    print(f"wrote {args.out}/longembed.{{json,md,png}} in {meta['seconds']} s")


if __name__ == "__main__":
    main()
