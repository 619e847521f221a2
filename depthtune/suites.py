"""Built-in prompt suites with reference answers, split into train and held-out parts.

Every item: id, prompt, answer, checker, suite, category (knowledge | reasoning), level (1-3).

    arithmetic     procedural: level 1 a +- b up to 30, level 2 two-digit +, - or x, level 3 three-digit
                   +- two-digit; thousands of distinct prompts
    word_problems  procedural, several templates: level 1 one step, level 2 two steps (groups of
                   items, equal shares), level 3 three steps; thousands of distinct prompts
    facts          244 questions with one-word or one-name answers (depthtune.facts)

The generators are seeded, so a suite is the same on every machine, and a larger suite starts with
the prompts of a smaller one (size n is a prefix of size 2n). Every third item is held out, never
trained on; levels cycle so that each level lands in both parts.
"""
from __future__ import annotations

import random

from .facts import all_facts

NAMES = ["Tom", "Ana", "Ravi", "Mia", "Omar", "Lena", "Kofi", "Sara", "Ben", "Yuki", "Ivan", "Zoe", "Amir",
         "Nora", "Leo", "Priya"]
ITEMS = [("apples", "bags"), ("pencils", "boxes"), ("stickers", "packs"), ("cookies", "jars"), ("marbles", "cups"),
         ("cards", "decks"), ("eggs", "cartons"), ("books", "shelves"), ("coins", "purses"), ("shells", "buckets")]
NUMERIC = " Answer with just the number."
ONE_WORD = " Answer in a few words."
DEFAULT_SIZE = 48
MAX_SIZE = 3000  # distinct procedural prompts per suite that every level can supply
SUITES = ("arithmetic", "word_problems", "facts")


def _level(i: int) -> int:
    return 1 + (i // 3) % 3  # 1,1,1,2,2,2,3,3,3,...: every level lands in both train and held-out


def _arithmetic(rng: random.Random, i: int) -> dict:
    level = _level(i)
    if level == 1:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        op = rng.choice("+-") if a > b else "+"
    elif level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-*") if a > b else rng.choice("+*")
    else:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        op = rng.choice("+-")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": f"What is {a} {op} {b}?{NUMERIC}", "answer": str(value), "checker": "numeric", "level": level}


def _word_problem(rng: random.Random, i: int) -> dict:
    name, (thing, box) = rng.choice(NAMES), rng.choice(ITEMS)
    level, form = _level(i), rng.randint(0, 1)
    start, per, boxes = rng.randint(3, 20), rng.randint(2, 9), rng.randint(2, 5)
    if level == 1 and form == 0:
        text, value = f"{name} has {start} {thing} and gets {per} more. How many {thing} does {name} have now?", start + per
    elif level == 1:
        text = f"{name} has {start + per} {thing} and gives {per} away. How many {thing} does {name} have left?"
        value = start
    elif level == 2 and form == 0:
        text = (f"{name} has {start} {thing} and buys {boxes} {box} with {per} {thing} in each. "
                f"How many {thing} does {name} have now?")
        value = start + boxes * per
    elif level == 2:
        friends = rng.randint(2, 5)
        text = (f"{name} has {boxes} {box} with {per * friends} {thing} in each and shares all of them equally among "
                f"{friends} friends. How many {thing} does each friend get?")
        value = boxes * per
    else:
        given = rng.randint(1, start)
        text = (f"{name} has {start} {thing}, buys {boxes} {box} with {per} {thing} in each, "
                f"then gives away {given}. How many {thing} does {name} have left?")
        value = start + boxes * per - given
    return {"prompt": text + NUMERIC, "answer": str(value), "checker": "numeric", "level": level}


def _unique(rng: random.Random, make, size: int) -> list[dict]:
    """`size` items with distinct prompts (a repeat would put one question in both train and held-out)."""
    out, seen = [], set()
    for i in range(size):
        for _ in range(10_000):
            item = make(rng, i)
            if item["prompt"] not in seen:
                break
        else:
            raise ValueError(f"cannot draw {size} distinct prompts at level {item['level']}")
        seen.add(item["prompt"])
        out.append(item)
    return out


def build(suite: str, size: int = DEFAULT_SIZE) -> list[dict]:
    """The first `size` items of a suite (facts: at most all of them)."""
    rng = random.Random(f"depthtune-{suite}")
    if suite in ("arithmetic", "word_problems"):
        raw = _unique(rng, {"arithmetic": _arithmetic, "word_problems": _word_problem}[suite], size)
    elif suite == "facts":
        raw = [{"prompt": q + ONE_WORD, "answer": a, "checker": "numeric" if a.isdigit() else "contains", "level": lv}
               for q, a, lv in all_facts()[:size]]
    else:
        raise KeyError(suite)
    category = "knowledge" if suite == "facts" else "reasoning"
    return [{"id": f"{suite}-{i:04d}", "suite": suite, "category": category, **r} for i, r in enumerate(raw)]


def load_suites(names: list[str], size: int = 0) -> tuple[list[dict], list[dict]]:
    """-> (train, held_out): `size` items per suite (0 = the default 48), every third one held out."""
    from .errors import DepthtuneError

    train, held = [], []
    for name in names:
        if name not in SUITES:
            raise DepthtuneError(f"unknown suite '{name}'; built-in suites are {', '.join(SUITES)}")
        try:
            items = build(name, size or DEFAULT_SIZE)
        except ValueError as e:
            raise DepthtuneError(f"data.suite_size {size}: the {name} suite {e}; use at most {MAX_SIZE}") from None
        for i, item in enumerate(items):
            (held if i % 3 == 2 else train).append(item)
    return train, held
