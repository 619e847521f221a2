import pytest

from depthtune.config import SelectConfig
from depthtune.stages.score import votes
from depthtune.stages.select import explain_small, quantile, select


def row(pid, j, cdm, correct=True, text=None, **extra):
    return {"sample_id": f"{pid}#{j}", "prompt_id": pid, "cdm": cdm, "correct": correct,
            "completion": text or f"answer {pid} {j}", "completion_ids": [1, 2], **extra}


def test_threshold_and_correctness():
    rows = [row("a", 0, 85), row("a", 1, 79.9), row("a", 2, 90, correct=False), row("b", 0, 80)]
    kept, yields, _ = select(rows, SelectConfig(threshold=80))
    assert [r["sample_id"] for r in kept] == ["a#0", "b#0"]
    assert yields == {"a": [1, 3], "b": [1, 1]}
    kept, _, _ = select(rows, SelectConfig(threshold=80, require_correct=False))
    assert {r["sample_id"] for r in kept} == {"a#0", "a#2", "b#0"}


def test_unjudged_samples_pass_the_correctness_filter():
    kept, _, _ = select([row("a", 0, 85, correct=None)], SelectConfig(threshold=80))
    assert len(kept) == 1


def test_dedup_and_max_per_prompt_keep_the_deepest():
    rows = [row("a", 0, 81, text="Same answer."), row("a", 1, 95, text="same answer"),
            row("a", 2, 88, text="other"), row("a", 3, 84, text="third")]
    kept, _, _ = select(rows, SelectConfig(threshold=80))
    assert [r["sample_id"] for r in kept] == ["a#1", "a#2", "a#3"]
    kept, _, _ = select(rows, SelectConfig(threshold=80, max_per_prompt=2))
    assert [r["sample_id"] for r in kept] == ["a#1", "a#2"]
    kept, _, _ = select(rows, SelectConfig(threshold=80, dedup=False))
    assert len(kept) == 4


def test_empty_completions_are_never_kept():
    r = row("a", 0, 99)
    r["completion_ids"] = []
    assert select([r], SelectConfig(threshold=0))[0] == []


def test_empty_selection_explains_distribution_and_a_threshold_keeping_ten_percent():
    rows = [row("p", i, float(i)) for i in range(11)]
    msg = explain_small(rows, SelectConfig(threshold=80), 0)
    assert "max 10.0" in msg and "median 5.0" in msg
    assert "--threshold 9.0 would keep about 10%" in msg
    kept, _, _ = select(rows, SelectConfig(threshold=9.0))
    assert len(kept) == 2  # 9 and 10: about 10 % of 11


def test_quantile():
    assert quantile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)
    assert quantile([5], 0.9) == 5


def test_selectors_rank_by_their_own_score_and_keep_exactly_n():
    rows = [row("a", 0, 90, mean_logprob=-2.0, basin_resistance=0.1), row("a", 1, 70, mean_logprob=-0.1,
            basin_resistance=0.9), row("b", 0, 85, mean_logprob=-1.0, basin_resistance=0.5),
            row("b", 1, 95, correct=False, mean_logprob=-0.01, basin_resistance=1.0)]
    ids = lambda kept: [r["sample_id"] for r in kept]  # noqa: E731
    assert ids(select(rows, SelectConfig(selector="cdm", keep=2))[0]) == ["a#0", "b#0"]
    assert ids(select(rows, SelectConfig(selector="logprob", keep=2))[0]) == ["a#1", "b#0"]
    assert ids(select(rows, SelectConfig(selector="basin_resistance", keep=1))[0]) == ["a#1"]
    assert len(select(rows, SelectConfig(selector="correct"))[0]) == 3  # every correct sample, no CDM line
    assert "b#1" not in ids(select(rows, SelectConfig(selector="correct", keep=3))[0])


def test_random_ignores_correctness_and_is_seeded():
    rows = [row("p", i, 50.0, correct=i % 2 == 0) for i in range(40)]
    a = select(rows, SelectConfig(selector="random", keep=10, seed=0))[0]
    b = select(rows, SelectConfig(selector="random", keep=10, seed=0))[0]
    c = select(rows, SelectConfig(selector="random", keep=10, seed=1))[0]
    assert a == b and a != c and len(a) == 10
    assert any(r["correct"] is False for r in a)  # no correctness filter: the no-filter baseline


