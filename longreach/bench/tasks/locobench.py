"""LoCoBench-style code tasks (LoCoBench, arXiv 2509.24907, offline analogue) over real multi-file code: the
sources of this Python's standard library packages (``email``, ``http``, ``json``, ``logging``, ``asyncio``,
... :data:`PACKAGES`), read from disk with :mod:`sysconfig` / :mod:`ast`, never downloaded.

The context is a set of file excerpts, each opened by a ``# file: path`` header and holding the file's
top-level imports and some of its top-level definitions, in source order (nothing inside a definition is
cut). The definitions a question needs are always there; other definitions from the same package, then
from further packages, fill the length (more files at longer lengths). Gold answers are computed with
:mod:`ast`: imports are resolved statically (``from .x import f``, ``from pkg import mod``, ``mod.f``,
re-exports through ``__init__``), within the corpus only.

- ``code-definition``: a call site in one file (shown in the question); name the file and the top-level
  function or class the called name resolves to. When other files define the same name, those definitions
  are put in the context too (meta ``ambiguous``). Scorer: exact file + name (0/1).
- ``code-callchain``: a chain of ``steps`` top-level functions, spanning at least two files, in which each
  calls the next; its start and end are given (the only call path between them of at most ``steps``
  functions in the whole corpus). Name the functions in order. Scorer: step-level, the share of the
  intermediate functions named at the right position.
- ``code-changed``: the same excerpts twice, version A then version B; in B one top-level function's
  behaviour was changed by a generated one-token edit (a comparison, arithmetic or boolean operator flipped,
  or an integer constant moved by one). Name its file and function. Scorer: exact file + name (0/1).

The corpus is this interpreter's standard library, so samples are deterministic per seed for a given Python
minor version (recorded in meta ``source``); other Python versions give other (equally valid) samples.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import os
import random
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..task import BenchError, Sample, Task, fit_units, prompt_tokens, register_task

#: Multi-file standard-library packages read, in this order (tests and caches are skipped).
PACKAGES = ("email", "json", "http", "urllib", "logging", "concurrent", "xmlrpc", "wsgiref", "tomllib", "zoneinfo",
            "re", "collections", "dbm")
#: More packages, parsed only when a long prompt needs more definitions to fill it (filler only).
MORE_PACKAGES = ("importlib", "html", "ctypes", "xml", "unittest", "multiprocessing", "asyncio", "idlelib")
MAX_CHUNK = 6000  # characters: longer definitions are never shown (a few huge classes)
SKIP_DIRS = {"test", "tests", "__pycache__", "idle_test"}
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One top-level definition of a module: its name, kind and source text (decorators included)."""

    module: str
    name: str
    kind: str  # "def" | "class"
    text: str
    line: int


@dataclasses.dataclass
class Module:
    name: str  # dotted, e.g. "email.utils"
    path: str  # relative to the standard library, e.g. "email/utils.py"
    imports: str  # the top-level import statements, in order
    chunks: dict[str, Chunk]
    bindings: dict[str, tuple[str, ...]]  # local name -> ("mod", module) | ("name", module, name)
    tree: ast.Module
    lines: list[str]


@dataclasses.dataclass
class Corpus:
    modules: dict[str, Module]
    edges: dict[tuple[str, str], set[tuple[str, str]]]  # (module, function) -> called top-level functions
    calls: list[tuple[str, str, int, str, tuple[str, str]]]  # caller module, function, line, text, target

    def chunk(self, key: tuple[str, str]) -> Chunk:
        return self.modules[key[0]].chunks[key[1]]

    def path(self, key: tuple[str, str]) -> str:
        return self.modules[key[0]].path


def _segment(lines: list[str], node: ast.AST) -> tuple[str, int]:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[start - 1:node.end_lineno]), start


