"""Stage 3, select: keep the samples to train on, ranked by a selector.

Reads  <run>/score/scored.jsonl
Writes <run>/select/selected.jsonl (+ manifest.json with the yield per prompt)

Selectors (select.selector) rank the eligible samples; select.keep takes the best n of them,
otherwise cdm keeps every sample at or above select.threshold and the others keep all eligible:
  cdm                     CDM, the depth score (the default)
  correct                 correctness alone, in a seeded random order: rejection-sampling
                          fine-tuning (STaR, RFT), the baseline CDM has to beat
  random                  a seeded random order over every sample, correct or not: no filter at all
  logprob                 the sample's mean token log-prob (one forward pass; no CDM needed)
  entropy_collapse, attention_sparsification, basin_resistance   one CDM part alone
Eligible: a non-empty answer, correct where references exist and select.require_correct is on
(every selector but random), and no degenerate flag (repetition, unfinished, echo) unless
select.exclude_degenerate is off. Duplicate answers to one prompt are kept once (the best-ranked).
A selection smaller than select.min_kept refuses to train and says which setting would keep enough.
"""
from __future__ import annotations

import zlib
from pathlib import Path

from .. import artifacts
from ..checking import normalise
from ..config import RunConfig, SelectConfig
from ..errors import DepthtuneError

SCORE = {"cdm": "cdm", "logprob": "mean_logprob", "entropy_collapse": "entropy_collapse",
         "attention_sparsification": "attention_sparsification", "basin_resistance": "basin_resistance"}


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def needs_correct(cfg: SelectConfig) -> bool:
    return cfg.selector == "correct" or (cfg.require_correct and cfg.selector != "random")


def eligible(row: dict, cfg: SelectConfig) -> bool:
    """Everything but the threshold: a non-empty answer, correct where required and known, not degenerate."""
    if not row["completion_ids"]:
        return False
    if cfg.exclude_degenerate and row.get("degenerate"):
        return False
    return not (needs_correct(cfg) and row.get("correct") is False)


def rank(row: dict, cfg: SelectConfig) -> tuple:
    """Sort key, best first: the selector's score, descending; a seeded hash for correct and random."""
    if cfg.selector in SCORE:
        value = row.get(SCORE[cfg.selector])
        return (-(value if value is not None else float("-inf")), row["sample_id"])
    return (zlib.crc32(f"{cfg.seed}:{row['sample_id']}".encode()), row["sample_id"])


def passes(row: dict, cfg: SelectConfig) -> bool:
    """The CDM line, for the cdm selector without a fixed count (unscored rows pass a line of 0 only)."""
    if cfg.selector != "cdm" or cfg.keep is not None or cfg.threshold == 0:
        return True
    return row.get("cdm") is not None and row["cdm"] >= cfg.threshold


def select(rows: list[dict], cfg: SelectConfig) -> tuple[list[dict], dict]:
    """-> (kept rows in their original order, yield per prompt {prompt_id: [kept, total]})."""
    ordered = sorted((r for r in rows if eligible(r, cfg) and passes(r, cfg)), key=lambda r: rank(r, cfg))
    seen, per_prompt, chosen = set(), {}, []
    for r in ordered:
        key = (r["prompt_id"], normalise(r["completion"]))
        if cfg.dedup and key in seen:
            continue
        if cfg.max_per_prompt and per_prompt.get(r["prompt_id"], 0) >= cfg.max_per_prompt:
            continue
        seen.add(key)
        per_prompt[r["prompt_id"]] = per_prompt.get(r["prompt_id"], 0) + 1
        chosen.append(r)
    if cfg.keep is not None:
        chosen = chosen[:cfg.keep]
    ids = {r["sample_id"] for r in chosen}
    kept = [r for r in rows if r["sample_id"] in ids]
    yields: dict[str, list[int]] = {}
    for r in rows:
        y = yields.setdefault(r["prompt_id"], [0, 0])
        y[0] += r["sample_id"] in ids
        y[1] += 1
    return kept, yields


