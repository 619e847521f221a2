"""Through the command line on a tiny model: --rounds (restart, continue, resume, early stop), the label-free
selectors (majority, majority_cdm), and the verifier example as --checker."""
import json
import shutil
from pathlib import Path

import pytest
from helpers import tiny_args

from depthtune import artifacts, models
from depthtune.cli import main
from depthtune.config import RunConfig

FAST = ["--max-train-prompts", "4", "--max-eval-prompts", "3"]
ROOT = Path(__file__).resolve().parents[1]


def test_a_restarting_round_trains_on_the_first_base_even_the_embedded_one(tmp_path):
    """restart names the first base outright; the embedded model's name is None, which would otherwise be
    read as "the model that samples", which is round r - 1's tuned model: continue in disguise."""
    from depthtune.stages.rounds import round_config

    for first in (None, "some/model"):
        cfg = RunConfig()
        cfg.model.name = first
        restart = round_config(cfg, tmp_path, 2)
        assert restart.model.name == str(tmp_path / "round-1" / "merge" / "model")
        assert restart.train.base == (first or models.EMBEDDED_NAME) != restart.model.name
        cfg.rounds.mode = "continue"
        assert round_config(cfg, tmp_path, 2).train.base == restart.model.name


@pytest.mark.slow  # three whole runs and a resume
def test_rounds_restart_and_continue_resume_and_stop_early(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "restart"
    assert main(["run"] + tiny_args(tiny_model_dir, run_dir) + FAST + ["--rounds", "2"]) == 0
    s = json.loads((run_dir / "rounds.json").read_text())
    assert s["mode"] == "restart" and s["done"] == 2 and [r["round"] for r in s["rounds"]] == [1, 2]
    assert all("ci95" in r["vs_base"] and "ci95" in r["vs_previous"] for r in s["rounds"])
    # round 2 samples from round 1's tuned model and trains a fresh adapter on the first base
    assert artifacts.read_json(run_dir / "round-2" / "train" / "manifest.json")["base_model"] == str(tiny_model_dir)
    import yaml

    sampled_by = yaml.safe_load((run_dir / "round-2" / "config.yaml").read_text())["model"]["name"]
    assert sampled_by == str(run_dir / "round-1" / "merge" / "model")
    md = (run_dir / "rounds.md").read_text()
    assert "| 2 |" in md and "Selection used no labels" in md  # tiny_args turns the correctness filter off
    assert "rounds (restart)" in capsys.readouterr().out

    # continue: round 2 trains on round 1's tuned model; round 1 is reused, not redone
    cont = tmp_path / "continue"
    cont.mkdir()
    shutil.copytree(run_dir / "round-1", cont / "round-1")
    assert main(["run"] + tiny_args(tiny_model_dir, cont) + FAST + ["--rounds", "2", "--set", "rounds.mode=continue"]) == 0
    out = capsys.readouterr().out
    assert "[generate] already finished" in out  # round 1
    assert artifacts.read_json(cont / "round-2" / "train" / "manifest.json")["base_model"] == \
        str(cont / "round-1" / "merge" / "model")

    # asked for more rounds later, the run resumes after the finished ones, and stops at the first whose gain
    # cannot reach the margin: round 2 already, whose gain over round 1 is at most 100 points
    assert main(["run"] + tiny_args(tiny_model_dir, run_dir) + FAST + ["--rounds", "3", "--set", "rounds.margin=101"]) == 0
    s = json.loads((run_dir / "rounds.json").read_text())
    assert s["done"] == 2 and s["asked"] == 3 and "round 2's gain over round 1" in s["stopped_early"]
    out = capsys.readouterr().out
    assert "stopping early" in out and "[train] already finished" in out and not (run_dir / "round-3").exists()
    assert "Stopped after round 2 of 3" in (run_dir / "rounds.md").read_text()


@pytest.mark.parametrize("selector", ["majority", "majority_cdm"])
def test_label_free_selectors_through_the_cli(tiny_model_dir, tmp_path, selector):
    run_dir = tmp_path / selector
    # near-greedy sampling of raw prompts: a random model's k answers to a prompt then agree (it repeats the
    # prompt's last token), so there is a majority to find
    data = tmp_path / "count.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Count on from {a}: {a + 1} {a + 2}", "answer": str(a + 3)}) + "\n"
                            for a in range(10, 22)))
    args = tiny_args(tiny_model_dir, run_dir) + FAST + ["--selector", selector, "--k", "3", "--data", str(data), "--set",
                                                        "data.template=raw", "--set", "generate.temperature=1e-6"]
    assert main(["run"] + args) == 0
    sel = artifacts.read_json(run_dir / "select" / "manifest.json")
    assert sel["selector"] == selector and sel["labelled"] is False and "no labels used" in sel["summary"]
    kept = artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    assert kept and all(r["majority"] for r in kept)  # only samples that agree with their prompt's majority
    assert len(kept) < sum(r["majority"] for r in scored)  # the default line: the top share of the majority pool
    assert json.loads((run_dir / "metrics.json").read_text())["selection"]["kept"] == len(kept)


