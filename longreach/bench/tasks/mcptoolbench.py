"""``tool-choice`` (MCPToolBench++, arXiv 2508.07575, synthetic analogue): many generated MCP-style tool
schemas (name, description, ``inputSchema`` with typed parameters, enums, required ones) in the context and
one user request; the model answers with one JSON tool call ``{"name": ..., "arguments": {...}}``.

Tools are ``<service>_<action>_<object>`` (40 services x 10 actions x 20 objects), each with 2-4 parameters
drawn from a typed pool (strings, integers, numbers, booleans, enums). The request names the service and
object and words the action with a synonym ("add a new invoice" for ``create``); the tools sharing two of
the three parts with the right one are offered first, so they are in the context whenever it holds them.
The right tool lands at the sample's ``depth`` in the list.

Parameters: ``tools`` (0 = as many as fit the length, else exactly 10..1000; a list that does not fit
raises), ``retrieve`` ("retrieve the tool first" comparison: the same tool pool, but only the ``top_k``
schemas ranked by a small Okapi BM25 over each tool's name, description and parameter names, computed in
this file, are put in the context, best first; meta ``retrieved`` says whether the right tool was among
them), ``top_k`` (1..50, default 5).

Scorer: 0.5 x (tool name exact) + 0.5 x argument accuracy, and 0 when the tool is wrong. Argument accuracy =
arguments with the right value / the union of gold and predicted argument names (a missing or an invented
argument both cost); numbers compare numerically, booleans as booleans, strings case- and space-insensitively.
The first JSON object (or Python dict literal) in the answer that looks like a tool call is used.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
from collections import Counter
from typing import Any

from ..task import BenchError, Sample, Task, prompt_tokens, register_task
from ..words import ADJECTIVES, COLORS, NAMES, NOUNS, PLACES
from .locobench import pack

SERVICES = """billing calendar crm inventory shipping weather maps music photos notes helpdesk payroll recruiting
fleet library pharmacy hotel flights banking stocks forum wiki chat mail storage analytics ads survey school clinic
garden kitchen gym parking energy insurance legal museum transit podcast""".split()
OBJECTS = """invoice order report event contact task ticket booking document playlist account reminder payment
shipment review profile note album route alert""".split()
#: action -> (description verb phrase, request phrases)
ACTIONS = {
    "create": ("Create a new {o}", ["add a new {o}", "set up a new {o}"]),
    "get": ("Get the details of one {o}", ["look up the {o}", "fetch the {o}"]),
    "list": ("List the {o} records that match filters", ["show me all {o} records", "enumerate the {o} records"]),
    "update": ("Update fields of an existing {o}", ["change the {o}", "modify the {o}"]),
    "delete": ("Delete a {o} permanently", ["remove the {o} for good", "erase the {o}"]),
    "search": ("Full-text search over {o} records", ["find any {o} mentioning", "look for a {o} by keyword"]),
    "export": ("Export a {o} to a file", ["download the {o} as a file", "save the {o} out to a file"]),
    "archive": ("Move a {o} to the archive", ["put the {o} away in the archive", "shelve the {o}"]),
    "share": ("Share a {o} with another user", ["give another user access to the {o}", "send the {o} over"]),
    "schedule": ("Schedule a {o} for a later time", ["plan the {o} for later", "queue the {o} for later"]),
}


def _name(r: random.Random) -> str:
    return f"{r.choice(NAMES)} {r.choice(NAMES)}"


#: parameter -> (JSON type, description, value maker, request wording, enum values)
PARAMS: dict[str, tuple[str, str, Any, str, list[str] | None]] = {
    "customer_name": ("string", "Full name of the customer", _name, "for customer {v}", None),
    "city": ("string", "City it applies to", lambda r: r.choice(PLACES), "in the city of {v}", None),
    "title": ("string", "Short title", lambda r: f"{r.choice(ADJECTIVES)} {r.choice(NOUNS)}", 'titled "{v}"', None),
    "tag": ("string", "A label to attach", lambda r: r.choice(NOUNS), "tagged {v}", None),
    "owner_email": ("string", "E-mail address of the owner", lambda r: f"{r.choice(NAMES).lower()}@example.org",
                    "owned by {v}", None),
    "reference_id": ("string", "External reference identifier", lambda r: f"REF-{r.randint(10000, 99999)}",
                     "with reference {v}", None),
    "quantity": ("integer", "Number of units", lambda r: r.randint(1, 500), "quantity {v}", None),
    "limit": ("integer", "Maximum number of results", lambda r: r.randint(2, 100), "at most {v} results", None),
    "priority": ("integer", "Priority from 1 (low) to 5 (high)", lambda r: r.randint(1, 5), "at priority {v}", None),
    "duration_minutes": ("integer", "Duration in minutes", lambda r: r.randint(5, 240), "lasting {v} minutes", None),
    "amount": ("number", "Amount of money", lambda r: round(r.uniform(1, 5000), 2), "for an amount of {v}", None),
    "discount_rate": ("number", "Discount as a fraction between 0 and 1", lambda r: round(r.uniform(0.05, 0.5), 2),
                      "with a discount rate of {v}", None),
    "notify": ("boolean", "Whether to notify the people involved", lambda r: r.random() < 0.5,
               "{v:notifying everyone involved|without notifying anyone}", None),
    "urgent": ("boolean", "Mark as urgent", lambda r: r.random() < 0.5, "{v:marked urgent|not marked urgent}", None),
    "include_archived": ("boolean", "Also include archived records", lambda r: r.random() < 0.5,
                         "{v:including archived ones|leaving out archived ones}", None),
    "currency": ("string", "ISO currency code", None, "in {v}", ["EUR", "USD", "GBP", "JPY", "CHF"]),
    "format": ("string", "File format", None, "as {v}", ["pdf", "csv", "json", "xlsx"]),
    "visibility": ("string", "Who can see it", None, "with {v} visibility", ["public", "private", "team"]),
    "language": ("string", "Language code", None, "in language {v}", ["en", "fr", "de", "es", "it"]),
    "color": ("string", "Display colour", None, "coloured {v}", COLORS),
}


def tool(seed: int, key: tuple[str, str, str]) -> dict[str, Any]:
    """The schema of tool ``key`` = (service, action, object), the same for a seed wherever it appears."""
    service, action, obj = key
    r = random.Random(f"tool-{seed}-{service}-{action}-{obj}")
    names = r.sample(sorted(PARAMS), r.randint(2, 4))
    props = {}
    for p in names:
        typ, desc, _, _, enum = PARAMS[p]
        props[p] = {"type": typ, "description": desc, **({"enum": list(enum)} if enum else {})}
    required = names[:r.randint(1, len(names))]
    return {"name": f"{service}_{action}_{obj}",
            "description": ACTIONS[action][0].format(o=obj) + f" in the {service} service.",
            "inputSchema": {"type": "object", "properties": props, "required": required}}


def schema_line(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(", ", ": "))


def _wording(p: str, v: Any) -> str:
    text = PARAMS[p][3]
    if isinstance(v, bool):
        yes, no = text[text.index(":") + 1:-1].split("|")
        return yes if v else no
    return text.format(v=v)


def request(seed: int, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A user request for ``schema`` and the gold arguments (its required ones and maybe some optional)."""
    r = random.Random(f"request-{seed}-{schema['name']}")
    service, action, obj = schema["name"].split("_", 2)
    props, required = schema["inputSchema"]["properties"], schema["inputSchema"]["required"]
    names = list(required) + [p for p in props if p not in required and r.random() < 0.5]
    args = {}
    for p in names:
        maker, enum = PARAMS[p][2], PARAMS[p][4]
        args[p] = r.choice(enum) if enum else maker(r)
    verb = r.choice(ACTIONS[action][1]).format(o=obj)
    parts = [_wording(p, args[p]) for p in names]
    return f"In the {service} service, please {verb}, " + ", ".join(parts) + ".", args


