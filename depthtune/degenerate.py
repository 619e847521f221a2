"""Degenerate samples: answers that are sharp, sparse and stable, so CDM rates them deep, yet worthless.

    repetition  a loop: at least half of the answer's 4-grams repeat an earlier 4-gram (seq-rep-4 of
                Welleck et al., 2019), over an answer of at least 12 tokens
    unfinished  generation hit the token limit before the model stopped (the answer is cut off)
    echo        the answer mostly copies the prompt: one run of words shared with the prompt covers
                at least 80% of an answer of 4 or more words

Pure functions of a sample's tokens and text; the score stage writes the flags into scored.jsonl and
selection leaves flagged samples out by default (select.exclude_degenerate).
"""
from __future__ import annotations

from .checking import normalise

FLAGS = ("repetition", "unfinished", "echo")
REP_N, REP_SHARE, REP_MIN_TOKENS = 4, 0.5, 12
LOOP_SHARE = 0.2
"""A cut-off answer whose 4-grams repeat at least this often is going round in circles ("Each friend gets 1
cookie ..." again and again, or counting on), so a larger token limit would not let it finish. On the
default run's held-out answers every finished one stayed at or below 0.23 and most below 0.1."""
ECHO_SHARE, ECHO_MIN_WORDS = 0.8, 4


def repeated_share(ids: list[int], n: int = REP_N) -> float:
    """Share of the n-grams of `ids` that repeat an earlier one (0 for fewer than n + 1 tokens)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_shared_run(a: list[str], b: list[str]) -> int:
    """Length of the longest run of consecutive words that a and b share (dynamic programming)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def prompt_text(row: dict) -> str:
    if row.get("messages"):
        return " ".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return row.get("prompt") or ""


def looping(row: dict) -> bool:
    """A cut-off answer that loops rather than one still on its way to an end."""
    return not row.get("finished", True) and repeated_share(row["completion_ids"]) >= LOOP_SHARE


def flags(row: dict) -> list[str]:
    """The degenerate flags of one generated sample (completion_ids, completion, finished, prompt)."""
    out = []
    ids = row["completion_ids"]
    if len(ids) >= REP_MIN_TOKENS and repeated_share(ids) >= REP_SHARE:
        out.append("repetition")
    if not row.get("finished", True):
        out.append("unfinished")
    words = normalise(row["completion"]).split()
    if len(words) >= ECHO_MIN_WORDS and \
            longest_shared_run(words, normalise(prompt_text(row)).split()) >= ECHO_SHARE * len(words):
        out.append("echo")
    return out
