"""Answer checking: one checker for selecting training samples and for evaluating models.

numeric: the completion's answer equals the reference as a number (" 143" == "143" == "143.0").
         The answer is the first number after the last "answer is" / "answer:" / "result is" when the
         completion says so ("The answer is 5, not 6." answers 5), else its last number. Commas count
         only as thousands separators ("1,234" is 1234; "1,43" is the numbers 1 and 43), and a
         Unicode minus sign is a minus.
exact:   normalised completion equals the normalised reference.
contains: the normalised reference appears in the normalised completion as whole words.
Normalising lower-cases, drops punctuation and articles, and folds white space.
"""
from __future__ import annotations

import re
import string

CHECKERS = ("numeric", "exact", "contains")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\.\d+")
_MARKER = re.compile(r"\b(?:answer|result)\b\s*(?:is|:|=|was)", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def parse_number(text: str) -> float | None:
    text = str(text).strip().replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(str(text).replace("\u2212", "-"))
    return parse_number(found[-1]) if found else None


def answer_number(text: str) -> float | None:
    """The number a completion gives as its answer: the first after its last answer marker, else its last."""
    text = str(text).replace("\u2212", "-")
    markers = list(_MARKER.finditer(text))
    if markers:
        found = _NUMBER.findall(text[markers[-1].end():])
        if found:
            return parse_number(found[0])
    return last_number(text)


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
        ref, got = parse_number(reference), answer_number(completion)
        return ref is not None and got is not None and abs(ref - got) <= 1e-6 * max(1.0, abs(ref))
    ref, got = normalise(reference), normalise(completion)
    if checker == "exact":
        return ref == got
    if checker == "contains":
        return bool(ref) and f" {ref} " in f" {got} "
    raise ValueError(f"unknown checker {checker}")