def _offer(seed: int, gold: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """Every other tool, in the order offered: those sharing two parts with the right one, then the rest."""
    s, a, o = gold
    near = [(s, a2, o) for a2 in ACTIONS if a2 != a] + [(s2, a, o) for s2 in SERVICES if s2 != s] + \
           [(s, a, o2) for o2 in OBJECTS if o2 != o]
    r = random.Random(f"tool-offer-{seed}")
    r.shuffle(near)
    taken = set(near) | {gold}
    rest = [(s2, a2, o2) for s2 in SERVICES for a2 in ACTIONS for o2 in OBJECTS if (s2, a2, o2) not in taken]
    r.shuffle(rest)
    return near + rest


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("_", " "))


def bm25_rank(query: str, docs: list[str], k1: float = 1.5, b: float = 0.75) -> list[int]:
    """Indices of ``docs`` by Okapi BM25 score for ``query``, best first (ties: earlier first)."""
    toks = [_words(d) for d in docs]
    avg = sum(map(len, toks)) / max(1, len(toks))
    df = Counter(w for t in toks for w in set(t))
    n = len(docs)
    q = _words(query)
    scores = []
    for i, t in enumerate(toks):
        tf = Counter(t)
        s = 0.0
        for w in q:
            if w in tf:
                idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
                s += idf * tf[w] * (k1 + 1) / (tf[w] + k1 * (1 - b + b * len(t) / avg))
        scores.append((-s, i))
    return [i for _, i in sorted(scores)]


