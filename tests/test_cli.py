"""The CLI end to end on a tiny random model: run, stage by stage, bad input, resume."""
import json
import subprocess
import sys

import pytest
from helpers import tiny_args

from depthtune import artifacts
from depthtune.backends.local import LocalSampler
from depthtune.cli import main

FAST = ["--max-train-prompts", "6", "--max-eval-prompts", "3"]


def test_run_end_to_end_writes_report_metrics_and_loadable_model(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run"] + tiny_args(tiny_model_dir, run_dir) + FAST) == 0
    out = capsys.readouterr().out
    assert "Mean CDM" in out and "before" in out and "after" in out
    m = json.loads((run_dir / "metrics.json").read_text())
    for side in ("before", "after"):
        assert set(m[side]) >= {"mean_cdm", "deep_rate", "accuracy", "mean_completion_tokens", "ms_per_token",
                                "peak_memory_mb"}
        assert 0 <= m[side]["mean_cdm"] <= 100 and m[side]["samples"] == 3
    assert m["selection"]["total"] == 12 and m["selection"]["threshold"] == 0.0
    assert m["selection"]["correct_only"] is False  # tiny_args turns the correctness filter off
    assert m["selection"]["kept"] > 0 and m["trainable_params"] > 0 and m["base_params"] > m["trainable_params"]
    assert "| Mean CDM |" in (run_dir / "report.md").read_text()
    assert (run_dir / "cdm.png").read_bytes()[:4] == b"\x89PNG"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "merge" / "model")
    # a second run finds everything finished and redoes nothing
    assert main(["run", "--run-dir", str(run_dir)]) == 0
    assert "[generate] already finished" in capsys.readouterr().out


@pytest.mark.slow  # one of the longest: a whole run or sweep through the CLI
def test_stage_commands_one_by_one_on_a_user_file(tiny_model_dir, tmp_path, prompt_file, capsys):
    run_dir = tmp_path / "run"
    first = ["generate"] + tiny_args(tiny_model_dir, run_dir) + ["--data", str(prompt_file), "--prompt-field",
                                                                 "context", "--answer-field", "completion"]
    assert main(first) == 0
    samples = artifacts.read_jsonl(run_dir / "generate" / "samples.jsonl")
    assert len(samples) == 9 * 2 and all(s["answer"] for s in samples)  # 12 rows, 3 held out, k=2
    for stage in ("score", "select", "train", "merge", "evaluate", "report"):
        assert main([stage, "--run-dir", str(run_dir)]) == 0, stage
        if stage != "report":
            assert artifacts.is_done(run_dir / stage)
    assert "kept" in capsys.readouterr().out
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    assert all(s["correct"] in (True, False) for s in scored)
    assert json.loads((run_dir / "metrics.json").read_text())["before"]["accuracy"] is not None

    # a redo that fails puts the finished output back; one that succeeds notes the stale later stages
    before = (run_dir / "select" / "selected.jsonl").read_text()
    assert main(["select", "--run-dir", str(run_dir), "--redo", "--threshold", "99.9"]) == 2
    assert (run_dir / "select" / "selected.jsonl").read_text() == before and artifacts.is_done(run_dir / "select")
    capsys.readouterr()
    assert main(["select", "--run-dir", str(run_dir), "--redo", "--threshold", "1"]) == 0
    out = capsys.readouterr().out
    assert "train, merge, evaluate-tuned were made from the old select output" in out and "[prepare] redone" not in out
    # and the stale later stages are refused, not silently reused, until they are redone too
    assert main(["train", "--run-dir", str(run_dir)]) == 2
    assert "the train stage" in capsys.readouterr().err and "--redo" in capsys.readouterr().err + "--redo"