def test_degenerate_samples_are_left_out_unless_asked():
    rows = [row("a", 0, 99, degenerate=["repetition"]), row("a", 1, 85), row("b", 0, 95, degenerate=["unfinished"])]
    assert [r["sample_id"] for r in select(rows, SelectConfig())[0]] == ["a#1"]
    assert len(select(rows, SelectConfig(exclude_degenerate=False))[0]) == 3


def test_a_selection_below_the_minimum_names_the_settings_that_would_keep_enough():
    rows = [row("p", i, float(60 + i)) for i in range(30)]
    kept, _, _ = select(rows, SelectConfig(threshold=88))
    assert len(kept) == 2
    msg = explain_small(rows, SelectConfig(threshold=88, min_kept=16), len(kept))
    assert msg.startswith("selection kept 2 of 30 samples, fewer than select.min_kept = 16")
    assert "--threshold 74.0 would keep about 16" in msg and "--keep 16" in msg
    assert len(select(rows, SelectConfig(threshold=74.0))[0]) == 16


def test_a_small_pool_is_blamed_on_the_pool_not_the_threshold():
    """Every eligible sample passed the line; the cut-off ones were the problem (the CI case)."""
    rows = [row("p", 0, 79.7)] + [row("p", i, 70.0, degenerate=["unfinished"]) for i in range(1, 6)]
    cfg = SelectConfig(threshold=0, min_kept=16)
    kept, _, _ = select(rows, cfg)
    msg = explain_small(rows, cfg, len(kept))
    assert "only 1 of the 6 samples are correct, non-degenerate samples (5 degenerate samples were left out: " \
           "5 unfinished)" in msg
    assert "--threshold" not in msg and "--keep" not in msg and "generate.max_new_tokens" in msg


def test_the_relative_line_keeps_the_top_share_and_at_least_min_kept():
    rows = [row("p", i, float(i)) for i in range(40)]
    kept, _, line = select(rows, SelectConfig(selector="cdm", top_share=0.25, min_kept=4))
    assert sorted(r["cdm"] for r in kept) == [float(i) for i in range(30, 40)]  # the deepest quarter
    assert line == "the top 25% by CDM of 40 correct, non-degenerate samples"
    kept, _, line = select(rows, SelectConfig(selector="cdm", top_share=0.25, min_kept=16))
    assert len(kept) == 16 and "raised to select.min_kept = 16" in line


def test_a_task_off_the_built_in_scale_still_trains():
    """Every eligible sample sits below the built-in CDM line of 75: the relative line keeps the best of them."""
    rows = [row(f"p{i // 4}", i % 4, 40.0 + i / 10) for i in range(60)]
    kept, _, _ = select(rows, SelectConfig(selector="cdm"))
    assert len(kept) == 30 and min(r["cdm"] for r in kept) > max(r["cdm"] for r in rows if r not in kept)
    assert select(rows, SelectConfig(threshold=75))[0] == []  # an absolute line calibrated elsewhere keeps none
    assert len(select(rows, SelectConfig())[0]) == 60  # the default with labels: every correct sample


def vote_rows():
    """Prompt a: 3 of 4 answer 12; prompt b: a tie; prompt c: one answer alone."""
    out = []
    for j, (text, cdm) in enumerate([("12", 70), ("The answer is 12.", 80), ("so 10 + 2 = 12", 60), ("13", 99)]):
        out.append(row("a", j, cdm, correct=None, text=text))
    for j, text in enumerate(["5", "6", "5", "6"]):
        out.append(row("b", j, 50.0, correct=None, text=text))
    out.append(row("c", 0, 90.0, correct=None, text="7"))
    return votes(out)


def test_votes_count_one_answer_however_it_is_written():
    rows = {r["sample_id"]: r for r in vote_rows()}
    assert [rows[f"a#{j}"]["agreement"] for j in range(4)] == [0.75, 0.75, 0.75, 0.25]
    assert [rows[f"a#{j}"]["majority"] for j in range(4)] == [True, True, True, False]
    assert not any(rows[f"b#{j}"]["majority"] for j in range(4))  # a tie is no majority
    assert not rows["c#0"]["majority"]  # an answer given once is no agreement


def test_majority_selectors_use_no_labels():
    rows = vote_rows()
    kept, _, line = select(rows, SelectConfig(selector="majority", require_correct=False, min_kept=0))
    assert [r["sample_id"] for r in kept] == ["a#0", "a#1", "a#2"] and "majority answer" in line
    kept, _, _ = select(rows, SelectConfig(selector="majority_cdm", require_correct=False, keep=2))
    assert [r["sample_id"] for r in kept] == ["a#0", "a#1"]  # the deepest two of the majority
    wrong = [{**r, "correct": False} for r in rows]  # labels present but not required: ignored
    assert len(select(wrong, SelectConfig(selector="majority", require_correct=False, min_kept=0))[0]) == 3
    assert select(wrong, SelectConfig(selector="majority", min_kept=0))[0] == []  # required: they decide


