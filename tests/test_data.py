import json
import re

import pytest

from depthtune.config import DataConfig
from depthtune.data import load_prompts
from depthtune.errors import DepthtuneError
from depthtune.suites import SUITES, load_suites


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_builtin_suites_split_and_carry_answers():
    train, held = load_suites(list(SUITES))
    assert not {p["id"] for p in train} & {p["id"] for p in held}
    assert {p["suite"] for p in held} == set(SUITES)
    assert {p["level"] for p in held if p["suite"] == "arithmetic"} == {1, 2, 3}
    assert all(p["answer"] and p["checker"] in ("numeric", "contains") for p in train + held)
    assert load_suites(["facts"]) == load_suites(["facts"])  # fixed seed: the same everywhere


def test_user_jsonl_with_named_fields_and_split(prompt_file):
    cfg = DataConfig(path=str(prompt_file), prompt_field="context", answer_field="completion")
    train, held = load_prompts(cfg)
    assert len(train) + len(held) == 12 and len(held) == 3
    assert all(p["answer"] == p["answer"].strip() and p["checker"] == "numeric" for p in train)
    assert load_prompts(cfg) == (train, held)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "dataset"])
def test_other_formats(tmp_path, fmt):
    import pyarrow as pa

    table = pa.table({"question": ["2+2?", "3+3?", "capital of France?"], "ans": ["4", "6", "Paris"]})
    if fmt == "csv":
        import pyarrow.csv as pacsv

        path = tmp_path / "d.csv"
        pacsv.write_csv(table, path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(table, path)
    else:
        from datasets import Dataset

        path = tmp_path / "ds"
        Dataset.from_dict(table.to_pydict()).save_to_disk(str(path))
    train, held = load_prompts(DataConfig(path=str(path), prompt_field="question", answer_field="ans"))
    items = {p["prompt"]: p for p in train + held}
    assert items["capital of France?"]["checker"] == "exact" and items["2+2?"]["answer"] == "4"


def test_chat_messages_rows(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}+1?"},
                          {"role": "assistant", "content": str(i + 1)}]} for i in range(4)]
    train, held = load_prompts(DataConfig(path=str(write_jsonl(tmp_path / "chat.jsonl", rows))))
    p = (train + held)[0]
    assert [m["role"] for m in p["messages"]] == ["system", "user"] and p["answer"].isdigit()


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"\n{"prompt": "c"}\n')
    with pytest.raises(DepthtuneError, match="line 2 is not valid JSON"):
        load_prompts(DataConfig(path=str(path)))


def test_missing_prompt_column(prompt_file):
    with pytest.raises(DepthtuneError, match="no column 'question'.*--prompt-field"):
        load_prompts(DataConfig(path=str(prompt_file), prompt_field="question"))


def test_missing_answer_column(prompt_file):
    with pytest.raises(DepthtuneError, match="answer column 'solution'"):
        load_prompts(DataConfig(path=str(prompt_file), prompt_field="context", answer_field="solution"))


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DepthtuneError, match="holds no prompts"):
        load_prompts(DataConfig(path=str(tmp_path / "empty.jsonl")))
    with pytest.raises(DepthtuneError, match="does not exist"):
        load_prompts(DataConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DepthtuneError, match="unknown data format"):
        load_prompts(DataConfig(path=str(tmp_path / "x.txt")))


def test_caps_stay_balanced_over_suites():
    train, held = load_prompts(DataConfig(max_train_prompts=6, max_eval_prompts=3))
    assert [p["suite"] for p in train] == ["arithmetic", "word_problems", "facts"] * 2
    assert len({p["suite"] for p in held}) == 3


def test_grown_suites_hold_distinct_prompts_and_keep_the_small_suite_as_their_prefix():
    big_train, big_held = load_suites(list(SUITES), 1200)
    small_train, small_held = load_suites(list(SUITES), 48)
    prompts = [p["prompt"] for p in big_train + big_held]
    assert len(prompts) == len(set(prompts))  # no question in both train and held-out
    assert len([p for p in big_held if p["suite"] == "arithmetic"]) == 400
    assert len([p for p in big_train + big_held if p["suite"] == "facts"]) == 244  # all there are
    assert all(p in big_held for p in small_held)
    with pytest.raises(DepthtuneError, match="suite_size 99999"):
        load_suites(["arithmetic"], 99999)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_the_line_and_the_fix(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    text = '{"prompt": "2+2?"}\n{"prompt": "café?"}\n' if suffix == ".jsonl" else "prompt\n2+2?\ncafé?\n"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DepthtuneError, match=r"is not UTF-8 text \(byte 0xe9 on line [23]\); convert it, e.g. `iconv"):
        load_prompts(DataConfig(path=str(path), answer_field=None))


@pytest.mark.parametrize("rows, named", [
    ([{"prompt": "2+2?"}, {"prompt": ""}, {"prompt": None}, {"prompt": "  \n"}], "3 of 4 rows have an empty or null "
                                                                                 "prompt (rows 2, 3, 4)"),
    ([{"prompt": "2+2?"}, {"messages": [{"role": "user", "content": None}]}], "1 of 2 rows have an empty or null "
                                                                              "prompt (row 2)"),
    ([{"prompt": "2+2?"}, {"messages": [{"role": "assistant", "content": "4"}]}], "(row 2)"),
])
def test_empty_or_null_prompts_are_refused_before_anything_runs(tmp_path, rows, named):
    path = write_jsonl(tmp_path / "blank.jsonl", rows)
    with pytest.raises(DepthtuneError, match=re.escape(named) + "; fill them in or remove them"):
        load_prompts(DataConfig(path=str(path)))
