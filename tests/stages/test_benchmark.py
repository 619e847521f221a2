"""--lm-eval and --report-to end to end on the tiny model: a local lm-eval task (a YAML and a JSONL shipped in
tests/data/lm_eval, no network) on base and tuned, scores in the report and metrics.json; TensorBoard event
files for training and the stage summaries, read back. Plus the pieces on made-up lm-eval output."""
import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_args

from depthtune.cli import main
from depthtune.config import RunConfig
from depthtune.errors import DepthtuneError
from depthtune.stages.benchmark import changes, require, scores, task_spec

pytestmark = pytest.mark.slow  # lm-evaluation-harness on a run

TASK = Path(__file__).resolve().parents[1] / "data" / "lm_eval" / "arith.yaml"
FAST = ["--max-train-prompts", "6", "--max-eval-prompts", "3"]


def scalars(folder: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_with_lm_eval_and_tensorboard(tiny_model_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.chdir(tmp_path)  # the task's data file is found relative to the task file, not here
    run_dir = tmp_path / "run"
    args = tiny_args(tiny_model_dir, run_dir) + FAST + ["--report-to", "tensorboard", "--lm-eval", str(TASK),
                                                        "--set", "evaluate.lm_eval_limit=6"]
    assert main(["run"] + args) == 0
    out = capsys.readouterr().out
    assert out.index("plan: 6 training prompts x 2 samples") < out.index("[generate]")  # the caps come first
    assert "--max-train-prompts N, --max-eval-prompts N, --k N" in out
    assert "  train: 3/3 steps in" in out and "summary metrics logged to tensorboard" in out

    m = json.loads((run_dir / "metrics.json").read_text())
    acc = m["lm_eval"]["tasks"]["depthtune_arith"]["acc"]
    assert 0 <= acc["before"] <= 1 and 0 <= acc["after"] <= 1 and acc["n"] == 6 and m["lm_eval"]["limit"] == 6
    report = (run_dir / "report.md").read_text()
    assert "## Standard benchmarks (lm-evaluation-harness)" in report and "| depthtune_arith | acc |" in report
    base = json.loads((run_dir / "benchmark" / "base.json").read_text())
    assert base["model"] == str(tiny_model_dir) and len(base["tasks"]["depthtune_arith"]["acc"]["docs"]) == 6
    assert json.loads((run_dir / "benchmark" / "tuned.json").read_text())["model"] == str(run_dir / "merge" / "model")

    train = scalars(run_dir / "logs" / "train")  # the Trainer's curves, outside the deleted checkpoints folder
    assert len(train["train/loss"]) == 3 and not (run_dir / "train" / "checkpoints").exists()
    summary = scalars(run_dir / "logs" / "summary")
    assert summary["select/yield"] == [pytest.approx(m["selection"]["kept"] / m["selection"]["total"])]
    assert summary["before/mean_cdm"] == [pytest.approx(m["before"]["mean_cdm"])]
    assert summary["lm_eval/depthtune_arith/acc/after"] == [pytest.approx(acc["after"])]

    # evaluate --lm-eval on a finished run: the same request is not measured again; the report is brought up to date
    (run_dir / "report.md").unlink()
    assert main(["evaluate", "--run-dir", str(run_dir), "--lm-eval", str(TASK)]) == 0
    out = capsys.readouterr().out
    assert "lm-eval[" not in out and "| depthtune_arith | acc |" in out and (run_dir / "report.md").exists()


def test_a_task_file_with_relative_data_files_gets_a_wrapper_that_includes_it(tmp_path):
    spec = task_spec(str(TASK), tmp_path)
    wrapper = yaml.safe_load(Path(spec).read_text())
    assert wrapper["include"] == str(TASK)
    assert wrapper["dataset_kwargs"]["data_files"] == {"test": str(TASK.parent / "arith.jsonl")}
    assert task_spec("gsm8k", tmp_path) == "gsm8k"


def test_scores_read_every_filter_and_changes_pair_documents():
    def results(values):
        samples = [{"doc_id": i, "filter": f, "exact_match": v} for f in ("strict-match", "flexible-extract")
                   for i, v in enumerate(values)]
        return {"results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": sum(values) / 4,
                                      "exact_match_stderr,strict-match": 0.2, "exact_match,flexible-extract": 0.5,
                                      "exact_match_stderr,flexible-extract": "N/A"}},
                "samples": {"gsm8k": samples}}

    before, after = scores(results([0, 0, 1, 0])), scores(results([1, 1, 1, 0]))
    strict = before["gsm8k"]["exact_match (strict-match)"]
    assert strict == {"value": 0.25, "stderr": 0.2, "docs": {"0": 0.0, "1": 0.0, "2": 1.0, "3": 0.0}}
    assert before["gsm8k"]["exact_match (flexible-extract)"]["stderr"] is None
    d = changes(before, after)["gsm8k"]["exact_match (strict-match)"]
    assert d["before"] == 0.25 and d["after"] == 0.75 and d["delta"] == pytest.approx(0.5) and d["n"] == 4


def test_an_unknown_task_name_or_a_missing_task_file_is_refused_up_front(monkeypatch):
    tasks = pytest.importorskip("lm_eval.tasks")

    class Index:  # lm-eval's real index takes ~10 s to build; its names are all require reads
        all_tasks = ["arc_easy", "gsm8k"]

    monkeypatch.setattr(tasks, "TaskManager", Index)
    cfg = RunConfig()
    cfg.evaluate.lm_eval = [str(TASK), "gsm8k"]
    require(cfg)
    cfg.evaluate.lm_eval = ["gsm8"]
    with pytest.raises(DepthtuneError, match=r"--lm-eval gsm8: lm-eval has no task of that name \(did you mean"):
        require(cfg)
    cfg.evaluate.lm_eval = ["missing.yaml"]
    with pytest.raises(DepthtuneError, match="--lm-eval missing.yaml: no such task file"):
        require(cfg)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under accelerate launch: refused, with the one-process way
    with pytest.raises(DepthtuneError, match="does not run under accelerate launch yet"):
        require(cfg)
