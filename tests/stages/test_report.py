from depthtune.reporting import paired
from depthtune.stages.report import by_suite


def test_paired_counts_fixed_and_broken_by_prompt():
    before = [{"prompt_id": "a", "correct": False, "cdm": 70}, {"prompt_id": "b", "correct": True, "cdm": 80},
              {"prompt_id": "c", "correct": True, "cdm": 60}]
    after = [{"prompt_id": "c", "correct": True, "cdm": 65}, {"prompt_id": "a", "correct": True, "cdm": 75},
             {"prompt_id": "b", "correct": False, "cdm": 80}]
    p = paired(before, after)
    assert (p["fixed"], p["broken"], p["cdm_up"], p["cdm_down"]) == (1, 1, 2, 0)
    assert p["accuracy_p"] == 1.0
    assert by_suite([{"suite": "x", "correct": True}, {"suite": "x", "correct": False}]) == {"x": 0.5}


def test_deep_rate_is_recounted_at_the_reports_line():
    """A base evaluated under deep_line 78 and a tuned one under 75 must both be shown at 75."""
    from depthtune.stages.report import at_line

    rows = [{"cdm": c} for c in (70, 76, 77, 80)]
    base_at_78 = {"deep_rate": 0.25, "accuracy": 0.5}
    assert at_line(base_at_78, rows, 75) == {"deep_rate": 0.75, "accuracy": 0.5}
    assert at_line({"deep_rate": None}, rows, 75) == {"deep_rate": None}  # evaluated without CDM
