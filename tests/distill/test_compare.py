"""`depthtune compare` on tiny random models: cached and online teachers, bad input, the decision rules."""
import json

import pytest
from helpers import assert_self_contained_html, make_tiny_model

from depthtune import artifacts
from depthtune.cli import main
from depthtune.distill.decide import decide


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("teacher4"), tokenizer_dir, layers=4)


def compare_args(teacher, run_dir, *extra):
    return ["compare", "--run-dir", str(run_dir), "--teacher", str(teacher), "--student-layers", "2",
            "--max-train-prompts", "6", "--max-eval-prompts", "3", "--set", "generate.max_new_tokens=5",
            "--set", "evaluate.max_new_tokens=5", "--set", "select.require_correct=false",
            "--set", "distill.select.selector=random",
            "--set", "select.exclude_degenerate=false", "--set", "select.min_kept=0",
            "--set", "train.epochs=1", "--set", "train.batch_size=4", *extra]


@pytest.mark.parametrize("online, extra", [(False, []), (True, ["--set", "distill.curriculum=level"])])
def test_compare_end_to_end(teacher_dir, tmp_path, capsys, online, extra):
    run_dir = tmp_path / "cmp"
    assert main(compare_args(teacher_dir, run_dir, *(["--online"] if online else []), *extra)) == 0
    out = capsys.readouterr().out
    assert "student distilled" in out and "## Decision" in out
    m = json.loads((run_dir / "compare.json").read_text())
    assert set(m["models"]) == {"teacher", "student", "alone", "distilled"}
    assert m["models"]["student"]["params"] < m["models"]["teacher"]["params"]
    assert m["models"]["distilled"]["train_seconds"] > 0 and m["models"]["alone"]["train_seconds"] > 0
    # random tiny models answer nothing right: no gap to recover, and nothing to show a gain
    assert m["models"]["teacher"]["accuracy"] == 0 and m["gap_recovered"]["value"] is None
    assert m["decision"][0].startswith("Do not distil")
    assert_self_contained_html(run_dir / "report.html", min_images=1)
    distilled = artifacts.read_json(run_dir / "distilled" / "manifest.json")
    assert distilled["teacher"] == ("online" if online else "cached top-k")
    gen = artifacts.read_json(run_dir / "generate" / "manifest.json")
    if online:
        assert gen["topk"] == 0 and not (run_dir / "generate" / "topk").exists()
    else:
        assert gen["topk"] == 20 and 62 <= gen["topk_bytes_per_token"] < 200  # 3 bytes x 20 packed + fp16 tail + headers
    student = artifacts.read_json(run_dir / "student" / "manifest.json")
    assert student["layers_kept"] == [0, 3]


def test_step_by_step_targets_and_answer_prefix(teacher_dir, tmp_path, monkeypatch):
    """A random teacher never writes 'Answer:', so give its samples one, as a real teacher would."""
    from depthtune.backends.local import LocalSampler
    real = LocalSampler.sample_chunk

    def answering(*a, **kw):
        rows, secs, cached = real(*a, **kw)
        for r in rows:
            r["completion"] = "We add them.\nAnswer: 7"
        return rows, secs, cached

    monkeypatch.setattr(LocalSampler, "sample_chunk", answering)
    run_dir = tmp_path / "sbs"
    assert main(compare_args(teacher_dir, run_dir, "--set", "distill.targets=step_by_step")) == 0
    m = artifacts.read_json(run_dir / "distilled" / "manifest.json")
    assert m["targets"] == "step_by_step" and m["teacher"] == "sequence-level only"
    assert m["examples"] == 2 * len(artifacts.read_jsonl(run_dir / "select" / "selected.jsonl"))
    asked = artifacts.read_jsonl(run_dir / "evaluate" / "distilled.jsonl")
    assert all(r["prompt"].startswith("[answer] ") for r in asked)
    assert not any(r["prompt"].startswith("[answer] ") for r in artifacts.read_jsonl(run_dir / "evaluate" / "alone.jsonl"))
    cfg = (run_dir / "config.yaml").read_text()
    assert "Think step by step" not in cfg  # the saved config is the user's, not the teacher side's


def test_cached_logits_that_do_not_match_their_samples_are_refused(teacher_dir, tmp_path, capsys):
    run_dir = tmp_path / "cmp"
    args = compare_args(teacher_dir, run_dir)
    assert main(args) == 0
    import shutil

    for stage in ("distilled", "evaluate"):
        shutil.rmtree(run_dir / stage)
    samples = artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")
    samples[0]["completion_ids"] = samples[0]["completion_ids"][:-1]  # samples from "another run"
    artifacts.write_jsonl(run_dir / "select" / "selected.jsonl", samples)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "cached teacher logits do not match sample" in err and "\n" not in err
    assert not artifacts.is_done(run_dir / "distilled")


