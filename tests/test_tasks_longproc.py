"""LongProc-style tasks: the gold TSV re-read from the generated HTML with the standard HTML parser, the
gold route re-followed from the city descriptions, every countdown solution re-computed, sizing, and the
three scorers on hand-written answers."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from conftest import byte_tokenizer

from longreach.bench.task import BenchError, Sample, make_task, prompt_tokens
from longreach.bench.tasks.longproc import expression_value

TOK = byte_tokenizer()


# ------------------------------------------------------------------------------------------ html-to-tsv
class Products(HTMLParser):
    """The non-sponsored products of a page: name, maker, price, rating (written here, not from longproc.py)."""

    RECORD = {"product-card", "item", "listing"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.depth, self.cur, self.field = [], 0, None, []

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        if self.cur is None and classes & self.RECORD and "sponsored" not in classes:
            self.cur, self.depth, self.text = {}, 0, ""
        if self.cur is None:
            return
        self.depth += 1
        field = ("name" if classes & {"title", "name"} or tag == "strong" else "maker" if "maker" in classes or
                 tag == "em" else "price" if "price" in classes or tag == "b" else "rating" if "rating" in classes
                 else None)
        self.field.append(field)

    def handle_endtag(self, tag):
        if self.cur is None:
            return
        self.depth -= 1
        self.field.pop()
        if self.depth == 0:
            rating = self.cur.get("rating") or re.search(r"rated (\d\.\d) of 5", self.text).group(1)
            self.rows.append([self.cur["name"].strip(), self.cur["maker"].strip().removeprefix("by "),
                              self.cur["price"].strip(), re.search(r"\d\.\d", rating).group()])
            self.cur = None

    def handle_data(self, data):
        if self.cur is None:
            return
        self.text += data
        field = next((f for f in reversed(self.field) if f), None)
        if field:
            self.cur[field] = self.cur.get(field, "") + data


def test_html_gold_rows_are_the_pages_products():
    task = make_task("html-to-tsv")
    assert task.family == "LongProc" and task.max_new_tokens == 32 + 28 * 16
    layouts = set()
    for seed in range(9):
        s = task.generate(TOK, 9000, seed=seed)
        page = s.context[s.context.index("<!DOCTYPE"):]
        parser = Products()
        parser.feed(page)
        gold = [line.split("\t") for line in s.references[0].splitlines()]
        assert gold[0] == ["name", "maker", "price", "rating"]
        assert parser.rows == gold[1:] and len(gold) - 1 == s.meta["records"] == 16
        assert page.count("Sponsored") >= 1 and s.meta["distractors"] > 0
        layouts.add(s.meta["layout"])
    assert layouts == {"cards", "table", "list"}


def test_html_sizing_fills_with_products_then_distractors():
    small = make_task("html-to-tsv:records=4")
    assert small.max_new_tokens == 32 + 28 * 4
    s = small.generate(TOK, 3000, seed=1)
    assert s.meta["records"] == 4 and s.meta["distractors"] > 0
    assert s.meta["tokens"] == prompt_tokens(TOK, s) and 0.95 * (3000 - 144) <= s.meta["tokens"] <= 3000 - 144
    s = make_task("html-to-tsv:records=400").generate(TOK, 13000, seed=1)  # fewer fit than asked
    assert 1 <= s.meta["records"] < 400 and s.meta["distractors"] == 0
    with pytest.raises(BenchError, match="longer length"):
        make_task("html-to-tsv").generate(TOK, 1000, seed=0)


GOLD = "name\tmaker\tprice\trating\nPolite Silver\tQuarrow & Sons\t$112.34\t4.2\nDark Shell\tRosthaven Guild\t$101.32\t3.3"


def test_html_scorer_on_hand_written_answers():
    task = make_task("html-to-tsv")
    s = Sample("", "q", "", [GOLD], {})
    assert task.score(s, GOLD) == 1.0  # right
    rows_only = "Polite Silver\tQuarrow &amp; Sons\t112.34\t4.2\ndark shell\tRosthaven Guild\t$101.32 \t3.3"
    assert task.score(s, rows_only) == 1.0  # no header, entity, no $, case, spaces: cells are normalised
    verbose = "Here is the table:\n```tsv\n" + GOLD + "\n```\nI extracted 2 products."
    assert task.score(s, verbose) == 1.0  # verbose: prose and fences are not rows
    assert task.score(s, "Polite Silver\tQuarrow & Sons\t$112.34\t4.2") == pytest.approx(2 / 3)  # partial: P 1, R 1/2
    extra = GOLD + "\nSoft Pearl\tNorthmarch & Sons\t$45.65\t3.9\nPolite Silver\tQuarrow & Sons\t$112.34\t4.2"
    assert task.score(s, extra) == pytest.approx(2 * 0.5 * 1 / 1.5)  # a sponsored row and a repeat: P 2/4
    assert task.score(s, "Polite Silver\tQuarrow & Sons\t$112.43\t4.2\nDark Shell\tRosthaven\t$101.32\t3.3") == 0.0
    assert task.score(s, "Polite Silver, Quarrow & Sons, $112.34, 4.2") == 0.0  # not TSV
    assert task.score(s, "I could not find it.") == 0.0


# ---------------------------------------------------------------------------------------- path-traversal
LINKS = [re.compile(r"^(.+) is an? \w+ town\. From \1 you can travel to (.+) by (\w+)\.$"),
         re.compile(r"^The only way out of (.+) is the (\w+) to (.+)\.$"),
         re.compile(r"^From (.+), a (\w+) goes to (.+)\.$"),
         re.compile(r"^(.+) has a single connection: a (\w+) to (.+)\.$")]


def network(context: str) -> dict[str, tuple[str, str]]:
    """city -> (next city, transit), read from the city descriptions (one per line)."""
    out = {}
    for line in context.splitlines()[1:]:
        for k, rx in enumerate(LINKS):
            if m := rx.match(line):
                a, x, y = m.groups()
                to, transit = (x, y) if k == 0 else (y, x)
                assert a not in out, f"{a} has two connections"
                out[a] = (to, transit)
                break
        else:
            raise AssertionError(f"unparsed line {line!r}")
    return out


@pytest.mark.parametrize("steps", [3, 10])
def test_route_is_the_unique_walk_through_the_network(steps):
    task = make_task(f"path-traversal:steps={steps}")
    assert task.max_new_tokens == 24 + 20 * steps
    for seed in range(6):
        s = task.generate(TOK, 5000, seed=seed)
        links = network(s.context)
        assert len(links) == s.meta["cities"] > 3 * steps
        src, dst = re.match(r"Find the route from (.+) to (.+?)\. ", s.question).groups()
        walk, at = [], src
        while at != dst:
            to, transit = links[at]
            walk.append(f"From {at}, take a {transit} to {to}.")
            at = to
            assert len(walk) <= steps
        assert len(walk) == steps and "\n".join(walk) == s.references[0]
        assert s.meta["tokens"] == prompt_tokens(TOK, s) and s.meta["tokens"] >= 0.95 * (5000 - task.max_new_tokens)


ROUTE = ["From Ashford, take a bus to North Belby.", "From North Belby, take a train to Calmere.",
         "From Calmere, take a ferry to Dorwick.", "From Dorwick, take a plane to Elport."]


def test_route_scorer_on_hand_written_answers():
    task = make_task("path-traversal")
    s = Sample("", "q", "<Route>", ["\n".join(ROUTE)], {})
    assert task.score(s, "\n".join(ROUTE)) == 1.0  # right
    verbose = "Sure! Following the connections:\n<Route>\n" + "\n".join(ROUTE) + "\n</Route>\nWe arrive in Elport."
    assert task.score(s, verbose) == 1.0  # verbose, tags
    assert task.score(s, "\n".join(r.lower().replace(", take", " take") for r in ROUTE)) == 1.0  # case, comma
    assert task.score(s, "\n".join(ROUTE[:2])) == 0.5  # partial: the first 2 of 4 steps
    wrong_third = ROUTE[:2] + ["From Calmere, take a bus to Dorwick."] + ROUTE[3:]
    assert task.score(s, "\n".join(wrong_third)) == 0.5  # a wrong step ends the right run
    assert task.score(s, "\n".join(ROUTE + ["From Elport, take a tram to Ashford."])) == 0.8  # past the goal
    assert task.score(s, "\n".join(ROUTE[1:])) == 0.0  # starts from the wrong city
    thinking = ROUTE[0] + " Then onwards.\n<Route>\n" + "\n".join(ROUTE) + "\n</Route>\n" + ROUTE[0]
    assert task.score(s, thinking) == 1.0  # only the <Route> block counts
    assert task.score(s, "\n".join(ROUTE) + "</Route>\nFrom Elport, take a tram to Ashford.") == 1.0  # continuation
    assert task.score(s, "I could not find it.") == 0.0


# ------------------------------------------------------------------------------------------------ countdown
def test_countdown_solutions_and_examples_are_right():
    for numbers in (3, 4, 6):
        task = make_task(f"countdown:numbers={numbers}")
        for seed in range(5):
            s = task.generate(TOK, 4000, seed=seed)
            puzzles = re.findall(r"Numbers: ([\d ]+)\nTarget: (\d+)\n(?:Answer: ([\d ()+\-*/]+))?", s.context + "\n"
                                 + s.question)
            assert len(puzzles) == s.meta["examples"] + 1 > 5
            puzzles[-1] = (*puzzles[-1][:2], s.references[0])
            for nums, target, expr in puzzles:
                nums = [int(x) for x in nums.split()]
                assert len(nums) == numbers and sorted(int(x) for x in re.findall(r"\d+", expr)) == sorted(nums)
                assert eval(expr) == int(target)  # noqa: S307 - our own generated text, matched by a strict regex
            assert s.meta["numbers"] == nums and s.meta["target"] == int(target)


def test_countdown_scorer_on_hand_written_answers():
    task = make_task("countdown")
    s = Sample("", "q", "", ["(50 - 25) * 7 + 7"], {"numbers": [50, 25, 7, 7], "target": 182})
    assert task.score(s, "(50 - 25) * 7 + 7") == 1.0  # right
    assert task.score(s, "7 + 7 × (50 − 25)".replace("−", "-")) == 1.0  # another right expression, × sign
    verbose = "Try 50 - 25 = 25, then 25 * 7 = 175 and 175 + 7 = 182.\nAnswer: (50 - 25) * 7 + 7\nCheck: 25 * 7 = 175"
    assert task.score(s, verbose) == 1.0  # verbose: the expression after the last "Answer:"
    assert task.score(s, "So we get ((50 - 25) * 7) + 7 = 182.") == 1.0  # the one written before "= 182"
    assert task.score(s, "50 - 25 = 25\n25 * 7 = 175\n175 + 7 = 182") == 0.0  # partial: steps, 175 not given
    assert task.score(s, "(50 - 25) * 7 = 175") == 0.0  # wrong value
    assert task.score(s, "Answer: 7 * 25 + 7") == 1.0  # not every number has to be used
    assert task.score(s, "Answer: 25 * 7 + 7 + 7 - 7") == 0.0  # 7 used three times, given twice
    assert task.score(s, "Answer: (50 - 25) * 7 + 7 + 0") == 0.0  # a number not given
    assert task.score(s, "Answer: 7 * 26") == 0.0  # a number not given
    assert task.score(s, "(50 - 25) * 7 + 7\n\nNumbers: 1 2 3 4\nTarget: 10\nAnswer: 1 + 2 + 3 + 4") == 1.0  # continued
    assert task.score(s, "I could not find it.") == 0.0
    t = Sample("", "q", "", [""], {"numbers": [7, 2, 4], "target": 14})
    assert task.score(t, "7 / 2 * 4") == 0.0  # 7 / 2 is not a whole number
    assert task.score(t, "7 * 4 / 2") == 1.0
    assert task.score(t, "7 * 2 ** 1") == 0.0  # only + - * /
    assert task.score(t, "-7 * -2") == 0.0  # no unary minus
    assert expression_value("__import__('os').system('true')", [1]) is None
    assert expression_value("7 / (4 - 4)", [7, 4, 4]) is None


def test_fits_with_the_packaged_tokenizer():
    from longreach.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    for name in ("html-to-tsv", "path-traversal", "countdown"):
        task = make_task(name)
        s = task.generate(tok, 2048, seed=3)
        budget = 2048 - task.max_new_tokens
        assert s.meta["tokens"] == prompt_tokens(tok, s) and budget - 60 <= s.meta["tokens"] <= budget
