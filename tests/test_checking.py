"""Answer checking on the strings models really write: a table of completions and the number each one
answers with, property tests over generated numbers, and the numeric / exact / contains checkers."""
import random

import pytest

from depthtune.checking import answer_key, answer_number, is_correct, last_number, normalise, parse_number, pick_checker

# (completion, the number it answers with); None = it gives none. Written from how instruct models answer:
# bare numbers, sentences, chain-of-thought with expressions, corrections, LaTeX, units, words.
TABLE = [
    # -- expressions after an answer marker: the result, not the first operand
    ("The answer is 10 - 3 = 7", 7),
    ("Result = 0.1 + 0.2 = 0.3", 0.3),
    ("The answer is 12 * 4 = 48.", 48),
    ("So the final answer is: 45 + 27 = 72", 72),
    ("Answer: 6 x 7 = 42", 42),
    # -- negated and corrected answers
    ("The answer isn't 5, it's 6", 6),
    ("The answer is not 12 but 13.", 13),
    ("The answer is 5, not 6.", 5),
    ("Answer: 142. (143 was a guess)", 142),
    ("12 + 5 = 17, not 16.", 17),
    ("Wait, 16 is wrong. 12 + 5 = 17.", 17),
    ("I first thought 30, but actually the answer is 32.", 32),
    ("The answer is 20. Hmm, no, the answer is actually 21.", 21),
    ("It is 9, not 8", 9),
    ("The result is 18 and not 19", 18),
    # -- fractions and LaTeX
    ("3/4", 0.75),
    ("1/2", 0.5),
    ("\\frac{3}{4}", 0.75),
    ("The answer is $\\frac{1}{3}$.", 1 / 3),
    ("So each friend gets \\dfrac{12}{4} = 3 cookies.", 3),
    ("The answer is \\boxed{42}.", 42),
    ("Therefore $x = \\boxed{-7}$", -7),
    ("The answer is 7/2", 3.5),
    ("Half of it: 5 / 10 of the bag", 0.5),
    # -- scientific notation and big numbers
    ("1e3", 1000),
    ("1.5e-3", 0.0015),
    ("3 x 10^4", 30000),
    ("The answer is 2.5 × 10^3.", 2500),
    ("about 6 \\times 10^{2} meters", 600),
    ("1 000 000", 1000000),
    ("The population is 1,234,567.", 1234567),
    ("It costs $1,250.50", 1250.5),
    ("1,43 no... 143", 143),
    # -- number words
    ("twelve", 12),
    ("The answer is twenty-one.", 21),
    ("She has forty two marbles left.", 42),
    ("one hundred and five", 105),
    ("There are a hundred coins.", 100),
    ("The answer is minus four.", -4),
    ("Seventeen", 17),
    ("It has 4 legs, not five", 4),
    # -- signs
    ("5 - 8 = \u22123", -3),
    ("So the result is -12 degrees", -12),
    ("10-3=7", 7),
    ("The temperature drops to -5.", -5),
    ("x = -2.5", -2.5),
    # -- plain answers and chain of thought without a marker
    (" 143", 143),
    ("143.0", 143),
    ("The answer is 143.", 143),
    ("so 100 + 43 = 143", 143),
    ("42", 42),
    ("Tom has 3 + 4 = 7 apples.", 7),
    ("First, 2 boxes of 6 is 12. Then 12 + 5 = 17. So Ana has 17 pencils.", 17),
    ("Step 1: 45 - 18 = 27\nStep 2: 27 + 9 = 36\nAnswer: 36", 36),
    ("The answer is:\n\n58", 58),
    ("**Answer:** 91", 91),
    ("Final answer: 1,024", 1024),
    ("The result was 0.25 of the total.", 0.25),
    ("It is .5 liters", 0.5),
    ("The answer is 12. This answer is correct.", 12),
    ("The answer is 64 (8 squared).", 64),
    ("Solution: 19", 19),
    # -- no answer at all
    ("", None),
    ("I don't know.", None),
    ("Paris", None),
]


