"""Write examples/verifier/functions.jsonl: small Python functions to write, each with asserts to pass.

    python examples/verifier/make_functions.py      # 120 tasks, seeded
"""
from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATES = [
    ("add_{n}", "Write a Python function `{f}(x)` that returns x plus {n}.", "assert {f}({a}) == {r1}\nassert {f}({b}) == {r2}",
     lambda n, x: x + n),
    ("times_{n}", "Write a Python function `{f}(x)` that returns x multiplied by {n}.",
     "assert {f}({a}) == {r1}\nassert {f}({b}) == {r2}", lambda n, x: x * n),
    ("minus_{n}", "Write a Python function `{f}(x)` that returns x minus {n}.", "assert {f}({a}) == {r1}\nassert {f}({b}) == {r2}",
     lambda n, x: x - n),
    ("is_above_{n}", "Write a Python function `{f}(x)` that returns True when x is greater than {n}, else False.",
     "assert {f}({a}) == {r1}\nassert {f}({b}) == {r2}", lambda n, x: x > n),
]


def main(path: Path = Path(__file__).with_name("functions.jsonl"), n_tasks: int = 120) -> None:
    rng, rows = random.Random(0), []
    for i in range(n_tasks):
        name, text, tests, fn = TEMPLATES[i % len(TEMPLATES)]
        n, a, b = rng.randint(2, 20), rng.randint(0, 30), rng.randint(0, 30)
        f = name.format(n=n)
        rows.append({"id": f"fn-{i:03d}", "prompt": text.format(f=f, n=n) + " Reply with the code only.",
                     "tests": tests.format(f=f, a=a, b=b, r1=fn(n, a), r2=fn(n, b))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
