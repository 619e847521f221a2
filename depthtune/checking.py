"""Answer checking: one checker for selecting training samples and for evaluating models.

numeric: the last number in the completion equals the reference as a number
         (" 143" == "143" == "143.0" == "1,43" is not; thousands commas are removed).
exact:   normalised completion equals the normalised reference.
contains: the normalised reference appears in the normalised completion as whole words.
Normalising lower-cases, drops punctuation and articles, and folds white space.
"""
from __future__ import annotations

import re
import string

CHECKERS = ("numeric", "exact", "contains")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def parse_number(text: str) -> float | None:
    text = str(text).strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def normalise(text: str) -> str:
    text = str(text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def pick_checker(reference: str, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    return "numeric" if parse_number(reference) is not None else "exact"


def is_correct(completion: str, reference: str, checker: str = "auto") -> bool:
    checker = pick_checker(reference, checker)
    if checker == "numeric":
        ref, got = parse_number(reference), last_number(completion)
        return ref is not None and got is not None and abs(ref - got) <= 1e-6 * max(1.0, abs(ref))
    ref, got = normalise(reference), normalise(completion)
    if checker == "exact":
        return ref == got
    if checker == "contains":
        return bool(ref) and f" {ref} " in f" {got} "
    raise ValueError(f"unknown checker {checker}")