@pytest.mark.parametrize("completion, expected", TABLE)
def test_the_number_a_completion_answers_with(completion, expected):
    got = answer_number(completion)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), completion


def test_the_table_is_large_enough():
    assert len(TABLE) >= 60


@pytest.mark.parametrize("completion, ref", [(c, str(v)) for c, v in TABLE if v is not None and float(v).is_integer()])
def test_table_rows_are_correct_against_their_reference(completion, ref):
    assert is_correct(completion, str(int(float(ref))), "numeric")


@pytest.mark.parametrize("completion, ref", [("3/4", "0.75"), ("0.75", "3/4"), ("\\frac{3}{4}", "0.75"),
                                             ("1/2", "0.5"), ("1e3", "1000"), ("1 000 000", "1000000"),
                                             ("twelve", "12"), ("The answer is 12", "twelve")])
def test_references_and_answers_in_any_form(completion, ref):
    assert is_correct(completion, ref)


@pytest.mark.parametrize("completion", ["142", "143 apples minus 1 is 142", "", "no number", "1,43",
                                        "The answer is 142, not 143.", "Answer: 142. (143 was a guess)",
                                        "The answer is 143 - 1 = 142", "1/143", "The answer isn't 143, it's 142"])
def test_numeric_wrong(completion):
    assert not is_correct(completion, "143", "numeric")


def _words(n: int) -> str:
    """Number words written out independently of the parser (a different construction: by place value)."""
    ones = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
    tens = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    if n < 20:
        return ones[n]
    if n < 100:
        return tens[n // 10] + ("" if n % 10 == 0 else "-" + ones[n % 10])
    if n < 1000:
        return ones[n // 100] + " hundred" + ("" if n % 100 == 0 else " and " + _words(n % 100))
    return _words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + _words(n % 1000))


@pytest.mark.parametrize("n", list(range(0, 101)) + [250, 999, 1001, 12345])
def test_number_words_up_to_a_hundred_and_beyond(n):
    assert answer_number(f"The answer is {_words(n)}.") == n
    assert parse_number(_words(n)) == n


def test_property_formats_of_one_number_agree():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(-10**7, 10**7)
        for text in (str(n), f"{n:,}", f"The answer is {n}.", f"Answer: {n:,}", f"{n - 3} + 3 = {n}",
                     f"The answer is {n}, not {n + 1}.", f"It is not {n + 2}, it is {n}"):
            assert answer_number(text) == n, text
        d = rng.randint(1, 99)
        assert answer_number(f"The answer is {n}/{d}") == pytest.approx(n / d)
        x = rng.uniform(-1000, 1000)
        assert answer_number(f"so the result is {x:.4e}") == pytest.approx(float(f"{x:.4e}"))


def test_last_number_handles_signs_commas_decimals():
    assert last_number("it is -5") == -5
    assert last_number("1,234 items") == 1234
    assert last_number("pi is 3.14.") == 3.14
    assert last_number("none") is None


def test_exact_uses_normalised_match_and_the_stated_answer():
    assert is_correct("  The Paris! ", "paris", "exact")
    assert is_correct("The answer is Paris.", "paris", "exact")
    assert not is_correct("Paris, France", "paris", "exact")


def test_contains_matches_whole_words_only():
    assert is_correct("The capital of France is Paris.", "Paris", "contains")
    assert not is_correct("Parisian food", "Paris", "contains")
    assert is_correct("It was Leonardo da Vinci, of course", "Leonardo da Vinci", "contains")


def test_auto_checker_picks_by_reference():
    assert pick_checker("12") == "numeric"
    assert pick_checker("3/4") == "numeric"
    assert pick_checker("Paris") == "exact"
    assert pick_checker("12", "contains") == "contains"
    assert normalise("An Apple, the pie.") == "apple pie"


def test_answer_keys_agree_across_ways_of_saying_one_answer():
    assert answer_key("The answer is 42.") == answer_key("42") == answer_key("So 40 + 2 = 42") == "42"
    assert answer_key("The answer is 0.5") == answer_key("1/2")
    assert answer_key("The answer is Paris.") == answer_key("paris") == "paris"
    assert answer_key("") is None