def _read_module(root: str, rel: str) -> Module | None:
    try:
        with open(os.path.join(root, rel), encoding="utf-8") as fh:
            src = fh.read()
        tree = ast.parse(src)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    name = rel[:-3].replace("/", ".").removesuffix(".__init__")
    lines = src.splitlines()
    imports, chunks = [], {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(_segment(lines, node)[0])
        elif isinstance(node, _FUNCS + (ast.ClassDef,)):
            text, start = _segment(lines, node)
            if len(text) <= MAX_CHUNK and node.name not in chunks:
                chunks[node.name] = Chunk(name, node.name, "class" if isinstance(node, ast.ClassDef) else "def",
                                          text, start)
    return Module(name, rel, "\n".join(imports), chunks, {}, tree, lines)


def _bindings(mod: Module, modules: dict[str, Module]) -> dict[str, tuple[str, ...]]:
    pkg = mod.name if mod.path.endswith("__init__.py") else mod.name.rpartition(".")[0]
    out: dict[str, tuple[str, ...]] = {}
    for node in mod.tree.body:
        if isinstance(node, ast.ImportFrom):
            base = pkg
            for _ in range(max(0, node.level - 1)):
                base = base.rpartition(".")[0]
            src = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
            for a in node.names:
                if a.name == "*":
                    continue
                if f"{src}.{a.name}" in modules:
                    out[a.asname or a.name] = ("mod", f"{src}.{a.name}")
                elif src in modules:
                    out[a.asname or a.name] = ("name", src, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in modules:
                    out[a.asname] = ("mod", a.name)
                elif not a.asname:
                    out[a.name.split(".")[0]] = ("mod", a.name.split(".")[0])
    return out


def _lookup(modules: dict[str, Module], mod: str, name: str, hops: int = 0) -> tuple[str, str] | None:
    """Where ``mod.name`` is defined, following re-exports (``from .decoder import JSONDecoder``)."""
    m = modules.get(mod)
    if m is None:
        return None
    if name in m.chunks:
        return mod, name
    b = m.bindings.get(name)
    if b and b[0] == "name" and hops < 4:
        return _lookup(modules, b[1], b[2], hops + 1)
    return None


def _resolve(modules: dict[str, Module], mod: Module, func: ast.expr) -> tuple[str, str] | None:
    if isinstance(func, ast.Name):
        if func.id in mod.chunks:
            return mod.name, func.id
        b = mod.bindings.get(func.id)
        return _lookup(modules, b[1], b[2]) if b and b[0] == "name" else None
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or not parts:
        return None
    b = mod.bindings.get(func.id)
    if not b or b[0] != "mod":
        return None
    target, rest = b[1], parts[::-1]
    while len(rest) > 1 and f"{target}.{rest[0]}" in modules:
        target, rest = f"{target}.{rest[0]}", rest[1:]
    return _lookup(modules, target, rest[0]) if len(rest) == 1 else None


def _call_text(lines: list[str], func: ast.expr) -> str:
    if func.lineno != func.end_lineno:
        return ""
    raw = lines[func.lineno - 1].encode("utf-8")
    return raw[func.col_offset:func.end_col_offset].decode("utf-8", "replace")


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.cache
def read_package(pkg: str) -> dict[str, Module]:
    """The modules of one standard-library package (tests skipped), parsed once per process."""
    root = stdlib_root()
    modules: dict[str, Module] = {}
    for here, dirs, files in os.walk(os.path.join(root, pkg)):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for f in sorted(files):
            if f.endswith(".py"):
                m = _read_module(root, os.path.relpath(os.path.join(here, f), root).replace(os.sep, "/"))
                if m is not None:
                    modules[m.name] = m
    return modules


@functools.lru_cache(maxsize=1)
def corpus() -> Corpus:
    """The :data:`PACKAGES` parsed once per process, with their resolved call graph."""
    root = stdlib_root()
    modules: dict[str, Module] = {}
    for pkg in PACKAGES:
        modules.update(read_package(pkg))
    if len(modules) < 20:
        raise BenchError(f"the standard library's sources were not found under {root}; the code tasks need them")
    for m in modules.values():
        m.bindings = _bindings(m, modules)
    edges: dict[tuple[str, str], set[tuple[str, str]]] = {}
    calls = []
    for m in modules.values():
        for node in m.tree.body:
            if not isinstance(node, _FUNCS) or node.name not in m.chunks:
                continue
            for call in ast.walk(node):
                if not isinstance(call, ast.Call):
                    continue
                target = _resolve(modules, m, call.func)
                if target is None or target == (m.name, node.name):
                    continue
                if target[0] != m.name:
                    calls.append((m.name, node.name, call.lineno, _call_text(m.lines, call.func), target))
                if modules[target[0]].chunks[target[1]].kind == "def":
                    edges.setdefault((m.name, node.name), set()).add(target)
    return Corpus(modules, edges, calls)


# ------------------------------------------------------------------------------------------ packing
def _render(items: list[tuple[Module, Chunk]], seed: int, edit: tuple[Chunk, str] | None = None) -> str:
    """File excerpts for ``items``: files in a seeded order, definitions in source order."""
    by_mod: dict[str, tuple[Module, list[Chunk]]] = {}
    for mod, ch in items:
        by_mod.setdefault(mod.name, (mod, []))[1].append(ch)
    order = sorted(by_mod, key=lambda m: (random.Random(f"loco-file-{seed}-{m}").random(), m))
    files = []
    for m in order:
        mod, chunks = by_mod[m]
        parts = [f"# file: {mod.path}"] + ([mod.imports] if mod.imports else [])
        parts += [edit[1] if edit and ch == edit[0] else ch.text for ch in sorted(chunks, key=lambda ch: ch.line)]
        files.append("\n\n".join(parts))
    return "\n\n\n".join(files)


def _fillers(c: Corpus, required: list[tuple[str, str]], seed: int) -> Iterator[tuple[Module, Chunk]]:
    """Other definitions, in the order they are offered: the required files' own, then the rest of their
    packages, then the other packages, then :data:`MORE_PACKAGES` (read only if reached); each group in a
    seeded order, file by file."""
    rng = random.Random(f"loco-fill-{seed}")
    req_mods = list(dict.fromkeys(k[0] for k in required))
    req_pkgs = {m.split(".")[0] for m in req_mods}
    rest = [m for m in c.modules if m not in req_mods]
    same = [m for m in rest if m.split(".")[0] in req_pkgs]
    other = [m for m in rest if m.split(".")[0] not in req_pkgs]
    rng.shuffle(same)
    rng.shuffle(other)
    taken = set(required)

    def offer(mods: list[Module]) -> Iterator[tuple[Module, Chunk]]:
        for mod in mods:
            names = sorted(mod.chunks)
            rng.shuffle(names)
            yield from ((mod, mod.chunks[n]) for n in names if (mod.name, n) not in taken)

    yield from offer([c.modules[m] for m in req_mods + same + other])
    for pkg in MORE_PACKAGES:
        mods = list(read_package(pkg).values())
        rng.shuffle(mods)
        yield from offer(mods)


class BaseTooLong(BenchError):
    """The prompt holds more than the budget before any filler is added."""


def pack(tokenizer: Any, budget: int, items: Iterable[Any], text: Callable[[Any, list[Any]], str],
         build: Callable[[list[Any]], Sample], what: str, short_ok: float = 0.0) -> tuple[list[Any], Sample, int]:
    """Greedy fill for units of very different sizes: offer ``items`` (lazily) in order and keep each whose
    text (``text(item, kept)``: what adding it to ``kept`` brings, e.g. a file header too), counted
    separately, still fits; then trim exactly with :func:`fit_units` (``build(kept prefix)``).
    ``short_ok``: raise when the items ran out below that share of the budget. Returns (kept, sample, tokens)."""
    left = budget - prompt_tokens(tokenizer, build([]))
    if left < 0:
        raise BaseTooLong(f"the prompt without any {what} is already {budget - left} tokens, more than the "
                         f"{budget} available; use a longer length")
    kept: list[Any] = []
    misses, exhausted = 0, True
    for item in items:
        if left < 8 or misses > 200:
            exhausted = False
            break
        cost = len(tokenizer(text(item, kept), add_special_tokens=False).input_ids) + 2  # + the joins
        if cost <= left:
            kept.append(item)
            left, misses = left - cost, 0
        else:
            misses += 1
    n, sample, tokens = fit_units(lambda n: build(kept[:n]), tokenizer, budget, limit=len(kept), what=what)
    if short_ok and exhausted and tokens < short_ok * budget:
        raise BenchError(f"the corpus holds only {tokens} tokens of {what}, short of the {budget} asked; "
                         "use a shorter length")
    return kept[:n], sample, tokens


def _code_sample(tokenizer: Any, budget: int, seed: int, required: list[tuple[str, str]], question: str,
                 references: list[str], meta: dict[str, Any], preamble: str,
                 edit: tuple[tuple[str, str], str] | None = None) -> Sample:
    c = corpus()
    req = [(c.modules[k[0]], c.chunk(k)) for k in required]
    changed = (c.chunk(edit[0]), edit[1]) if edit else None
    opened = {k[0] for k in required}
    counted = [0]  # kept items already added to ``opened``

    def build(extra: list[tuple[Module, Chunk]]) -> Sample:
        body = _render(req + extra, seed)
        if changed:
            body = "=== Version A ===\n\n" + body + "\n\n\n=== Version B ===\n\n" + _render(req + extra, seed, changed)
        files = sorted({mod.path for mod, _ in req + extra})
        return Sample(preamble + "\n\n" + body, question, "Answer:", list(references),
                      {**meta, "files": files, "definitions": len(req) + len(extra)})

    def text(item: tuple[Module, Chunk], kept: list[tuple[Module, Chunk]]) -> str:
        opened.update(m.name for m, _ in kept[counted[0]:])
        counted[0] = len(kept)
        mod, ch = item
        t = ("" if mod.name in opened else f"# file: {mod.path}\n{mod.imports}\n") + ch.text
        return t + "\n" + t if changed else t  # every definition is shown twice

    _, sample, tokens = pack(tokenizer, budget, _fillers(c, required, seed), text, build, "definitions",
                             short_ok=0.9)
    sample.meta.update(tokens=tokens, source=f"python{sys.version_info[0]}.{sys.version_info[1]} stdlib")
    return sample


def _chars_per_token(tokenizer: Any) -> float:
    probe = corpus().chunk(("json.decoder", "py_scanstring")).text if "json.decoder" in corpus().modules else "x" * 400
    return len(probe) / max(1, len(tokenizer(probe, add_special_tokens=False).input_ids))


def _cap(tokenizer: Any, budget: int, share: float = 0.9) -> int:
    """Characters of required code a sample can hold at this budget (the rest: instructions, question)."""
    return int((budget - 120) * share * _chars_per_token(tokenizer))


def _required_size(c: Corpus, keys: list[tuple[str, str]]) -> int:
    mods = {k[0] for k in keys}
    return sum(len(c.chunk(k).text) for k in keys) + sum(len(c.modules[m].imports) + 40 for m in mods)


# ---------------------------------------------------------------------------------------------- scoring
_PATH_RE = re.compile(r"[\w./\\-]+\.py\b")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _clean_path(p: str) -> str:
    p = p.replace("\\", "/").strip("./")
    p = re.sub(r"^(?:.*?/)?(?:Lib|lib/python3\.\d+)/", "", p)
    return p


def match_definition(prediction: str, reference: str, files: list[str]) -> float:
    """1 when the first ``.py`` path in ``prediction`` is the gold file (a unique suffix of it counts) and the
    gold name appears in it as a word (``Class.method`` or ``name``)."""
    gold_path, _, gold_name = reference.rpartition(":")
    text = prediction.replace("`", " ").replace("'", " ").replace('"', " ")
    m = _PATH_RE.search(text)
    if not m:
        return 0.0
    p = _clean_path(m.group(0))
    same_base = [f for f in files if f == p or f.endswith("/" + p)]
    if not (p == gold_path or (gold_path.endswith("/" + p) and same_base == [gold_path])):
        return 0.0
    rest = text[:m.start()] + " " + text[m.end():]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", rest))
    words |= {w.rstrip(".") for w in words}
    return float(gold_name in words or gold_name.rpartition(".")[2] in {w.rpartition(".")[2] for w in words})


def chain_steps(prediction: str) -> list[str]:
    """The function names of a predicted chain, in order (``a -> b -> c``, ``a, b, c``, a numbered list, with
    or without ``path:`` prefixes, ``()`` or backticks)."""
    text = re.sub(r"[\w./\\-]+\.py\s*:{0,2}\s*", " ", prediction)  # file paths are not steps
    text = re.sub(r"^\s*\d+[.)]\s*", "", text, flags=re.M)  # list numbers
    out = []
    for part in re.split(r"->|→|=>|,|\n|;|\bthen\b|\bcalls\b", text):
        names = _IDENT_RE.findall(part.replace("()", " "))
        if names:
            out.append(names[-1] if len(names) == 1 else max(names, key=lambda w: ("_" in w, len(w))))
    return out


def score_chain(prediction: str, references: list[str]) -> float:
    """Share of the intermediate functions (``references[1:-1]``) named at their position; the chain may be
    written with or without its given start."""
    steps = chain_steps(prediction)
    if steps and steps[0] == references[0]:
        steps = steps[1:]
    mid = references[1:-1]
    return sum(1 for i, name in enumerate(mid) if i < len(steps) and steps[i] == name) / len(mid)


# ------------------------------------------------------------------------------------------------ tasks
class _CodeTask(Task):
    family = "LoCoBench"
    paper = ("LoCoBench: A Benchmark for Long-Context Large Language Models in Complex Software "
             "Engineering (arXiv 2509.09614)")
    max_new_tokens = 40

    def score(self, sample: Sample, prediction: str) -> float:
        return match_definition(prediction, sample.references[0], sample.meta.get("files", []))


PREAMBLE = ("Below are excerpts of Python source files. Each file starts with a '# file: <path>' line, then "
            "its imports and some of its top-level definitions.")


@register_task
class CodeDefinition(_CodeTask):
    """LoCoBench (arXiv 2509.24907) analogue: resolve a cross-file call site to its definition."""

    name = "code-definition"
    summary = "real multi-file stdlib code: which file and function/class a shown call site resolves to"
    scorer = "exact file + name of the definition (0/1)"

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        c = corpus()
        cap = _cap(tokenizer, budget)
        rng = random.Random(f"code-def-{seed}")
        by_target: dict[tuple[str, str], list[Any]] = {}
        for call in sorted(set(c.calls)):
            by_target.setdefault(call[4], []).append(call)
        targets = sorted(by_target)
        rng.shuffle(targets)  # every definition equally likely, however often it is called (re.compile ...)
        cands = [call for t in targets for call in rng.sample(by_target[t], len(by_target[t]))]
        by_name: dict[str, list[tuple[str, str]]] = {}
        for m in c.modules.values():
            for n in m.chunks:
                by_name.setdefault(n, []).append((m.name, n))
        for mod, fn, line, call, target in cands:
            others = [k for k in by_name[target[1]] if k != target and k[0] != mod][:2]
            required = [(mod, fn), target] + others
            if _required_size(c, required) > cap:
                continue
            caller = c.modules[mod]
            where = caller.lines[line - 1].strip()
            question = (f"In file {caller.path}, the function {fn} calls {call}(...) in the line `{where}`. "
                        "Which file and which top-level function or class of the files above does this call "
                        "resolve to (follow the imports)? Answer as path/to/file.py:name.")
            ref = f"{c.path(target)}:{target[1]}"
            meta = {"caller": f"{caller.path}:{fn}", "call": call, "ambiguous": len(others)}
            with contextlib.suppress(BaseTooLong):  # a larger estimate than the tokenizer's: try the next
                return _code_sample(tokenizer, budget, seed, required, question, [ref], meta, PREAMBLE)
        raise BenchError(f"length too short for task {self.name!r}: no call site fits; use a longer length")


@register_task
class CodeCallchain(_CodeTask):
    """LoCoBench (arXiv 2509.24907) analogue: trace a call chain across files between two given functions."""

    name = "code-callchain"
    summary = "real multi-file stdlib code: name the functions of the call chain from A to Z across files"
    scorer = "step-level: share of the intermediate functions named at the right position"
    max_new_tokens = 64

    steps: int = 3

    def __post_init__(self) -> None:
        if not 3 <= self.steps <= 5:
            raise ValueError(f"steps must be within 3..5, got {self.steps}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        c = corpus()
        cap = _cap(tokenizer, budget)
        for chain in _chains(self.steps, seed):
            if _required_size(c, chain) > cap:
                continue
            a, z = chain[0], chain[-1]
            question = (f"Function {a[1]} ({c.path(a)}) reaches function {z[1]} ({c.path(z)}) through a chain of "
                        f"{self.steps} functions shown above, ends included, each calling the next. Name the "
                        f"chain in order, as {a[1]} -> ... -> {z[1]}.")
            meta = {"chain": [f"{c.path(k)}:{k[1]}" for k in chain], "chain_files": len({k[0] for k in chain})}
            with contextlib.suppress(BaseTooLong):
                return _code_sample(tokenizer, budget, seed, list(dict.fromkeys(chain)), question,
                                    [k[1] for k in chain], meta, PREAMBLE)
        raise BenchError(f"length too short for task {self.name!r}: no call chain fits; use a longer length")

    def score(self, sample: Sample, prediction: str) -> float:
        return score_chain(prediction, sample.references)


@functools.lru_cache(maxsize=8)
def _all_chains(steps: int) -> list[tuple[tuple[str, str], ...]]:
    """Chains of ``steps`` functions over >= 2 files that are the only call path between their ends
    of at most ``steps`` functions."""
    edges = corpus().edges
    out = []
    for a in sorted(edges):
        paths: dict[tuple[str, str], list[tuple[tuple[str, str], ...]]] = {}
        frontier: list[tuple[tuple[str, str], ...]] = [(a,)]
        for _ in range(steps - 1):
            frontier = [p + (n,) for p in frontier for n in sorted(edges.get(p[-1], ())) if n not in p]
            for p in frontier:
                paths.setdefault(p[-1], []).append(p)
        for ps in paths.values():
            if len(ps) == 1 and len(ps[0]) == steps and len({k[0] for k in ps[0]}) >= 2:
                out.append(ps[0])
    return out


def _chains(steps: int, seed: int) -> list[tuple[tuple[str, str], ...]]:
    chains = list(_all_chains(steps))
    random.Random(f"code-chain-{seed}").shuffle(chains)
    return chains


# ------------------------------------------------------------------------------------------- edits
_FLIP = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
         ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}
_BINFLIP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "//")}


