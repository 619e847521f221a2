from depthtune.stages.report import by_suite, paired


def test_paired_counts_fixed_and_broken_by_prompt():
    before = [{"prompt_id": "a", "correct": False, "cdm": 70}, {"prompt_id": "b", "correct": True, "cdm": 80},
              {"prompt_id": "c", "correct": True, "cdm": 60}]
    after = [{"prompt_id": "c", "correct": True, "cdm": 65}, {"prompt_id": "a", "correct": True, "cdm": 75},
             {"prompt_id": "b", "correct": False, "cdm": 80}]
    p = paired(before, after)
    assert (p["fixed"], p["broken"], p["cdm_up"], p["cdm_down"]) == (1, 1, 2, 0)
    assert p["accuracy_p"] == 1.0
    assert by_suite([{"suite": "x", "correct": True}, {"suite": "x", "correct": False}]) == {"x": 0.5}
