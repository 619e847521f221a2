"""A procedural task that is not among the built-in suites: which of two numbers is larger.

    python examples/tasks/larger.py runs/larger          # -> runs/larger/{train,eval}.jsonl
    depthtune run --data runs/larger/train.jsonl --eval-data runs/larger/eval.jsonl \
        --prompt-field context --answer-field completion

A user's file in a layout the project did not choose (context / completion columns), seeded, so every
machine writes the same prompts; training and held-out prompts never share a pair of numbers.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def pairs(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        a, b = rng.sample(range(10, 1000), 2)
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b))
    return out


def write(folder: Path, train: int = 300, held_out: int = 300) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"context": f"Which is larger, {a} or {b}? Answer with just the number.", "completion": str(max(a, b))}
            for a, b in pairs(train + held_out)]
    for name, part in (("train", rows[:train]), ("eval", rows[train:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/larger"))
