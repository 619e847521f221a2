"""Standard benchmarks: lm-evaluation-harness tasks on the base and the tuned model, beside depthtune's own.

    depthtune run --lm-eval gsm8k arc_easy [--set evaluate.lm_eval_limit=200]
    depthtune evaluate --run-dir D --lm-eval tests/data/lm_eval/arith.yaml

Reads  config model.name (the base), <run>/merge/manifest.json (the tuned model's directory)
Writes <run>/benchmark/{base,tuned}.json (per task and metric: lm-eval's value, its stderr and every
       document's score), manifest.json (the changes); tasks/ (wrappers of task files, see task_spec)

Both models load through lm-eval's own `hf` model type from where they live, so depthtune has no second
loader: the tuned model from its merged directory, the base from its hub id or directory, and a GGUF
base (the embedded model) through HFLM's `gguf_file` argument, which transformers dequantises as
depthtune's own loader does.

A task is a name lm-eval knows (gsm8k, arc_easy, ...: its data is downloaded the first time) or a task
YAML file. Relative `dataset_kwargs.data_files` of a task file are read relative to the file, so a task
and its JSONL can ship together and run from any directory.

Prompts: lm-eval's default (no chat template), comparable with published numbers, unless
data.template is chat, which turns on lm-eval's apply_chat_template. Each metric's base -> tuned change
gets a paired bootstrap 95% interval over documents (depthtune.stats) from lm-eval's per-document scores.
"""
from __future__ import annotations

import difflib
import gc
import importlib.util
import logging
from pathlib import Path

import yaml

from .. import artifacts, distributed, models, stats
from ..config import RunConfig
from ..errors import DepthtuneError

WHICH = ("base", "tuned")


class _AnyTags(yaml.SafeLoader):
    """Reads a task file's plain keys; lm-eval's own tags (!function) are left to lm-eval."""


_AnyTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def _absolute(files, folder: Path):
    """data_files (a path, a list, or {split: path or list}) with relative local paths made absolute."""
    if isinstance(files, dict):
        return {k: _absolute(v, folder) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, folder) for v in files]
    if isinstance(files, str) and "://" not in files and not Path(files).expanduser().is_absolute():
        return str((folder / files).resolve())
    return files


def _task_file(task: str) -> Path | None:
    """The task's YAML file, None for a task name; a named file that is missing is a one-line error."""
    path = Path(task).expanduser()
    if path.suffix not in (".yaml", ".yml"):
        return None
    if not path.is_file():
        raise DepthtuneError(f"--lm-eval {task}: no such task file; give a task name (e.g. gsm8k) or a task YAML")
    return path


def require(cfg: RunConfig) -> None:
    """Before any model loads: lm-eval is installed, every task file exists and every task name is lm-eval's
    (reading its task index takes ~10 s, far less than a run that would end on an unknown name)."""
    if not cfg.evaluate.lm_eval:
        return
    if importlib.util.find_spec("lm_eval") is None:
        raise DepthtuneError("--lm-eval needs lm-evaluation-harness: pip install 'lm-eval[hf]' (or drop --lm-eval)")
    if distributed.world()[1] > 1:  # lm-eval's HF model would split its documents over the launched processes
        raise DepthtuneError("--lm-eval does not run under accelerate launch yet; drop it here and run "
                             "`depthtune evaluate --run-dir DIR --lm-eval TASKS` in one process afterwards")
    names = [task for task in cfg.evaluate.lm_eval if _task_file(task) is None]
    if names:
        from lm_eval.tasks import TaskManager

        known = TaskManager().all_tasks
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DepthtuneError(f"--lm-eval {name}: lm-eval has no task of that name{hint}; `lm-eval ls tasks` "
                                     f"lists them, or give a task YAML file")


def task_spec(task: str, folder: Path) -> str:
    """A task name as is. A task file whose data_files are relative gets a wrapper in folder/tasks that
    includes it with those paths made absolute (lm-eval would read them relative to the current directory)."""
    path = _task_file(task)
    if path is None:
        return task
    cfg = yaml.load(path.read_text(), Loader=_AnyTags) or {}
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if not files or _absolute(files, path.parent) == files:
        return str(path.resolve())
    wrapper = folder / "tasks" / path.name
    fixed = {**kwargs, "data_files": _absolute(files, path.parent)}
    artifacts.write_text(wrapper, yaml.safe_dump({"include": str(path.resolve()), "dataset_kwargs": fixed}))
    return str(wrapper)


def model_args(name: str | None, cfg: RunConfig) -> dict:
    """lm-eval `hf` model_args for a model name or directory (a GGUF file through gguf_file)."""
    source, extra = models.resolve(name)
    device = models.pick_device(cfg.model.device)
    return {"pretrained": source, **extra, "dtype": str(models.pick_dtype(cfg.model.dtype, device)).split(".")[-1]}


