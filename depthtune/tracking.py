"""Experiment tracking: training curves and each stage's summary metrics in TensorBoard, trackio, MLflow or W&B.

    depthtune run --report-to tensorboard        # then: tensorboard --logdir runs/depthtune/logs
    depthtune compare --report-to trackio        # then: trackio show --project depthtune

Training curves come from the Trainer's own integrations: report_to passes through (trainer_args).
This module adds what the Trainer never sees, once a run's report is made: selection yield,
before/after metrics and their deltas, lm-eval scores, and compare's gap recovered (log_summary).

Where things go: TensorBoard writes event files under <run>/logs/ (training under logs/<train dir>,
summaries under logs/summary); the checkpoints folder, the Trainer's default, is deleted after
training. trackio, MLflow and W&B log to project "depthtune" (or TRACKIO_PROJECT, MLFLOW_EXPERIMENT_NAME,
WANDB_PROJECT when set), one run per run directory, named after it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import DepthtuneError

PROJECT = "depthtune"
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
PROJECT_ENV = {"trackio": "TRACKIO_PROJECT", "mlflow": "MLFLOW_EXPERIMENT_NAME", "wandb": "WANDB_PROJECT"}


def trackers(report_to) -> list[str]:
    """cfg.report_to (a name or a list; "none") -> the tracker names."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n != "none"]


def require(report_to) -> None:
    """A requested tracker that is not installed is a one-line error, before any model is loaded."""
    for name in trackers(report_to):
        if importlib.util.find_spec(MODULES[name]) is None:
            raise DepthtuneError(f"--report-to {name} needs the {MODULES[name]} package: pip install {MODULES[name]} "
                                 f"(or drop --report-to)")


def project(name: str) -> str:
    return os.environ.get(PROJECT_ENV.get(name, ""), PROJECT)


def trainer_args(report_to, run_name: str | None) -> dict:
    """TrainingArguments settings so the Trainer's curves land in the same project and run as the summaries.
    The Trainer's W&B and MLflow callbacks read their project only from the environment, hence the defaults."""
    for name in trackers(report_to):
        if name in ("wandb", "mlflow"):
            os.environ.setdefault(PROJECT_ENV[name], PROJECT)
    out = {"report_to": report_to, "run_name": run_name}
    if "trackio" in trackers(report_to):  # a field of recent TrainingArguments only
        out["project"] = project("trackio")
    return out


def redirect_tensorboard(trainer, report_to, log_dir: Path) -> None:
    """Point the Trainer's TensorBoard callback at log_dir (its default lives in the checkpoints folder,
    which is deleted after training)."""
    if "tensorboard" not in trackers(report_to):
        return
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    trainer.pop_callback(TensorBoardCallback)
    trainer.add_callback(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(log_dir))))


def scalars(obj, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a/b/c": value}; booleans, strings, lists and None left out."""
    out = {}
    for key, value in (obj or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def run_summary(m: dict) -> dict[str, float]:
    """The summary metrics of a `depthtune run` report (stages.report.collect's dict)."""
    s = m["selection"]
    out = {"select/kept": s["kept"], "select/total": s["total"], "select/yield": s["kept"] / max(1, s["total"]),
           "train/final_loss": m["final_loss"], "train/seconds": m["train_seconds"],
           "train/examples": m["train_examples"], "train/trainable_params": m["trainable_params"]}
    out |= scalars(m["before"], "before/") | scalars(m["after"], "after/")
    out |= {f"delta/{k}": d["delta"] for k, d in m["deltas"].items() if d.get("delta") is not None}
    if m.get("cdm_auroc") is not None:
        out["score/cdm_auroc"] = m["cdm_auroc"]
    for task, metrics in (m.get("lm_eval") or {}).get("tasks", {}).items():
        for metric, d in metrics.items():
            out |= {f"lm_eval/{task}/{metric}/{side}": d[side] for side in ("before", "after", "delta")
                    if d.get(side) is not None}
    return out


def compare_summary(m: dict) -> dict[str, float]:
    """The summary metrics of a `depthtune compare` report (distill.decide.collect's dict)."""
    g = m["gap_recovered"]
    out = {"gap_recovered": g["value"]}
    if g.get("ci95"):
        out |= {"gap_recovered/ci_low": g["ci95"][0], "gap_recovered/ci_high": g["ci95"][1]}
    for name, s in m["models"].items():
        out |= {f"{name}/{k}": s[k] for k in ("accuracy", "mean_cdm", "deep_rate", "ms_per_answer", "train_seconds",
                                              "params") if isinstance(s.get(k), (int, float))}
    delta = (m.get("distilled_vs_alone") or {}).get("delta") or {}
    if delta.get("delta") is not None:
        out["distilled_vs_alone/accuracy_delta"] = delta["delta"]
    return out


def log_summary(report_to, run_dir: Path, metrics: dict[str, float], step: int = 0) -> list[str]:
    """Log {name: value} to every tracker in report_to; -> where each went (for the log line)."""
    metrics = {k: float(v) for k, v in metrics.items() if v is not None}
    run_dir, where = Path(run_dir), []
    for name in trackers(report_to):
        where.append(_LOGGERS[name](run_dir, metrics, step))
    return where


def _tensorboard(run_dir: Path, metrics: dict, step: int) -> str:
    from torch.utils.tensorboard import SummaryWriter

    folder = run_dir / "logs" / "summary"
    with SummaryWriter(log_dir=str(folder)) as writer:
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
    return f"tensorboard: {folder}"


def _trackio(run_dir: Path, metrics: dict, step: int) -> str:
    import trackio

    trackio.init(project=project("trackio"), name=run_dir.resolve().name, resume="allow")
    trackio.log(metrics)  # one call: its first step
    trackio.finish()
    return f"trackio: project {project('trackio')}"


def _mlflow(run_dir: Path, metrics: dict, step: int) -> str:
    import mlflow

    mlflow.set_experiment(project("mlflow"))
    with mlflow.start_run(run_name=run_dir.resolve().name):
        mlflow.log_metrics(metrics, step=step)
    return f"mlflow: experiment {project('mlflow')}"


def _wandb(run_dir: Path, metrics: dict, step: int) -> str:
    import wandb

    run = wandb.init(project=project("wandb"), name=run_dir.resolve().name, dir=str(run_dir / "logs"))
    run.log(metrics)  # one call: its first step
    run.finish()
    return f"wandb: project {project('wandb')}"


_LOGGERS = {"tensorboard": _tensorboard, "trackio": _trackio, "mlflow": _mlflow, "wandb": _wandb}