def edits(chunk: Chunk) -> list[tuple[int, int, str, str]]:
    """Candidate one-token behaviour changes in ``chunk``: (start, end, old, new) character spans."""
    src = chunk.text
    tree = ast.parse(src)
    starts = [0]
    for line in src.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def pos(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        text = src[starts[line - 1]:starts[line]]
        return starts[line - 1] + len(text.encode("utf-8")[:col].decode("utf-8", "replace"))

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _FLIP:
            a, b = pos(node.left.end_lineno, node.left.end_col_offset), pos(node.comparators[0].lineno,
                                                                            node.comparators[0].col_offset)
            old, new = _FLIP[type(node.ops[0])]
            if src[a:b].strip() == old:
                k = a + src[a:b].index(old)
                out.append((k, k + len(old), old, new))
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINFLIP:
            a, b = pos(node.left.end_lineno, node.left.end_col_offset), pos(node.right.lineno, node.right.col_offset)
            old, new = _BINFLIP[type(node.op)]
            if src[a:b].strip(" ()") == old:
                k = a + src[a:b].index(old)
                out.append((k, k + len(old), old, new))
        elif isinstance(node, ast.BoolOp) and len(node.values) == 2:
            a, b = pos(node.values[0].end_lineno, node.values[0].end_col_offset), pos(node.values[1].lineno,
                                                                                      node.values[1].col_offset)
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            if src[a:b].strip(" ()") == old:
                k = a + src[a:b].index(old)
                out.append((k, k + len(old), old, new))
        elif (isinstance(node, ast.Constant) and type(node.value) is int and node.lineno == node.end_lineno
              and 0 <= node.value < 1000):
            a, b = pos(node.lineno, node.col_offset), pos(node.end_lineno, node.end_col_offset)
            if src[a:b] == str(node.value):
                out.append((a, b, src[a:b], str(node.value + 1)))
    checked = []
    for a, b, old, new in sorted(set(out)):
        changed = src[:a] + new + src[b:]
        try:
            if ast.dump(ast.parse(changed)) != ast.dump(tree):
                checked.append((a, b, old, new))
        except SyntaxError:
            continue
    return checked


@register_task
class CodeChanged(_CodeTask):
    """LoCoBench (arXiv 2509.24907) analogue: find the function whose behaviour changed between two versions."""

    name = "code-changed"
    summary = "real multi-file stdlib code shown twice; name the file and function a generated edit changed"
    scorer = "exact file + name of the changed function (0/1)"

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        c = corpus()
        cap = _cap(tokenizer, budget) // 2
        rng = random.Random(f"code-changed-{seed}")
        keys = sorted((m.name, n) for m in c.modules.values() for n, ch in m.chunks.items() if ch.kind == "def")
        rng.shuffle(keys)
        for key in keys:
            if _required_size(c, [key]) > cap:
                continue
            options = edits(c.chunk(key))
            if not options:
                continue
            a, b, old, new = rng.choice(options)
            text = c.chunk(key).text
            changed = text[:a] + new + text[b:]
            line = text[:a].count("\n") + 1
            question = ("Version B is a copy of version A in which exactly one top-level function behaves "
                        "differently. Which file and which function changed? Answer as path/to/file.py:name.")
            meta = {"edit": f"{old} -> {new}", "edit_line": line}
            with contextlib.suppress(BaseTooLong):
                return _code_sample(tokenizer, budget, seed, [key], question, [f"{c.path(key)}:{key[1]}"], meta,
                                    PREAMBLE, edit=(key, changed))
        raise BenchError(f"length too short for task {self.name!r}: no function fits; use a longer length")
