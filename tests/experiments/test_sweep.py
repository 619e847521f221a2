"""`depthtune sweep` on tiny random models: shared teacher work, per-category results, resume, failures."""
import json

import pytest
import yaml
from helpers import make_tiny_model

from depthtune import artifacts
from depthtune.cli import main


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("sweep-teacher"), tokenizer_dir, layers=4)


def write_sweep(path, teacher, axes, **base):
    spec = {"name": "tiny",
            "base": {"data": {"max_eval_prompts": 6}, "generate": {"max_new_tokens": 4, "batch_size": 8},
                     "evaluate": {"max_new_tokens": 4}, "select": {"require_correct": False},
                     "train": {"epochs": 1, "batch_size": 4, "save_steps": 1},
                     "distill": {"generate": {"k": 2}, "cot_max_new_tokens": 5}, **base},
            "teachers": {"a": {"model": str(teacher)}, "b": {"model": str(teacher), "system_prompt": "Be brief."}},
            "axes": axes}
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(path, out, capsys):
    code = main(["sweep", str(path), "--sweep-dir", str(out)])
    return code, capsys.readouterr().out


@pytest.mark.slow  # one of the longest: a whole run or sweep through the CLI
def test_sweep_shares_teacher_work_and_reports_per_category(teacher_dir, tmp_path, capsys):
    axes = [{"method": ["full", {"lora": {"rank": [4]}}, "prompt"], "size": [3, 6], "student": ["self"]},
            {"teachers": ["a", ["a", "b"]], "size": [3], "student": ["pruned:2"]},
            {"targets": ["answers", "cot"], "size": [3], "student": ["pruned:2"]}]  # answers: already in grid 2
    out = tmp_path / "out"
    code, log = sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes), out, capsys)
    assert code == 0
    m = json.loads((out / "sweep.json").read_text())
    assert m["cells"] == 9 and len(m["done"]) == 9 and not m["failed"]
    # four teacher set-ups (a, a with the prompt-distillation context, b, a reasoning): each sampled once,
    # though nine cells read them
    jobs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "teachers").iterdir())
    assert jobs == ["a+context-answers", "a-answers", "a-cot", "b-answers"]
    assert log.count("] sampling ") == 4
    a = next((out / "teachers").glob("a-answers-*"))
    assert len(json.loads((a / "job.json").read_text())["prompts"]) == 6  # size 3 is a subset of size 6
    assert len(artifacts.read_jsonl(a / "samples.jsonl")) == 12
    ens = artifacts.read_json(next((out / "ensembles").iterdir()) / "manifest.json")
    assert ens["samples"] == 12  # both teachers' samples on the cell's 3 prompts, averaged over both
    for r in m["done"]:
        b = r["battery"]
        assert b["category"]["knowledge"]["n"] == 2 and b["category"]["reasoning"]["n"] == 4
        assert sum(s["n"] for s in b["suite"].values()) == 6 and b["level"]
        assert set(r["transfer"]) == {"knowledge", "reasoning"} and r["train_seconds"] > 0
        assert r["examples"] > 0 and set(r["teacher"]["category"]) == {"knowledge", "reasoning"}
    lora = [r for r in m["done"] if r["settings"]["method"] == "lora"]
    assert all(r["settings"]["rank"] == 4 for r in lora)
    assert all((out / "cells").glob("*method=lora*/adapter/adapter_config.json"))
    report = (out / "sweep_report.md").read_text()
    assert "## Findings" in report and "**method**" in report and "knowledge vs reasoning" in report
    assert report.count("\n| size=") + report.count("\n| student=") >= 8
    html = (out / "sweep_report.html").read_text()
    assert html.count("data:image/png;base64,") == len(m["plots"]) >= 4
    assert {"accuracy_vs_size.png", "teachers.png", "targets.png", "cost_vs_accuracy.png"} <= set(m["plots"])


