import pytest

from depthtune.distill.compare import curriculum_order
from depthtune.distill.targets import ANSWER, RATIONALE, split_answer, student_rows
from depthtune.prompting import with_prefix


def test_split_answer_takes_the_last_answer_line():
    assert split_answer("3 bags of 4 is 12. 12 + 5 = 17.\nAnswer: 17") == ("3 bags of 4 is 12. 12 + 5 = 17.", "17")
    assert split_answer("answer: 3\nno wait. Answer:  Paris \nthanks") == ("answer: 3\nno wait.", "Paris")
    assert split_answer("just 17") is None


@pytest.fixture
def sample():
    return {"sample_id": "p1#0", "prompt": "What is 12 + 5?", "completion": "12 + 5 = 17.\nAnswer: 17",
            "completion_ids": [7, 8, 9], "finished": True, "cdm": 70.0, "level": 2}


class Tok:
    """Just enough of a tokenizer: one id per character."""
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_modes_build_the_right_targets(sample):
    tok = Tok()
    cot = student_rows([sample], "cot", tok, None)
    assert cot[0]["completion_ids"] == [7, 8, 9] and cot[0]["prompt_ids"] == [ord(c) for c in sample["prompt"]]
    only = student_rows([sample], "answer_only", tok, None)
    assert only[0]["completion_ids"] == [ord("1"), ord("7")]
    sbs = student_rows([sample], "step_by_step", tok, None)
    assert [r["sample_id"] for r in sbs] == ["p1#0:r", "p1#0:a"]
    assert sbs[0]["prompt_ids"][:len(RATIONALE)] == [ord(c) for c in RATIONALE]
    assert bytes(sbs[0]["completion_ids"]).decode() == "12 + 5 = 17."
    assert sbs[1]["prompt_ids"][:len(ANSWER)] == [ord(c) for c in ANSWER]
    no_answer = {**sample, "completion": "17"}
    assert student_rows([no_answer], "answer_only", tok, None) == []
    assert len(student_rows([no_answer], "cot", tok, None)) == 1


def test_prefix_goes_on_the_last_user_message():
    item = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}
    assert with_prefix(item, ANSWER)["messages"][-1]["content"] == "[answer] q"
    assert item["messages"][-1]["content"] == "q"


def test_curriculum_orders_easy_first():
    rows = [{"sample_id": "a", "cdm": 60, "level": 1}, {"sample_id": "b", "cdm": 90, "level": 3},
            {"sample_id": "c", "cdm": 75, "level": 1}]
    assert [r["sample_id"] for r in curriculum_order(rows, "cdm")] == ["b", "c", "a"]
    assert [r["sample_id"] for r in curriculum_order(rows, "level")] == ["c", "a", "b"]
    assert curriculum_order(rows, "none") == rows
