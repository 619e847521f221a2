import pytest

from depthtune.stages.report import auroc, binomial_two_sided, by_suite, paired


def test_auroc():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5, 0.6], [True, True]) is None


def test_binomial_two_sided_matches_known_values():
    assert binomial_two_sided(0, 0) == 1.0
    assert binomial_two_sided(4, 7) == pytest.approx(1.0)
    assert binomial_two_sided(0, 6) == pytest.approx(2 / 64)
    assert binomial_two_sided(10, 10) == pytest.approx(2 / 1024)


def test_paired_counts_fixed_and_broken_by_prompt():
    before = [{"prompt_id": "a", "correct": False, "cdm": 70}, {"prompt_id": "b", "correct": True, "cdm": 80},
              {"prompt_id": "c", "correct": True, "cdm": 60}]
    after = [{"prompt_id": "c", "correct": True, "cdm": 65}, {"prompt_id": "a", "correct": True, "cdm": 75},
             {"prompt_id": "b", "correct": False, "cdm": 80}]
    p = paired(before, after)
    assert (p["fixed"], p["broken"], p["cdm_up"], p["cdm_down"]) == (1, 1, 2, 0)
    assert p["accuracy_p"] == 1.0
    assert by_suite([{"suite": "x", "correct": True}, {"suite": "x", "correct": False}]) == {"x": 0.5}