def test_a_verifier_decides_correctness(tmp_path, monkeypatch):
    import sys

    from depthtune.errors import DepthtuneError
    from depthtune.verifiers import judge, load_checker

    (tmp_path / "my_checks.py").write_text(
        "def even(prompt, completion, reference):\n    return int(completion) % 2 == 0\n"
        "def score(prompt, completion, reference):\n    return 0.7\n"
        "def bad(prompt, completion, reference):\n    return 'yes'\n"
        "def boom(prompt, completion, reference):\n    raise ValueError('no number')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert judge({"completion": "4", "prompt": "x"}, "my_checks:even") == (True, 1.0)
    assert judge({"completion": "5", "prompt": "x", "answer": None}, "my_checks:even") == (False, 0.0)
    assert judge({"completion": "5", "prompt": "x"}, "my_checks:score") == (True, 0.7)
    with pytest.raises(DepthtuneError, match="returned 'yes' on sample s1; it must return a bool or a score"):
        judge({"completion": "5", "prompt": "x", "sample_id": "s1"}, "my_checks:bad")
    with pytest.raises(DepthtuneError, match="raised ValueError: no number on sample s2"):
        judge({"completion": "x", "prompt": "x", "sample_id": "s2"}, "my_checks:boom")
    for spec, msg in (("nope_module:f", "cannot import nope_module"), ("my_checks:missing", "has no function missing"),
                      ("justaname:", "module:function")):
        with pytest.raises(DepthtuneError, match=msg):
            load_checker(spec)
    sys.modules.pop("my_checks", None)


def test_auto_is_rejection_sampling_with_labels_majority_without_and_cdm_with_a_line():
    from depthtune.selectors import resolve

    assert resolve("auto", labelled=True) == "correct" and resolve("auto", labelled=False) == "majority"
    assert resolve("auto", labelled=False, votes=False) == "logprob"  # nothing to vote with
    assert resolve("auto", labelled=True, threshold=70) == "cdm" and resolve("logprob", labelled=False) == "logprob"
    # no references: every sample that agrees with its prompt's majority (self-consistency)
    rows = [row(p, j, None, correct=None, text=f"{p} {j}", majority=j < 3, mean_logprob=-0.1 * j)
            for p in "ab" for j in range(4)]
    kept, _, line = select(rows, SelectConfig(min_kept=0))
    assert [r["sample_id"] for r in kept] == ["a#0", "a#1", "a#2", "b#0", "b#1", "b#2"] and "majority" in line, line
    # identical majority answers count once: 2 distinct ones are too few to vote with when 4 must be kept
    same = [row(p, j, None, correct=None, text=f"{p}" if j < 3 else f"{p} {j}", majority=j < 3, mean_logprob=-0.1 * j)
            for p in "ab" for j in range(4)]
    assert "too few to vote with" in select(same, SelectConfig(min_kept=4))[2]
    # open-ended answers that never agree: the top half by mean log-prob, and the line says why
    rows = [row(p, j, 50.0, correct=None, text=f"{p} {j}", majority=False, mean_logprob=-0.1 * j - (p == "b"))
            for p in "ab" for j in range(4)]
    kept, _, line = select(rows, SelectConfig(min_kept=0))
    assert [r["sample_id"] for r in kept] == ["a#0", "a#1", "a#2", "a#3"] and "log-prob" in line, line
    assert "too few to vote with, so auto ranked by mean log-prob" in line


def test_a_cdm_selector_refuses_samples_scored_without_cdm():
    """Ranking by a CDM that was never computed would keep samples in file order: refused in one line."""
    from depthtune.errors import DepthtuneError

    rows = [row(p, j, None, correct=None, text=f"{p} {j}") for p in "ab" for j in range(4)]
    for selector in ("cdm", "majority_cdm"):
        with pytest.raises(DepthtuneError, match=f"selector {selector} ranks by CDM, which the score stage did not"):
            select(rows, SelectConfig(selector=selector, require_correct=False, keep=2))
    assert len(select(rows, SelectConfig(selector="logprob", require_correct=False, keep=2))[0]) == 2
