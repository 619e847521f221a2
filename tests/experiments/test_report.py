"""Findings are computed from matched cells: the winner, its margin, and whether it is more than noise."""
from depthtune.experiments.report import compare_axis, findings, mean_sd


def cell(method, size, seed, acc, k=None, r=None, seconds=10.0, cats=None):
    settings = {"size": size, "diversity": "all", "student": "self", "method": method,
                "rank": None if method == "full" else 16, "targets": "answers", "teachers": ["t"], "seed": seed}
    battery = {"all": {"accuracy": acc / 100},
               "category": {c: {"n": 16, "accuracy": a / 100} for c, a in (cats or {}).items()}}
    return {"settings": settings, "overrides": {}, "group": f"{method} {size}", "battery": battery,
            "transfer": {"knowledge": k, "reasoning": r}, "train_seconds": seconds}


def test_clear_winner_on_matched_cells():
    done = [cell("lora", n, s, 50 + s) for n in (8, 16) for s in (0, 1, 2)] + \
           [cell("full", n, s, 40 + 2 * s) for n in (8, 16) for s in (0, 1, 2)]
    c = compare_axis(done, "method", n_eval=48)
    assert c["best"] == "lora r16" and c["runner_up"] == "full" and c["pairs"] == 6
    assert c["margin"] == 9.0 and c["clear"]  # 10, 9, 8 points on each size: far above 2 questions
    text = findings(done, 48)
    assert any(f.startswith("**method**: lora r16 won, +9.0 points") and "a clear difference" in f for f in text)


def test_small_or_inconsistent_differences_are_noise():
    done = [cell("lora", 8, 0, 50), cell("full", 8, 0, 48), cell("lora", 8, 1, 44), cell("full", 8, 1, 48)]
    c = compare_axis(done, "method", n_eval=48)
    assert not c["clear"]
    assert compare_axis(done, "size", n_eval=48) is None  # the sweep does not vary size
    assert compare_axis([cell("lora", 8, 0, 50), cell("full", 16, 0, 40)], "method", 48) is None  # nothing matched


def test_knowledge_vs_reasoning_statement_follows_the_numbers():
    done = [cell("lora", 8, 0, 50, k=0.9, r=0.4), cell("lora", 8, 1, 50, k=1.0, r=0.6)]
    assert any("is true on this sweep" in f and "0.95 for knowledge vs 0.50 for reasoning" in f
               for f in findings(done, 48))
    done = [cell("lora", 8, 0, 50, k=0.5, r=0.7)]
    assert any("is false on this sweep" in f and "knowledge higher in 0 of 1 cells" in f for f in findings(done, 48))


def test_mean_and_spread():
    assert mean_sd([1.0, 3.0]) == (2.0, 2 ** 0.5)
    assert mean_sd([2.0, None]) == (2.0, None)
    assert mean_sd([None]) == (None, None)


def test_per_category_winners_can_differ_from_the_overall_one():
    done = []
    for seed in (0, 1, 2):
        done.append(cell("lora", 8, seed, 50, cats={"knowledge": 80, "reasoning": 20 + seed}))
        done.append(cell("full", 8, seed, 50, cats={"knowledge": 60 + seed, "reasoning": 40}))
    line = next(f for f in findings(done, 48) if f.startswith("**method**"))
    assert "By category: knowledge: lora r16 ahead by 19.0 (clear" in line
    assert "reasoning: full ahead by 19.0 (clear" in line


def test_transfer_is_set_against_where_the_untrained_student_started():
    def bat(k, r):
        return {"all": {}, "category": {"knowledge": {"n": 10, "correct": k, "accuracy": k / 10},
                                        "reasoning": {"n": 10, "correct": r, "accuracy": r / 10}}}

    done = [{**cell("lora", 8, 0, 50, k=1.0, r=0.5), "teacher": bat(8, 4), "untrained": bat(8, 1)}]
    line = next(f for f in findings(done, 20) if f.startswith("**knowledge vs reasoning**"))
    assert "stood at 1.00 (knowledge) and 0.25 (reasoning)" in line and "0.00 and +0.25" in line


def test_plots_use_matched_cells_only(tmp_path):
    from depthtune.experiments.plots import draw_all, matched

    done = [cell("lora", 8, 0, 50), cell("lora", 16, 0, 55), cell("full", 8, 0, 40)]
    for r in done:
        r["size_n"] = r["settings"]["size"]
    assert matched(done, "size") == done[:2]  # full has no 16-prompt partner
    assert matched(done, "method") == [done[0], done[2]]
    plots = draw_all(done, tmp_path)
    assert set(plots) == {"accuracy_vs_size.png", "transfer_by_method.png", "cost_vs_accuracy.png"}
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in plots)


def with_answers(c: dict, right: int, n: int = 120) -> dict:
    """A cell whose battery answered the first `right` of n reasoning prompts correctly."""
    c["answers"] = {f"p{i}": (float(i < right), "reasoning") for i in range(n)}
    c["battery"]["all"]["accuracy"] = right / n
    return c


def test_intervals_over_prompts_decide_clear_or_noise():
    clear = [with_answers(cell("lora", 8, s, 0), 60) for s in (0, 1)] + \
            [with_answers(cell("full", 8, s, 0), 30) for s in (0, 1)]
    c = compare_axis(clear, "method", n_eval=120)
    assert c["clear"] and c["ci95"][0] > 0 and c["margin"] == 25.0
    assert any("95% interval" in f and "a clear difference" in f for f in findings(clear, 120))
    close = [with_answers(cell("lora", 8, s, 0), 32) for s in (0, 1)] + \
            [with_answers(cell("full", 8, s, 0), 30) for s in (0, 1)]
    c = compare_axis(close, "method", n_eval=120)
    assert not c["clear"] and c["ci95"][0] <= 0 < c["ci95"][1]