def test_interrupted_sweep_resumes_without_redoing_finished_cells(teacher_dir, tmp_path, capsys, monkeypatch):
    from depthtune.experiments import cell
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, {"method": ["full", "lora"], "seed": [0, 1], "size": [3],
                                                          "student": ["self"]})
    out, real, calls = tmp_path / "out", cell.run_cell, []

    def stop_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cell, "run_cell", stop_on_third)
    assert sweep(path, out, capsys)[0] == 130
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    samples = next(out.glob("teachers/*/samples.jsonl")).stat().st_mtime_ns
    assert len(finished) == 2
    monkeypatch.setattr(cell, "run_cell", real)
    code, log = sweep(path, out, capsys)
    assert code == 0
    assert log.count("already finished, skipped") == 2 and "] sampling " not in log
    assert {p.parent.name: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json") if p.parent.name in finished} \
        == finished
    assert next(out.glob("teachers/*/samples.jsonl")).stat().st_mtime_ns == samples
    assert len(json.loads((out / "sweep.json").read_text())["done"]) == 4


def test_failing_cell_is_recorded_and_the_sweep_goes_on(teacher_dir, tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, {"distill.select": [{"selector": "correct"}, {"selector": "cdm", "threshold": 100}], "size": [3],
                                                          "method": ["lora"], "student": ["self"]})
    out = tmp_path / "out"
    code, log = sweep(path, out, capsys)
    assert code == 1  # the report is written, and the exit status says a cell failed
    m = json.loads((out / "sweep.json").read_text())
    assert len(m["done"]) == 1 and len(m["failed"]) == 1
    assert "CDM >= 100" in m["failed"][0]["error"]
    assert "## Failed cells" in (out / "sweep_report.md").read_text()
    assert "1 failed" in log


def test_growing_a_sweep_samples_only_the_new_prompts(teacher_dir, tmp_path, capsys):
    out = tmp_path / "out"
    axes = {"size": [3], "method": ["lora"], "student": ["self"]}
    assert sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes), out, capsys)[0] == 0
    axes["size"] = [3, 6]
    code, log = sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes), out, capsys)
    assert code == 0 and "sampling 3 prompts" in log and log.count("already finished, skipped") == 1
    job = next((out / "teachers").iterdir())
    assert (job / "gen-001" / "done.json").exists() and len(artifacts.read_jsonl(job / "samples.jsonl")) == 12


def test_bad_sweep_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"axes": {"method": ["full"], "rank": [8]}}))
    code = main(["sweep", str(bad), "--sweep-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "contradicts itself" in err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def small_vocab_student(path, tokenizer_dir):
    """A tiny student with its own 300-token BPE vocabulary (and the teacher's chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    teacher_tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    text = ["What is 12 + 7? Answer with just the number. The capital of France is Paris."] * 50
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>")
    tok.chat_template = teacher_tok.chat_template
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_student_with_another_tokenizer_reads_the_teachers_text(teacher_dir, tmp_path, tokenizer_dir, capsys):
    student = small_vocab_student(tmp_path / "student", tokenizer_dir)
    axes = {"student": [str(student)], "distill.alpha": [0.0, 0.5], "size": [3], "method": ["full"]}
    code, _ = sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes), tmp_path / "out", capsys)
    m = json.loads((tmp_path / "out" / "sweep.json").read_text())
    # sequence-level: the teacher's completions re-tokenized for the 300-token student, trained and evaluated
    assert [r["overrides"]["distill.alpha"] for r in m["done"]] == [0.0]
    assert m["done"][0]["params"] < 100_000
    # soft targets need one vocabulary: that cell fails with the reason, the sweep goes on
    assert code == 1 and "vocabularies differ" in m["failed"][0]["error"]


def test_soft_targets_wanted_later_are_backfilled_and_ensembles_grow(teacher_dir, tmp_path, capsys):
    out = tmp_path / "out"
    axes = {"size": [3], "method": ["lora"], "student": ["self"]}
    assert sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes, distill={"generate": {"k": 2}, "alpha": 0.0}), out, capsys)[0] == 0
    job = next((out / "teachers").iterdir())
    assert not list(job.glob("gen-000/topk/*"))  # sequence-level only: no top-k was cached
    # the same teacher job, now with soft targets and a second teacher: rows are filled in, not resampled
    axes = [{"size": [3], "method": ["lora"], "student": ["self"]}, {"size": [3], "teachers": [["a", "b"]]}]
    code, log = sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes, distill={"generate": {"k": 2}, "alpha": 0.5}), out, capsys)
    assert code == 0 and "top-20 rows for 6 earlier samples" in log and log.count("] sampling ") == 1  # b only
    assert "averaging 2 teachers over 12 samples" in log
    axes[1]["size"] = [3, 6]
    code, log = sweep(write_sweep(tmp_path / "s.yaml", teacher_dir, axes, distill={"generate": {"k": 2}, "alpha": 0.5}), out, capsys)
    assert code == 0 and "averaging 2 teachers over 12 samples" in log  # only the 3 new prompts x 2 x 2 teachers
    ens = artifacts.read_json(next((out / "ensembles").iterdir()) / "manifest.json")
    assert ens["samples"] == 24


def test_teachers_of_two_vocabularies_cannot_be_averaged(teacher_dir, tmp_path, tokenizer_dir, capsys):
    other = small_vocab_student(tmp_path / "other", tokenizer_dir)
    path = write_sweep(tmp_path / "s.yaml", teacher_dir, {"teachers": [["a", "c"]], "size": [3], "method": ["lora"],
                                                          "student": ["self"]})
    spec = yaml.safe_load(path.read_text())
    spec["teachers"]["c"] = {"model": str(other)}
    path.write_text(yaml.safe_dump(spec))
    code, _ = sweep(path, tmp_path / "out", capsys)
    m = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert code == 1 and "averaged only over one vocabulary" in m["failed"][0]["error"]