def test_auto_without_the_correctness_filter_selects_without_labels(tiny_model_dir, tmp_path):
    """--set select.require_correct=false on a labelled file: `auto` is the label-free selector, and the run
    says it used no labels."""
    run_dir = tmp_path / "free"
    args = tiny_args(tiny_model_dir, run_dir) + FAST
    del args[args.index("--threshold"):args.index("--threshold") + 2]
    assert main(["run"] + args) == 0
    sel = artifacts.read_json(run_dir / "select" / "manifest.json")
    # a random model's answers never agree: nothing to vote with, so auto ranked by mean log-prob, and says so
    assert sel["selector"] == "logprob" and sel["labelled"] is False and "too few to vote with" in sel["summary"]
    assert "no labels" in (run_dir / "report.md").read_text().lower()


def test_the_verifier_example_judges_a_run_through_the_cli(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The shipped Python-function task and its subprocess verifier, end to end: every held-out answer is
    judged by running it against the asserts."""
    monkeypatch.syspath_prepend(str(ROOT))
    run_dir = tmp_path / "fn"
    args = tiny_args(tiny_model_dir, run_dir) + FAST + [
        "--data", str(ROOT / "examples" / "verifier" / "functions.jsonl"), "--answer-field", "tests",
        "--checker", "examples.verifier.python_tests:check"]
    assert main(["run"] + args) == 0
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    assert scored and all(r["correct"] is False for r in scored)  # a random model writes no working function
    tuned = artifacts.read_jsonl(run_dir / "evaluate" / "tuned.jsonl")
    assert len(tuned) == 3 and all(r["correct"] is False for r in tuned)
    assert json.loads((run_dir / "metrics.json").read_text())["before"]["accuracy"] == 0.0


def test_the_verifier_example_runs_code_against_asserts_with_limits(monkeypatch):
    import socket

    monkeypatch.syspath_prepend(str(ROOT))
    from examples.verifier.python_tests import check

    tests = "assert add_2(1) == 3\nassert add_2(-2) == 0"
    assert check("", "```python\ndef add_2(x):\n    return x + 2\n```", tests)
    assert check("", "Here you go:\ndef add_2(x):\n    return x + 2", tests)
    assert not check("", "def add_2(x):\n    return x + 3", tests)
    assert not check("", "def add_2(x):\n    return x + 2", None)  # nothing to test against
    assert not check("", "def add_2(x):\n    while True:\n        pass\n", tests)  # the timeout
    assert not check("", "def add_2(x):\n    return x + 2 + 0 * len(bytearray(2**31))", tests)  # the memory limit
    with socket.create_server(("127.0.0.1", 0)) as server:  # a listener the candidate could reach, but for the guard
        port = server.getsockname()[1]
        net = f"import socket\ndef add_2(x):\n    socket.create_connection(('127.0.0.1', {port})).close()\n    return x + 2"
        assert not check("", net, tests)