def test_bad_students_and_settings(teacher_dir, tmp_path, tokenizer_dir, capsys):
    small = make_tiny_model(tmp_path / "small", tokenizer_dir, layers=1)
    cases = [
        (["--student-layers", "0"], "leaves no layer"),
        (["--set", "distill.temperature=0"], "distill.temperature must be > 0"),
    ]
    for extra, expected in cases:
        assert main(compare_args(teacher_dir, tmp_path / "r0", *extra)) == 2
        assert expected in capsys.readouterr().err
    # a teacher smaller than the student
    args = compare_args(small, tmp_path / "r1", "--student", str(teacher_dir))
    assert main(args) == 2
    assert "is not larger than the student" in capsys.readouterr().err
    assert not artifacts.is_done(tmp_path / "r1" / "student")
    assert not (tmp_path / "r1" / "generate").exists()  # refused before any teacher generation


def test_a_student_with_another_tokenizer_is_refused_for_cached_targets(teacher_dir, tmp_path, capsys):
    from tokenizers import Tokenizer
    from tokenizers import models as tm
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.WordLevel({"a": 0, "b": 1, "<unk>": 2}, "<unk>")),
                                  unk_token="<unk>", eos_token="<unk>", pad_token="<unk>")
    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(vocab_size=3, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(other)
    tok.save_pretrained(other)
    assert main(compare_args(teacher_dir, tmp_path / "r", "--student", str(other))) == 2
    err = capsys.readouterr().err
    assert "is not the student's (3 tokens)" in err and "--online" in err and "sequence-level" in err
    assert not (tmp_path / "r" / "generate").exists()

    # sequence-level distillation (no logit loss) works across vocabularies: the text is re-tokenized
    assert main(compare_args(teacher_dir, tmp_path / "seq", "--student", str(other), "--set", "distill.alpha=0")) == 0
    m = artifacts.read_json(tmp_path / "seq" / "student" / "manifest.json")
    assert m["shared_vocab"] is None
    assert artifacts.read_json(tmp_path / "seq" / "distilled" / "manifest.json")["teacher"] == "sequence-level only"


def test_decision_needs_intervals_not_just_a_failed_test():
    """16/20 teacher, 8/20 alone, 9/20 distilled on the same prompts: distilling shows no gain, and with
    20 prompts no student is shown as accurate as the best within a 5-point margin: each pick is the
    option that is itself the best of its set."""
    scores = {m: [1.0 if i < n else 0.0 for i in range(20)] for m, n in (("teacher", 16), ("student", 0),
                                                                         ("alone", 8), ("distilled", 9))}
    models = {m: {"accuracy": sum(scores[m]) / 20, "ms_per_answer": 100.0, "train_seconds": t,
                  "teacher_data_seconds": d, "cpu_hours_per_million": 27.8}
              for m, t, d in (("teacher", 0, 0), ("student", 0, 0), ("alone", 10, 0), ("distilled", 20, 50))}
    m = {"models": models, "priority": "accuracy", "calls_per_day": 864_000, "margin": 0.05}
    lines = decide(m, scores)
    assert lines[0].startswith("Do not distil") and "interval" in lines[0] and "+5.0 points" in lines[0]
    assert "deploy the teacher" in lines[1] and "no student is shown as accurate" in lines[1]
    assert "24.0 machine-hours a day (1 machine(s)" in lines[2]
    m["priority"] = "latency"  # alone (8/20) is cheaper, but not shown within 5 points of distilled (9/20)
    assert "deploy the student distilled" in decide(m, scores)[1]
    m["priority"] = "budget"  # the teacher needs no training and is the most accurate
    assert "deploy the teacher" in decide(m, scores)[1]


def test_a_clear_gain_on_many_prompts_is_called_a_gain_and_equivalence_needs_the_margin():
    n = 400
    scores = {"teacher": [1.0] * 300 + [0.0] * 100, "student": [0.0] * n, "alone": [1.0] * 100 + [0.0] * 300,
              "distilled": [1.0] * 298 + [0.0] * 102}
    models = {m: {"accuracy": sum(s) / n, "ms_per_answer": 100.0 if m != "teacher" else 300.0,
                  "train_seconds": 10.0 if m in ("alone", "distilled") else 0.0,
                  "teacher_data_seconds": 50.0 if m == "distilled" else 0.0, "cpu_hours_per_million": 27.8}
              for m, s in scores.items()}
    m = {"models": models, "priority": "accuracy", "calls_per_day": 1000, "margin": 0.05}
    lines = decide(m, scores)
    assert lines[0].startswith("Distillation helped")
    assert "deploy the student distilled" in lines[1] and "as accurate as the teacher" in lines[1]
    m["margin"] = 0.001  # a margin narrower than the interval: not shown as accurate
    assert "deploy the teacher" in decide(m, scores)[1]
