"""Degenerate samples: loops, cut-off answers and prompt echoes are flagged; real answers are not."""


def test_degenerate_flags():
    from depthtune.degenerate import flags

    base = {"prompt": "Tom has 5 apples and gets 3 more. How many apples does Tom have now?", "finished": True}
    ok = {**base, "completion_ids": list(range(20)), "completion": "Tom starts with 5 and gets 3, so 8 apples."}
    loop = {**base, "completion_ids": [7, 8, 9] * 8, "completion": "8 8 8"}
    cut = {**ok, "finished": False}
    echo = {**base, "completion_ids": list(range(14)), "completion": "Tom has 5 apples and gets 3 more. How many"}
    restated = {**ok, "completion": "Tom has 5 apples and gets 3 more, so Tom has 8 apples now."}
    assert flags(ok) == [] and flags(restated) == []
    assert flags(loop) == ["repetition"] and flags(cut) == ["unfinished"] and flags(echo) == ["echo"]
    assert flags({**base, "completion_ids": [5, 5, 5], "completion": "8"}) == []  # short answers are not loops


def test_a_cut_off_answer_that_loops_is_told_from_one_still_going():
    from depthtune.degenerate import looping

    loop = list(range(10, 22)) * 6  # a 12-token sentence said six times, cut off
    going = list(range(100, 172))  # 72 distinct tokens, cut off
    assert looping({"completion_ids": loop, "finished": False})
    assert not looping({"completion_ids": going, "finished": False})
    assert not looping({"completion_ids": loop, "finished": True})  # a finished answer is not cut off at all


def test_the_report_asks_for_a_larger_limit_only_for_answers_still_going():
    from depthtune.stages.report import token_limit, warnings

    loop = {"completion_ids": list(range(10, 22)) * 6, "finished": False}
    going = {"completion_ids": list(range(100, 172)), "finished": False}
    done = {"completion_ids": [1, 2, 3], "finished": True}
    m = {"selection": {"kept": 80, "total": 80, "degenerate_left_out": 0}, "degenerate": {}}
    m["token_limit"] = {w: token_limit([loop] * 2 + [done] * 8, 128) for w in ("samples", "base", "tuned")}
    lines = warnings(m)
    assert len(lines) == 3 and all("looping" in x and "raise" not in x for x in lines)
    m["token_limit"] = {w: token_limit([going] * 2 + [done] * 8, 128) for w in ("samples", "base", "tuned")}
    assert all("raise `--set" in x for x in warnings(m))