def scores(results: dict) -> dict:
    """lm-eval's output -> {task: {metric: {value, stderr, docs: {doc_id: score}}}}; a metric of a filter other
    than 'none' is named 'metric (filter)' (gsm8k's strict-match and flexible-extract)."""
    out = {}
    for task, row in results["results"].items():
        samples = results.get("samples", {}).get(task, [])
        for key, value in row.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            stderr = row.get(f"{metric}_stderr,{filt}")
            docs = {str(s["doc_id"]): float(s[metric]) for s in samples
                    if s.get("filter") == filt and isinstance(s.get(metric), (int, float))}
            name = metric if filt == "none" else f"{metric} ({filt})"
            out.setdefault(task, {})[name] = {"value": float(value), "docs": docs,
                                              "stderr": stderr if isinstance(stderr, (int, float)) else None}
    return out


def evaluate(args: dict, tasks: list[str], cfg: RunConfig) -> dict:
    import lm_eval

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines would bury the stage log
    e = cfg.evaluate
    try:
        out = lm_eval.simple_evaluate(model="hf", model_args=args, tasks=tasks, batch_size=e.batch_size,
                                      device=str(models.pick_device(cfg.model.device)), limit=e.lm_eval_limit,
                                      log_samples=True, apply_chat_template=cfg.data.template == "chat",
                                      random_seed=e.seed)
    finally:
        gc.collect()  # the model lm-eval loaded goes before the next one comes
    return scores(out)


def changes(base: dict, tuned: dict) -> dict:
    """{task: {metric: paired delta over shared documents (before, after, delta, ci95, n)}}."""
    out = {}
    for task, metrics in tuned.items():
        for metric, t in metrics.items():
            b = base.get(task, {}).get(metric)
            if b is None:
                continue
            shared = sorted(set(b["docs"]) & set(t["docs"]))
            d = (stats.paired_delta([b["docs"][i] for i in shared], [t["docs"][i] for i in shared]) if shared else
                 {"delta": t["value"] - b["value"], "ci95": None, "n": 0})
            out.setdefault(task, {})[metric] = {**d, "before": b["value"], "after": t["value"]}
    return out


def run(run_dir: Path, cfg: RunConfig, log=print) -> dict:
    """Both models on cfg.evaluate.lm_eval; a side already measured with the same request is kept."""
    run_dir, folder = Path(run_dir), Path(run_dir) / "benchmark"
    e = cfg.evaluate
    if not e.lm_eval:
        raise DepthtuneError("no lm-eval tasks given; pass --lm-eval TASK [TASK ...]")
    request = {"tasks": list(e.lm_eval), "limit": e.lm_eval_limit, "chat_template": cfg.data.template == "chat"}
    tasks = [task_spec(t, folder) for t in e.lm_eval]
    merged = artifacts.read_manifest(run_dir / "merge", "merge")
    names = {"base": cfg.model.name, "tuned": str(run_dir / merged["model_dir"])}
    results = {}
    for which in WHICH:
        path = folder / f"{which}.json"
        if path.exists() and artifacts.read_json(path)["request"] == request:
            results[which] = artifacts.read_json(path)["tasks"]
            continue
        log(f"lm-eval[{which}]: {', '.join(e.lm_eval)}" + (f", at most {e.lm_eval_limit} documents each"
                                                             if e.lm_eval_limit else ""))
        results[which] = evaluate(model_args(names[which], cfg), tasks, cfg)
        artifacts.write_json(path, {"request": request, "model": names[which], "tasks": results[which]})
    return artifacts.write_manifest(folder, "benchmark", cfg.to_dict(), **request,
                                    changes=changes(results["base"], results["tuned"]))


def summary(run_dir: Path) -> dict | None:
    """What the report and metrics.json carry: the changes and how they were measured (None: not run)."""
    path = artifacts.manifest_path(Path(run_dir) / "benchmark")
    if not path.exists():
        return None
    return summary_of(artifacts.read_json(path))


def summary_of(manifest: dict) -> dict:
    return {"tasks": manifest["changes"], "limit": manifest["limit"], "chat_template": manifest["chat_template"]}


def render(s: dict) -> list[str]:
    """The report's section: one row per task and metric, shares shown in points (x100)."""
    how = "the chat template" if s["chat_template"] else "plain (lm-eval's default)"
    cap = f"; at most {s['limit']} documents per task" if s["limit"] else ""
    rows = ["## Standard benchmarks (lm-evaluation-harness)", "",
            f"Prompts: {how}{cap}. Changes are paired over documents; a change counts only where its 95% "
            f"interval excludes 0.", "",
            "| task | metric | before | after | change (95% interval) |", "|---|---|---|---|---|"]
    for task, metrics in s["tasks"].items():
        for metric, d in metrics.items():
            k = 100 if all(0 <= d[x] <= 1 for x in ("before", "after")) else 1  # a share: points
            change = f"{k * d['delta']:+.1f}" + (f" ({k * d['ci95'][0]:+.1f} to {k * d['ci95'][1]:+.1f})"
                                                 if d["ci95"] else "")
            rows.append(f"| {task} | {metric} | {k * d['before']:.1f} | {k * d['after']:.1f} | {change} |")
    return rows + [""]
