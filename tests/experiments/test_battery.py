"""Capability batteries: accuracy per category, suite and level; transfer = student / teacher."""
from depthtune.experiments.battery import best_of, breakdown, transfer


def rows(spec):
    """spec: [(suite, category, level, correct)]"""
    return [{"suite": s, "category": c, "level": lv, "correct": ok} for s, c, lv, ok in spec]


TEACHER = rows([("facts", "knowledge", 1, True), ("facts", "knowledge", 2, True),
                ("arithmetic", "reasoning", 1, True), ("arithmetic", "reasoning", 3, False),
                ("word_problems", "reasoning", 2, True), ("word_problems", "reasoning", 2, None)])
STUDENT = rows([("facts", "knowledge", 1, True), ("facts", "knowledge", 2, False),
                ("arithmetic", "reasoning", 1, False), ("arithmetic", "reasoning", 3, False),
                ("word_problems", "reasoning", 2, True), ("word_problems", "reasoning", 2, None)])


def test_breakdown_by_category_suite_and_level():
    b = breakdown(TEACHER)
    assert b["all"] == {"n": 5, "correct": 4, "accuracy": 0.8}  # the unjudged row is left out
    assert b["category"]["knowledge"] == {"n": 2, "correct": 2, "accuracy": 1.0}
    assert b["category"]["reasoning"] == {"n": 3, "correct": 2, "accuracy": 0.6667}
    assert b["suite"]["arithmetic"]["accuracy"] == 0.5 and b["suite"]["word_problems"]["n"] == 1
    assert b["level"]["reasoning/3"] == {"n": 1, "correct": 0, "accuracy": 0.0}
    assert b["level"]["knowledge/2"]["accuracy"] == 1.0


def test_transfer_is_student_over_teacher_per_category():
    t = transfer(breakdown(STUDENT), breakdown(TEACHER))
    assert t == {"knowledge": 0.5, "reasoning": 0.5}  # (1/3) / (2/3)
    zero = breakdown(rows([("facts", "knowledge", 1, False), ("arithmetic", "reasoning", 1, True)]))
    assert transfer(breakdown(STUDENT), zero)["knowledge"] is None  # a teacher at 0 has nothing to transfer


def test_best_of_several_teachers_is_per_category():
    a = breakdown(rows([("facts", "knowledge", 1, True), ("arithmetic", "reasoning", 1, False)]))
    b = breakdown(rows([("facts", "knowledge", 1, False), ("arithmetic", "reasoning", 1, True)]))
    best = best_of([a, b])
    assert best["category"]["knowledge"]["accuracy"] == 1.0 and best["category"]["reasoning"]["accuracy"] == 1.0
    assert best_of([a]) is a
