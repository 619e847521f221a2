"""Built-in prompt suites with reference answers, split into train and held-out parts.

Every item: id, prompt, answer, checker, suite, category (knowledge | reasoning), level (1-3).
Arithmetic items come from a fixed-seed generator, so the suites are the same on every
machine; every third item of each suite is held out, never trained on.
"""
from __future__ import annotations

import random

FACTS = [  # (question, answer, level)
    ("What is the capital of France?", "Paris", 1), ("What is the capital of Italy?", "Rome", 1),
    ("What is the capital of Spain?", "Madrid", 1), ("What is the capital of Germany?", "Berlin", 1),
    ("What is the capital of Japan?", "Tokyo", 1), ("What is the capital of England?", "London", 1),
    ("What is the capital of Russia?", "Moscow", 1), ("What is the capital of Egypt?", "Cairo", 2),
    ("What is the capital of Canada?", "Ottawa", 2), ("What is the capital of Australia?", "Canberra", 3),
    ("What is the capital of Portugal?", "Lisbon", 2), ("What is the capital of Greece?", "Athens", 2),
    ("What is the capital of Norway?", "Oslo", 2), ("What is the capital of Sweden?", "Stockholm", 2),
    ("What is the capital of Poland?", "Warsaw", 2), ("What is the capital of Austria?", "Vienna", 2),
    ("What is the capital of Ireland?", "Dublin", 2), ("What is the capital of China?", "Beijing", 1),
    ("What is the capital of India?", "Delhi", 2), ("What is the capital of Kenya?", "Nairobi", 3),
    ("What is the capital of Argentina?", "Buenos Aires", 3), ("What is the capital of Peru?", "Lima", 3),
    ("What is the capital of Turkey?", "Ankara", 3), ("What is the capital of Thailand?", "Bangkok", 2),
    ("What is the largest planet in the solar system?", "Jupiter", 1),
    ("Which planet is known as the Red Planet?", "Mars", 1),
    ("Which planet is closest to the Sun?", "Mercury", 2),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide", 2),
    ("What is the chemical symbol for gold?", "Au", 2), ("What is the chemical symbol for iron?", "Fe", 3),
    ("What is the chemical symbol for sodium?", "Na", 3), ("What is the chemical symbol for oxygen?", "O", 1),
    ("What is the freezing point of water in degrees Celsius?", "0", 1),
    ("What is the boiling point of water in degrees Celsius?", "100", 1),
    ("How many legs does a spider have?", "8", 1), ("How many continents are there on Earth?", "7", 1),
    ("How many days are there in a leap year?", "366", 2), ("How many sides does a hexagon have?", "6", 1),
    ("Who wrote the play Romeo and Juliet?", "Shakespeare", 1),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", 2),
    ("Who developed the theory of relativity?", "Einstein", 1),
    ("What is the largest ocean on Earth?", "Pacific", 1), ("What is the longest river in Africa?", "Nile", 2),
    ("What is the hardest natural substance?", "diamond", 2), ("What is the smallest prime number?", "2", 2),
    ("In which country are the pyramids of Giza?", "Egypt", 1),
    ("What language is mainly spoken in Brazil?", "Portuguese", 2),
    ("What is the currency of Japan?", "yen", 2),
]

NAMES = ["Tom", "Ana", "Ravi", "Mia", "Omar", "Lena", "Kofi", "Sara", "Ben", "Yuki"]
ITEMS = [("apples", "bags"), ("pencils", "boxes"), ("stickers", "packs"), ("cookies", "jars"), ("marbles", "cups")]
NUMERIC = " Answer with just the number."
ONE_WORD = " Answer in a few words."


def _arithmetic(rng: random.Random, i: int) -> dict:
    level = 1 + (i // 3) % 3  # every level lands in both train and held-out
    if level == 1:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
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
    level = 1 + (i // 3) % 3
    start, per = rng.randint(3, 20), rng.randint(2, 9)
    boxes = rng.randint(2, 5)
    if level == 1:
        text = f"{name} has {start} {thing} and gets {per} more. How many {thing} does {name} have now?"
        value = start + per
    elif level == 2:
        text = f"{name} has {start} {thing} and buys {boxes} {box} with {per} {thing} in each. How many {thing} does {name} have now?"
        value = start + boxes * per
    else:
        given = rng.randint(1, start)
        text = (f"{name} has {start} {thing}, buys {boxes} {box} with {per} {thing} in each, "
                f"then gives away {given}. How many {thing} does {name} have left?")
        value = start + boxes * per - given
    return {"prompt": text + NUMERIC, "answer": str(value), "checker": "numeric", "level": level}


def _build(suite: str) -> list[dict]:
    rng = random.Random(f"depthtune-{suite}")
    if suite == "arithmetic":
        raw = [_arithmetic(rng, i) for i in range(48)]
    elif suite == "word_problems":
        raw = [_word_problem(rng, i) for i in range(48)]
    elif suite == "facts":
        raw = [{"prompt": q + ONE_WORD, "answer": a, "checker": "numeric" if a.isdigit() else "contains", "level": lv}
               for q, a, lv in FACTS]
    else:
        raise KeyError(suite)
    category = "knowledge" if suite == "facts" else "reasoning"
    return [{"id": f"{suite}-{i:03d}", "suite": suite, "category": category, **r} for i, r in enumerate(raw)]


SUITES = ("arithmetic", "word_problems", "facts")


def load_suites(names: list[str]) -> tuple[list[dict], list[dict]]:
    """-> (train, held_out): every third item of each suite is held out."""
    from .errors import DepthtuneError

    train, held = [], []
    for name in names:
        if name not in SUITES:
            raise DepthtuneError(f"unknown suite '{name}'; built-in suites are {', '.join(SUITES)}")
        for i, item in enumerate(_build(name)):
            (held if i % 3 == 2 else train).append(item)
    return train, held
