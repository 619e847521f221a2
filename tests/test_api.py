"""The Python API on a tiny model, as a notebook would use it: configs as dicts or RunConfig objects,
figures back as dataclasses, the same one-line errors as the command line."""
import pytest

import depthtune
from depthtune.errors import DepthtuneError


def tiny_config(model_dir) -> dict:
    return {"model": {"name": str(model_dir)}, "data": {"max_train_prompts": 6, "max_eval_prompts": 3},
            "generate": {"k": 2, "max_new_tokens": 6}, "evaluate": {"max_new_tokens": 6},
            "select": {"require_correct": False, "exclude_degenerate": False, "min_kept": 0, "threshold": 0},
            "train": {"epochs": 1, "batch_size": 4}}


def test_run_takes_a_dict_and_returns_the_reports_figures(tiny_model_dir, tmp_path):
    result = depthtune.run(tiny_config(tiny_model_dir), run_dir=tmp_path / "run", log=lambda *a: None)
    assert isinstance(result, depthtune.RunResult) and result.report == tmp_path / "run" / "report.md"
    before, after = result.accuracy
    assert before == 0.0 and after == 0.0  # a random model answers nothing right
    assert result.metrics["selection"]["kept"] == 12 and result.metrics["deltas"]["accuracy"]["n"] == 3
    assert result.report.exists()


def test_a_config_object_and_ablate(tiny_model_dir, tmp_path):
    cfg = depthtune.as_config(tiny_config(tiny_model_dir))
    cfg.ablate.selectors, cfg.ablate.seeds, cfg.ablate.keep = ["random", "logprob"], [0], 4
    result = depthtune.ablate(cfg, run_dir=tmp_path / "abl", log=lambda *a: None)
    assert set(result.metrics["selectors"]) == {"random", "logprob"} and result.findings


def test_bad_input_raises_the_command_lines_one_line_error(tmp_path):
    with pytest.raises(DepthtuneError, match="unknown config key 'train.rnak'"):
        depthtune.run({"train": {"rnak": 4}}, run_dir=tmp_path / "run")
    with pytest.raises(DepthtuneError, match="a config is a RunConfig, a dict or a YAML path"):
        depthtune.run(42, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_version_is_the_packages(capsys):
    from importlib.metadata import version

    from depthtune.cli import main

    assert depthtune.__version__ == version("depthtune")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"depthtune {depthtune.__version__}"