def _tool_doc(schema: dict[str, Any]) -> str:
    return " ".join([schema["name"], schema["description"], *schema["inputSchema"]["properties"]])


INSTRUCTION = "You can call the following tools (MCP tool list, one JSON schema per line):"


@register_task
class ToolChoice(Task):
    """MCPToolBench++ (arXiv 2508.07575) analogue: pick one tool among many schemas and fill its arguments."""

    name = "tool-choice"
    family = "MCPToolBench"
    paper = "MCPToolBench++: A Large Scale AI Agent Model Context Protocol MCP Tool Use Benchmark (arXiv 2508.07575)"
    summary = "choose the right tool among many JSON tool schemas and fill its arguments as a JSON call"
    scorer = "0.5 x tool name exact + 0.5 x argument accuracy (0 if the tool is wrong)"
    uses_depth = True
    max_new_tokens = 96

    tools: int = 0
    retrieve: bool = False
    top_k: int = 5

    def __post_init__(self) -> None:
        if not (self.tools == 0 or 10 <= self.tools <= 1000):
            raise ValueError(f"tools must be 0 (fit the length) or within 10..1000, got {self.tools}")
        if not 1 <= self.top_k <= 50:
            raise ValueError(f"top_k must be within 1..50, got {self.top_k}")

    def _generate(self, tokenizer: Any, budget: int, seed: int, depth: float) -> Sample:
        r = random.Random(f"tool-choice-{seed}")
        gold_key = (r.choice(SERVICES), r.choice(list(ACTIONS)), r.choice(OBJECTS))
        gold = tool(seed, gold_key)
        text, args = request(seed, gold)
        call = json.dumps({"name": gold["name"], "arguments": args})
        question = (f"User request: {text}\nCall exactly one of the tools above. Reply with only a JSON object "
                    '{"name": <tool name>, "arguments": {<parameter>: <value>, ...}}.')
        offer = _offer(seed, gold_key)

        def build(keys: list[tuple[str, str, str]], ranked: bool = False) -> Sample:
            schemas = [tool(seed, k) for k in keys]
            if not ranked:  # shown in a seeded order, the right tool at the depth
                random.Random(f"tool-order-{seed}-{len(keys)}").shuffle(schemas)
                schemas.insert(round(depth * len(schemas)), gold)
            context = INSTRUCTION + "\n" + "\n".join(schema_line(s) for s in schemas)
            return Sample(context, question, "Tool call:", [call], {"tools": len(schemas), "tool": gold["name"]})

        if self.tools:
            pool = offer[:self.tools - 1]
            sample = build(pool)
            tokens = prompt_tokens(tokenizer, sample)
            if tokens > budget and not self.retrieve:
                raise BenchError(f"the {self.tools} tools take {tokens} prompt tokens, more than the {budget} "
                                 "available; use a longer length or fewer tools")
        else:
            pool, sample, tokens = pack(tokenizer, budget, offer, lambda k, _: schema_line(tool(seed, k)), build,
                                        "tools")
        sample.meta["pool"] = len(pool) + 1
        if self.retrieve:
            everything = [tool(seed, k) for k in pool] + [gold]
            random.Random(f"tool-order-{seed}-{len(pool)}").shuffle(everything)
            order = bm25_rank(text, [_tool_doc(s) for s in everything])
            top = [everything[i] for i in order[:self.top_k]]
            rank = next(j for j, i in enumerate(order) if everything[i] is gold)
            sample = Sample(INSTRUCTION + "\n" + "\n".join(schema_line(s) for s in top), question, "Tool call:",
                            [call], {"tools": len(top), "tool": gold["name"], "pool": len(everything),
                                     "retrieved": rank < self.top_k, "gold_rank": rank + 1})
            tokens = prompt_tokens(tokenizer, sample)
            if tokens > budget:
                raise BenchError(f"the {self.top_k} retrieved tools take {tokens} tokens, more than the {budget} "
                                 "available; use a longer length or a smaller top_k")
        else:
            sample.meta["position"] = round(depth * (sample.meta["tools"] - 1))
        sample.meta.update(tokens=tokens, arguments=len(args))
        return sample

    def score(self, sample: Sample, prediction: str) -> float:
        return score_call(parse_call(prediction), json.loads(sample.references[0]))

    def cell_metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """``tools``: mean tools in the context (and, retrieving, ``retrieved``: share of samples whose right
        tool was among the top k)."""
        if not records:
            return {}
        out: dict[str, Any] = {"tools": sum(r["meta"].get("tools", 0) for r in records) / len(records)}
        if any("retrieved" in r["meta"] for r in records):
            out["retrieved"] = sum(bool(r["meta"].get("retrieved")) for r in records) / len(records)
        return out