def test_selection_that_keeps_nothing_stops_cleanly_and_can_be_rerun(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_model_dir, run_dir) + FAST
    args[args.index("--threshold") + 1] = "99"
    assert main(["run"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("depthtune: error: selection kept 0 of 12 samples") and "would keep about 10%" in err
    assert "\n" not in err
    assert not (run_dir / "select").exists() and artifacts.is_done(run_dir / "score")
    assert main(["run", "--run-dir", str(run_dir), "--threshold", "0"]) == 0
    assert "[score] already finished" in capsys.readouterr().out


def test_a_selection_too_small_to_learn_from_refuses_and_names_the_fix(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_model_dir, run_dir) + FAST
    args[args.index("select.min_kept=0")] = "select.min_kept=50"
    assert main(["run"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("depthtune: error: selection kept 12 of 12 samples, fewer than select.min_kept = 50")
    assert "--set select.min_kept=0 trains on 12 anyway" in err and "\n" not in err
    assert not (run_dir / "train").exists()


@pytest.mark.slow  # one of the longest: a whole run or sweep through the CLI
def test_interrupted_generation_resumes_without_losing_or_repeating_samples(tiny_model_dir, tmp_path, monkeypatch):
    args = tiny_args(tiny_model_dir, tmp_path / "whole") + FAST + ["--set", "generate.batch_size=1"]
    assert main(["generate"] + args) == 0
    whole = artifacts.read_jsonl(tmp_path / "whole" / "generate" / "samples.jsonl")

    real, calls = LocalSampler.sample_chunk, {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(LocalSampler, "sample_chunk", dying)
    args = tiny_args(tiny_model_dir, tmp_path / "cut") + FAST + ["--set", "generate.batch_size=1"]
    assert main(["generate"] + args) == 130
    stage = tmp_path / "cut" / "generate"
    assert not artifacts.is_done(stage) and not (stage / "samples.jsonl").exists()
    with open(stage / "samples.partial.jsonl", "a") as f:
        f.write('{"sample_id": "torn')  # a write cut off by a kill
    monkeypatch.setattr(LocalSampler, "sample_chunk", real)
    assert main(["generate", "--run-dir", str(tmp_path / "cut")]) == 0
    resumed = artifacts.read_jsonl(stage / "samples.jsonl")
    assert [r["sample_id"] for r in resumed] == [r["sample_id"] for r in whole]
    assert [r["completion_ids"] for r in resumed] == [r["completion_ids"] for r in whole]
    assert not (stage / "samples.partial.jsonl").exists()
    # the manifest's time counts the chunk generated before the interruption too
    first_chunk = sum(r["gen_seconds"] for r in resumed[:4])  # a chunk: 4 x batch 1 = 2 prompts x k 2, before the kill
    manifest = artifacts.read_json(stage / "manifest.json")
    assert manifest["seconds"] == pytest.approx(sum(r["gen_seconds"] for r in resumed), abs=0.01)
    assert first_chunk > 0 and manifest["seconds"] >= first_chunk


@pytest.mark.parametrize("extra, expected", [
    (["--threshold", "150"], "threshold 150.0 is outside 0-100"),
    (["--model", "/no/such/model"], "model path /no/such/model does not exist"),
    (["--model", "missing.gguf"], "model file missing.gguf does not exist"),
    (["--set", "select.treshold=5"], "did you mean 'threshold'"),
])
def test_bad_settings_give_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys, extra, expected):
    args = tiny_args(tiny_model_dir, tmp_path / "run")
    args[args.index("--model"):args.index("--model") + 2] = []
    assert main(["run"] + args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run" / "generate").exists()


@pytest.mark.parametrize("content, field, expected", [
    ('{"context": "a", "completion": "1"}\n{"context": "b",\n', "context", "line 2 is not valid JSON"),
    ('{"question": "a"}\n', "context", "no column 'context'"),
    ("\n", "context", "holds no prompts"),
])
def test_bad_data_in_a_real_process(tiny_model_dir, tmp_path, content, field, expected):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "depthtune", "run", "--run-dir", str(run_dir), "--model",
                           str(tiny_model_dir), "--data", str(data), "--prompt-field", field],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr
    assert not run_dir.exists()  # nothing written, not even config.yaml


@pytest.mark.parametrize("stage, needs", [("score", "generate"), ("train", "select"), ("report", "evaluate")])  # commands
def test_a_stage_whose_input_is_missing_names_the_stage_to_run_first(tmp_path, capsys, stage, needs):
    run_dir = tmp_path / "empty"
    assert main([stage, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"depthtune: error: the {needs} stage has not run in {run_dir}: run `depthtune {needs} "
                   f"--run-dir {run_dir}` (or `depthtune run`) first")
    assert not run_dir.exists()  # nothing written, no model loaded
