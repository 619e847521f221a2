"""What the student learns from each teacher sample: the data modes of distillation.

answers       sequence-level: the teacher's completion to the plain prompt, as generated.
cot           the teacher was asked to reason step by step and end with "Answer: ..."; the
              student learns rationale + answer from the plain prompt.
answer_only   the same chain-of-thought teacher run, but the student learns only the final
              answer: the comparison that shows what the rationale adds.
step_by_step  Distilling step-by-step (Hsieh et al., 2023): two tasks per sample, "[rationale] "
              + prompt -> rationale and "[answer] " + prompt -> answer; the student is asked
              with the "[answer] " prefix at evaluation.

Only `answers` and `cot` keep the teacher's own tokens, so only they can use token-level
soft targets; the other two are trained on cross-entropy (distill.alpha is set to 0).
"""
from __future__ import annotations

import re

from ..prompting import prompt_ids, with_prefix

MODES = ("answers", "cot", "answer_only", "step_by_step")
COT_SYSTEM = ("Think step by step. Write your reasoning in a few short sentences, then finish with a line "
              "'Answer: <answer>'.")
RATIONALE, ANSWER = "[rationale] ", "[answer] "
_ANSWER = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)


def split_answer(text: str) -> tuple[str, str] | None:
    """'reasoning ... Answer: 42' -> ('reasoning ...', '42'); None without an answer line."""
    found = list(_ANSWER.finditer(text))
    if not found:
        return None
    last = found[-1]
    answer = last.group(1).strip().splitlines()[0].strip()
    return text[:last.start()].strip(), answer


def retokenize(rows: list[dict], tok) -> list[dict]:
    """Teacher samples for a student with another tokenizer: its completion ids from the text."""
    return [{**r, "completion_ids": tok(r["completion"], add_special_tokens=False)["input_ids"]} for r in rows]


def student_rows(samples: list[dict], mode: str, tok, system_prompt: str | None,
                 template: str = "auto") -> list[dict]:
    """Teacher samples -> student training rows (prompt_ids, completion_ids, finished, ...)."""
    rows = []
    for s in samples:
        if mode in ("answers", "cot"):
            rows.append({**s, "prompt_ids": prompt_ids(tok, s, system_prompt, template)})
            continue
        parts = split_answer(s["completion"])
        if parts is None:
            continue  # no answer line: nothing to learn an answer from
        rationale, answer = parts
        enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        if mode == "answer_only":
            rows.append({**s, "prompt_ids": prompt_ids(tok, s, system_prompt, template), "completion_ids": enc(answer),
                         "finished": True})
        else:
            for prefix, target, tag in ((RATIONALE, rationale, "r"), (ANSWER, answer, "a")):
                if target:
                    rows.append({**s, "sample_id": f"{s['sample_id']}:{tag}", "finished": True,
                                 "prompt_ids": prompt_ids(tok, with_prefix(s, prefix), system_prompt, template),
                                 "completion_ids": enc(target)})
    return rows


def aligned_positions(text: str, student_tok, teacher_tok) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """One completion text tokenised by both tokenizers -> (student ids, teacher ids, pairs (i, j)) where
    student token i and teacher token j start at the same character: both models then predict the next
    token from the same text, and their distributions there can be compared (cross-tokenizer distillation;
    tokens that start inside the other's token have no partner and learn from cross-entropy alone)."""
    def spans(tok):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [a for a, _ in enc["offset_mapping"]]
    s_ids, s_starts = spans(student_tok)
    t_ids, t_starts = spans(teacher_tok)
    where = {start: j for j, start in enumerate(t_starts)}
    return s_ids, t_ids, [(i, where[a]) for i, a in enumerate(s_starts) if a in where]