# ---------------------------------------------------------------------------------------------- scoring
def _as_call(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    for wrap in ("function", "tool_call", "call"):
        if isinstance(obj.get(wrap), dict):
            obj = {**obj, **obj[wrap]}
    name = next((obj[k] for k in ("name", "tool", "tool_name") if isinstance(obj.get(k), str)), None)
    if name is None:
        return None
    args = next((obj[k] for k in ("arguments", "parameters", "args", "input") if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            args = {}
    return {"name": name, "arguments": args if isinstance(args, dict) else {}}


def parse_call(text: str) -> dict[str, Any] | None:
    """The first JSON object (or Python dict literal) in ``text`` that is a tool call, else None."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        at = m.start()
        try:
            obj, _ = decoder.raw_decode(text, at)
        except ValueError:
            obj = _literal(text, at)
        call = _as_call(obj)
        if call is not None:
            return call
    return None


def _literal(text: str, at: int) -> Any:
    depth = 0
    for i in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            try:
                return ast.literal_eval(text[at:i + 1])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
    return None


def same_value(gold: Any, pred: Any) -> bool:
    if isinstance(gold, bool):
        return pred is gold or (isinstance(pred, str) and pred.strip().lower() == str(gold).lower())
    if isinstance(gold, int | float):
        try:
            return not isinstance(pred, bool) and math.isclose(float(pred), float(gold), rel_tol=1e-9, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return isinstance(pred, str | int | float) and " ".join(str(pred).lower().split()) == " ".join(
        str(gold).lower().split())


def score_call(pred: dict[str, Any] | None, gold: dict[str, Any]) -> float:
    """0.5 x (tool right) + 0.5 x (right arguments / union of gold and predicted argument names)."""
    if pred is None or pred["name"].strip() != gold["name"]:
        return 0.0
    g, p = gold["arguments"], pred["arguments"]
    keys = set(g) | set(p)
    right = sum(1 for k in g if k in p and same_value(g[k], p[k]))
    return 0.5 + 0.5 * (right / len(keys) if keys else 1.0)
