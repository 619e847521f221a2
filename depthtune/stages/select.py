"""Stage 3, select: keep the deep (and, where references exist, correct) samples.

Reads  <run>/score/scored.jsonl
Writes <run>/select/selected.jsonl (+ manifest.json with the yield per prompt)
"""
from __future__ import annotations

from pathlib import Path

from .. import artifacts
from ..checking import normalise
from ..config import RunConfig, SelectConfig
from ..errors import DepthtuneError


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def eligible(row: dict, cfg: SelectConfig) -> bool:
    """Everything but the CDM line: a non-empty answer, correct where that is required and known."""
    if not row["completion_ids"]:
        return False
    return not (cfg.require_correct and row.get("correct") is False)


def select(rows: list[dict], cfg: SelectConfig) -> tuple[list[dict], dict]:
    """-> (kept rows, yield per prompt {prompt_id: [kept, total]})."""
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    kept, yields = [], {}
    for pid, group in by_prompt.items():
        # unscored rows (cdm None: a sweep that needs no CDM line) pass a threshold of 0 only
        good = sorted((r for r in group if eligible(r, cfg) and
                       (cfg.threshold == 0 or r.get("cdm") is not None and r["cdm"] >= cfg.threshold)),
                      key=lambda r: (-(r.get("cdm") or 0.0), r["sample_id"]))
        seen, mine = set(), []
        for r in good:
            key = normalise(r["completion"])
            if cfg.dedup and key in seen:
                continue
            seen.add(key)
            mine.append(r)
        mine = mine[:cfg.max_per_prompt] if cfg.max_per_prompt else mine
        kept += mine
        yields[pid] = [len(mine), len(group)]
    return kept, yields


def explain_empty(rows: list[dict], cfg: SelectConfig) -> str:
    scores = [r["cdm"] for r in rows if eligible(r, cfg)]
    pool = "correct samples" if cfg.require_correct and any(r.get("correct") is not None for r in rows) else "samples"
    if not scores:
        return (f"selection kept nothing: none of {len(rows)} samples is a non-empty {pool[:-1]}; "
                f"try more samples (--k) or --set select.require_correct=false")
    q = [round(quantile(scores, x), 1) for x in (0, 0.25, 0.5, 0.75, 0.9, 1)]
    return (f"selection kept nothing: threshold {cfg.threshold:g} is above every one of {len(scores)} {pool} "
            f"(CDM min {q[0]}, p25 {q[1]}, median {q[2]}, p75 {q[3]}, p90 {q[4]}, max {q[5]}); "
            f"--threshold {q[4]} would keep about 10%")


def run(run_dir: Path, cfg: RunConfig) -> dict:
    stage_dir = Path(run_dir) / "select"
    rows = artifacts.read_jsonl(Path(run_dir) / "score" / "scored.jsonl")
    kept, yields = select(rows, cfg.select)
    if not kept:
        raise DepthtuneError(explain_empty(rows, cfg.select))
    artifacts.write_jsonl(stage_dir / "selected.jsonl", kept)
    return artifacts.write_manifest(stage_dir, "select", cfg.to_dict(), total=len(rows), kept=len(kept),
                                    threshold=cfg.select.threshold, prompts_with_kept=sum(1 for k, _ in yields.values() if k),
                                    yield_per_prompt=yields)
