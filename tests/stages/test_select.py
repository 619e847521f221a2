import pytest

from depthtune.config import SelectConfig
from depthtune.stages.select import explain_empty, quantile, select


def row(pid, j, cdm, correct=True, text=None):
    return {"sample_id": f"{pid}#{j}", "prompt_id": pid, "cdm": cdm, "correct": correct,
            "completion": text or f"answer {pid} {j}", "completion_ids": [1, 2]}


def test_threshold_and_correctness():
    rows = [row("a", 0, 85), row("a", 1, 79.9), row("a", 2, 90, correct=False), row("b", 0, 80)]
    kept, yields = select(rows, SelectConfig(threshold=80))
    assert [r["sample_id"] for r in kept] == ["a#0", "b#0"]
    assert yields == {"a": [1, 3], "b": [1, 1]}
    kept, _ = select(rows, SelectConfig(threshold=80, require_correct=False))
    assert {r["sample_id"] for r in kept} == {"a#0", "a#2", "b#0"}


def test_unjudged_samples_pass_the_correctness_filter():
    kept, _ = select([row("a", 0, 85, correct=None)], SelectConfig(threshold=80))
    assert len(kept) == 1


def test_dedup_and_max_per_prompt_keep_the_deepest():
    rows = [row("a", 0, 81, text="Same answer."), row("a", 1, 95, text="same answer"),
            row("a", 2, 88, text="other"), row("a", 3, 84, text="third")]
    kept, _ = select(rows, SelectConfig(threshold=80))
    assert [r["sample_id"] for r in kept] == ["a#1", "a#2", "a#3"]
    kept, _ = select(rows, SelectConfig(threshold=80, max_per_prompt=2))
    assert [r["sample_id"] for r in kept] == ["a#1", "a#2"]
    kept, _ = select(rows, SelectConfig(threshold=80, dedup=False))
    assert len(kept) == 4


def test_empty_completions_are_never_kept():
    r = row("a", 0, 99)
    r["completion_ids"] = []
    assert select([r], SelectConfig(threshold=0))[0] == []


def test_empty_selection_explains_distribution_and_a_threshold_keeping_ten_percent():
    rows = [row("p", i, float(i)) for i in range(11)]
    msg = explain_empty(rows, SelectConfig(threshold=80))
    assert "max 10.0" in msg and "median 5.0" in msg
    assert "--threshold 9.0 would keep about 10%" in msg
    kept, _ = select(rows, SelectConfig(threshold=9.0))
    assert len(kept) == 2  # 9 and 10: about 10 % of 11


def test_quantile():
    assert quantile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert quantile([5], 0.9) == 5