def explain_small(rows: list[dict], cfg: SelectConfig, kept: int) -> str:
    """Why the selection is too small to train on, and a setting that would keep enough."""
    need = max(1, cfg.min_kept)
    pool = [r for r in rows if eligible(r, cfg)]
    what = "correct, non-degenerate samples" if needs_correct(cfg) else "non-degenerate samples"
    head = (f"selection kept {kept} of {len(rows)} samples" +
            (f", fewer than select.min_kept = {cfg.min_kept}" if kept else "") + ": ")
    dropped = [r for r in rows if r.get("degenerate")] if cfg.exclude_degenerate else []
    kinds = {f: sum(f in r["degenerate"] for r in dropped) for f in ("repetition", "unfinished", "echo")}
    tail = (f" ({len(dropped)} degenerate samples were left out: " + ", ".join(f"{n} {f}" for f, n in kinds.items()
            if n) + ")") if dropped else ""
    if not pool:
        return (head + f"none is one of the {what}{tail}; try more samples (--k), a larger generate.max_new_tokens "
                f"when answers are cut off, or --set select.require_correct=false")
    fixes = []
    if kept >= len(pool):
        head += f"only {len(pool)} of the {len(rows)} samples are {what}{tail}; "
        fixes.append("more samples (--k) or more prompts")
        if dropped:
            fixes.append("a larger generate.max_new_tokens when answers are cut off")
    elif cfg.selector == "cdm" and cfg.keep is None:
        scores = [r["cdm"] for r in pool if r.get("cdm") is not None]
        q = [round(quantile(scores, x), 1) for x in (0, 0.25, 0.5, 0.75, 0.9, 1)]
        head += (f"threshold {cfg.threshold:g} is above all but {kept} of {len(pool)} {what} (CDM min {q[0]}, "
                 f"p25 {q[1]}, median {q[2]}, p75 {q[3]}, p90 {q[4]}, max {q[5]}){tail}; ")
        line = sorted(scores, reverse=True)[min(need, len(scores)) - 1]
        if need <= len(scores):
            fixes.append(f"--threshold {int(line * 10) / 10:.1f} would keep about {need}")
        fixes.append(f"--threshold {q[4]} would keep about 10%")
        if need <= len(pool):
            fixes.append(f"--keep {need} keeps the {need} deepest")
    else:
        head += f"only {len(pool)} {what}{tail}; "
        fixes.append("more samples (--k) or more prompts")
    fixes.append(f"--set select.min_kept=0 trains on {kept} anyway" if kept else "--selector correct keeps every "
                 "correct sample")
    return head + "; ".join(fixes)


def run(run_dir: Path, cfg: RunConfig) -> dict:
    stage_dir = Path(run_dir) / "select"
    path = Path(run_dir) / "score" / "scored.jsonl"
    if not path.exists():
        raise DepthtuneError(f"the score stage has not run in {run_dir}: run `depthtune score --run-dir {run_dir}` "
                             f"(or `depthtune run`) first")
    rows = artifacts.read_jsonl(path)
    kept, yields = select(rows, cfg.select)
    if not kept or len(kept) < cfg.select.min_kept:
        raise DepthtuneError(explain_small(rows, cfg.select, len(kept)))
    artifacts.write_jsonl(stage_dir / "selected.jsonl", kept)
    return artifacts.write_manifest(stage_dir, "select", cfg.to_dict(), total=len(rows), kept=len(kept),
                                    selector=cfg.select.selector, threshold=cfg.select.threshold,
                                    degenerate_left_out=sum(bool(r.get("degenerate")) for r in rows)
                                    if cfg.select.exclude_degenerate else 0,
                                    prompts_with_kept=sum(1 for k, _ in yields.values() if k), yield_per_prompt=yields)
