"""Trackers: the summary metrics reach each one through its own API; a missing package is one line.
(TensorBoard for real, end to end, in tests/stages/test_benchmark.py; trackio, MLflow and W&B here as stand-ins
that record the calls, since none of them is installed for the tests.)"""
import sys
import types

import pytest

from depthtune import tracking
from depthtune.errors import DepthtuneError


def fake(name: str, calls: list) -> types.ModuleType:
    """A stand-in module whose every function records (name.function, args, kwargs)."""
    module = types.ModuleType(name)

    class Run:
        def __init__(self, *a, **kw):
            calls.append((f"{name}.init", a, kw))

        def __getattr__(self, attr):
            return lambda *a, **kw: calls.append((f"{name}.run.{attr}", a, kw))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append((f"{name}.end_run", (), {}))

    module.init = module.start_run = Run
    for fn in ("log", "finish", "set_experiment", "log_metrics"):
        setattr(module, fn, lambda *a, _fn=fn, **kw: calls.append((f"{name}.{_fn}", a, kw)))
    return module


@pytest.mark.parametrize("name, logged", [
    ("trackio", "trackio.log"), ("mlflow", "mlflow.log_metrics"), ("wandb", "wandb.run.log")])
def test_each_tracker_gets_the_summary_in_project_depthtune_under_the_run_name(tmp_path, monkeypatch, name, logged):
    calls = []
    monkeypatch.setitem(sys.modules, name, fake(name, calls))
    monkeypatch.delenv(tracking.PROJECT_ENV[name], raising=False)
    where = tracking.log_summary([name], tmp_path / "my-run", {"select/yield": 0.25, "before/accuracy": None})
    assert where == [f"{name}: {'experiment' if name == 'mlflow' else 'project'} depthtune"]
    [(_, args, _)] = [c for c in calls if c[0] == logged]
    assert args[0] == {"select/yield": 0.25}  # None values are left out
    started = [c for c in calls if c[0] in (f"{name}.init", "mlflow.set_experiment")]
    assert started and ("depthtune" in started[0][1] or started[0][2].get("project") == "depthtune")


def test_trainer_args_pass_report_to_through_and_name_the_project(monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert tracking.trainer_args("none", None) == {"report_to": "none", "run_name": None}
    args = tracking.trainer_args(["wandb", "trackio"], "run-1")
    assert args == {"report_to": ["wandb", "trackio"], "run_name": "run-1", "project": "depthtune"}
    import os

    assert os.environ["WANDB_PROJECT"] == "depthtune"  # the Trainer's W&B callback reads it only from there


def test_a_tracker_that_is_not_installed_is_refused_with_the_install_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(DepthtuneError, match=r"^--report-to mlflow needs the mlflow package: pip install mlflow"):
        tracking.require(["tensorboard", "mlflow"])
    tracking.require("none")


def test_scalars_keep_numbers_only():
    assert tracking.scalars({"a": {"b": 1, "c": True, "d": "x"}, "e": 2.5, "f": None, "g": [1]}) == {"a/b": 1.0,
                                                                                                    "e": 2.5}
