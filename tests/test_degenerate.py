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
