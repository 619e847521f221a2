import pytest

from depthtune.checking import is_correct, last_number, normalise, pick_checker


@pytest.mark.parametrize("completion", [" 143", "143", "143.0", "The answer is 143.", "so 100 + 43 = 143", "1,43 no... 143"])
def test_numeric_answers_compare_as_numbers(completion):
    assert is_correct(completion, "143", "numeric")
    assert is_correct(completion, " 143.0 ", "auto")


@pytest.mark.parametrize("completion", ["142", "143 apples minus 1 is 142", "", "no number", "1,43",
                                        "The answer is 142, not 143.", "Answer: 142. (143 was a guess)"])
def test_numeric_wrong(completion):
    assert not is_correct(completion, "143", "numeric")


@pytest.mark.parametrize("completion, ref", [("The answer is 5, not 6.", "5"), ("5 - 8 = \u22123", "-3"),
                                             ("So the result is -12 degrees", "-12"), ("It has 1,234 legs", "1234")])
def test_the_stated_answer_counts(completion, ref):
    assert is_correct(completion, ref, "numeric")


def test_last_number_handles_signs_commas_decimals():
    assert last_number("it is -5") == -5
    assert last_number("1,234 items") == 1234
    assert last_number("pi is 3.14.") == 3.14
    assert last_number("none") is None


def test_exact_uses_normalised_match():
    assert is_correct("  The Paris! ", "paris", "exact")
    assert not is_correct("Paris, France", "paris", "exact")


def test_contains_matches_whole_words_only():
    assert is_correct("The capital of France is Paris.", "Paris", "contains")
    assert not is_correct("Parisian food", "Paris", "contains")
    assert is_correct("It was Leonardo da Vinci, of course", "Leonardo da Vinci", "contains")


def test_auto_checker_picks_by_reference():
    assert pick_checker("12") == "numeric"
    assert pick_checker("Paris") == "exact"
    assert pick_checker("12", "contains") == "contains"
    assert normalise("An Apple, the pie.") == "apple pie"
