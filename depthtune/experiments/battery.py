"""Capability batteries: held-out accuracy split by capability, task and difficulty.

Every held-out prompt carries a category (knowledge: facts recalled; reasoning: multi-step
derivation), a suite (the task) and a level (1-3). breakdown() turns judged evaluation rows
into accuracy per category, per suite and per (category, level); transfer() divides a
student's accuracy by its teacher's, category by category, so "knowledge transfers more
easily than reasoning" is a number on each cell rather than a belief.
"""
from __future__ import annotations

from pathlib import Path

from .. import artifacts

CATEGORIES = ("knowledge", "reasoning")


def _acc(rows: list[dict]) -> dict:
    judged = [bool(r["correct"]) for r in rows if r.get("correct") is not None]
    return {"n": len(judged), "correct": sum(judged), "accuracy": round(sum(judged) / len(judged), 4) if judged else None}


def breakdown(rows: list[dict]) -> dict:
    """-> {"all", "category": {c}, "suite": {s}, "level": {"c/L"}}, each {n, correct, accuracy}."""
    out = {"all": _acc(rows), "category": {}, "suite": {}, "level": {}}
    for key, name in (("category", lambda r: r.get("category") or "uncategorised"),
                      ("suite", lambda r: r.get("suite") or "user"),
                      ("level", lambda r: f"{r.get('category') or 'uncategorised'}/{r.get('level') or '-'}")):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(name(r)), []).append(r)
        out[key] = {g: _acc(v) for g, v in sorted(groups.items())}
    return out


def transfer(student: dict, teacher: dict) -> dict:
    """Student accuracy / teacher accuracy per category (None where the teacher scores 0 or
    the category is missing). Above 1 means the student beats its teacher there."""
    def exact(side: dict, cat: str):  # from the counts, not the rounded accuracy
        a = side["category"].get(cat)
        return a["correct"] / a["n"] if a and a["n"] else None

    out = {}
    for cat in sorted(set(student["category"]) | set(teacher["category"])):
        s, t = exact(student, cat), exact(teacher, cat)
        out[cat] = round(s / t, 4) if s is not None and t else None
    return out


def best_of(teachers: list[dict]) -> dict:
    """Several teachers: per category the best one's result (what you would deploy instead)."""
    if len(teachers) == 1:
        return teachers[0]
    out = {"all": max((t["all"] for t in teachers), key=lambda a: a["accuracy"] or 0), "category": {}}
    for cat in sorted({c for t in teachers for c in t["category"]}):
        out["category"][cat] = max((t["category"][cat] for t in teachers if cat in t["category"]),
                                   key=lambda a: a["accuracy"] or 0)
    return out


def battery_of(folder: Path) -> dict:
    """The breakdown of a model's battery answers, as evaluate wrote them under <folder>/evaluate/."""
    return breakdown(artifacts.read_jsonl(Path(folder) / "evaluate" / "battery.jsonl"))
