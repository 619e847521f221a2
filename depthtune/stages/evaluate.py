"""Stage 6, evaluate: base and tuned model on held-out prompts they never trained on.

Reads  <run>/prompts/eval.jsonl, <run>/merge/manifest.json (where the tuned model is)
Writes <run>/evaluate/{base,tuned}.jsonl and {base,tuned}.json (summaries), + manifest.json

The same sampler and CDM scorer as the training side, so a CDM line means the same
thing in both places. Answers are greedy by default (evaluate.temperature = 0).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import artifacts, distributed
from ..backends.local import LocalSampler
from ..config import RunConfig
from ..memory import PeakMemory
from ..models import count_params
from .generate import sample_shared
from .score import judged, score_shared

WHICH = ("base", "tuned")


def deep_rate(rows: list[dict], deep_line: float) -> float:
    """Share of rows with CDM >= deep_line."""
    return round(sum(r["cdm"] >= deep_line for r in rows) / max(1, len(rows)), 4)


def summarise(rows: list[dict], gen_seconds: float, peak_mb: float, deep_line: float) -> dict:
    n = max(1, len(rows))
    tokens = sum(len(r["completion_ids"]) for r in rows)
    judged = [r["correct"] for r in rows if r.get("correct") is not None]
    scored = all(r.get("cdm") is not None for r in rows)  # a sweep may evaluate without CDM
    return {
        "samples": len(rows),
        "mean_cdm": round(sum(r["cdm"] for r in rows) / n, 3) if scored else None,
        "deep_rate": deep_rate(rows, deep_line) if scored else None,
        "accuracy": round(sum(judged) / len(judged), 4) if judged else None,
        "mean_completion_tokens": round(tokens / n, 2),
        "ms_per_token": round(1000 * gen_seconds / max(1, tokens), 3) if gen_seconds else None,
        "peak_memory_mb": round(peak_mb, 1),
    }


def evaluate_model(run_dir: Path, cfg: RunConfig, which: str, model, tok, log=print, prefix: str = "",
                   items: list[dict] | None = None, cdm: bool = True, sampler=None) -> dict:
    """Answer and score every held-out prompt with `model`; resumable; -> summary.

    `prefix` goes before every prompt (a step-by-step student is asked with "[answer] ").
    `items` replaces <run>/prompts/eval.jsonl; cdm=False judges answers without the CDM passes.
    `sampler` answers instead of `model` (a served model); CDM is then scored with `model` when given.
    """
    stage_dir = Path(run_dir) / "evaluate"
    stage_dir.mkdir(parents=True, exist_ok=True)
    summary_path = stage_dir / f"{which}.json"
    if summary_path.exists():
        return artifacts.read_json(summary_path)
    if items is None:
        items = artifacts.read_jsonl(Path(run_dir) / "prompts" / "eval.jsonl")
    if prefix:
        from ..prompting import with_prefix

        items = [with_prefix(it, prefix) for it in items]
    e = cfg.evaluate
    log(f"evaluate[{which}]: {len(items)} held-out prompts")
    caps = "--max-eval-prompts N or --set evaluate.max_new_tokens=N"
    sampler = sampler or LocalSampler(model, tok, cfg.data.template, batch_size=e.batch_size)
    if isinstance(sampler, LocalSampler):  # untimed warm-up: the first call pays for kernels and caches
        sampler.sample_chunk(items[:1], k=1, temperature=0.0, top_p=1.0, max_new_tokens=2, seed=0, system_prompt=None)
    with PeakMemory(model) as mem:
        rows, secs = sample_shared(sampler, items,
                                   stage_dir / f"{which}.samples.partial.jsonl", k=1,
                                   temperature=e.temperature, top_p=cfg.generate.top_p,
                                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=e.seed,
                                   system_prompt=cfg.data.system_prompt, progress=log,
                                   desc=f"evaluate[{which}] answers", hint=caps)
    if cdm and e.cdm and model is not None:
        scored = score_shared(model, tok, rows, dataclasses.replace(cfg.score, cdm=True),
                              stage_dir / f"{which}.scored.partial.jsonl", progress=log, desc=f"evaluate[{which}] CDM",
                              hint="--max-eval-prompts N", checker=cfg.data.checker)
    else:
        scored = [{**r, "cdm": None, **judged(r, cfg.data.checker)} for r in rows]
    if not distributed.is_main():  # the main process writes the summary
        distributed.barrier()
        return artifacts.read_json(summary_path)
    artifacts.write_jsonl(stage_dir / f"{which}.jsonl", scored)
    summary = summarise(scored, secs, mem.mb, e.deep_line)
    summary["params"] = count_params(model) if model is not None else None  # a served model alone: unknown here
    artifacts.write_json(summary_path, summary)
    for suffix in ("samples", "scored"):
        (stage_dir / f"{which}.{suffix}.partial.jsonl").unlink(missing_ok=True)
    return distributed.main_wrote(summary)


def finish(run_dir: Path, cfg: RunConfig) -> dict:
    stage_dir = Path(run_dir) / "evaluate"
    summaries = {w: artifacts.read_json(stage_dir / f"{w}.json") for w in WHICH}
    return artifacts.write_manifest(stage_dir, "evaluate", cfg.to_dict(), **summaries)
