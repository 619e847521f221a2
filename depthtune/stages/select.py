"""Stage 3, select: keep the samples to train on, ranked by a selector.

Reads  <run>/score/scored.jsonl
Writes <run>/select/selected.jsonl (+ manifest.json with the yield per prompt and the line used)

Selectors (select.selector; depthtune.selectors is the one table of them):
  correct        every correct sample: rejection-sampling fine-tuning (STaR, RFT, ReST-EM); needs references
  majority       every sample whose answer is its prompt's majority answer among the k samples:
                 self-consistency (Huang et al. 2022), no labels; ranked by agreement share, then CDM
  majority_cdm   majority agreement as the stand-in for correctness, then the CDM line: the labelled
                 pipeline (correct, then deepest) with the vote in place of the label
  cdm            CDM, the depth score
  logprob        the sample's mean token log-prob (free: the sampler records it)
  random         a seeded random order over every non-degenerate sample, correct or not: no filter at all
  entropy_collapse, attention_sparsification, basin_resistance   one CDM part alone
Eligible: a non-empty answer, no degenerate flag (repetition, unfinished, echo) unless
select.exclude_degenerate is off, correct where references exist and select.require_correct is on (every
selector but random), and for the majority selectors, agreement with the prompt's majority answer.

The line: select.keep N keeps the N best eligible samples; select.threshold keeps those whose score is at
least the threshold (an absolute line: CDM 0-100, or a log-prob); otherwise a relative line keeps the top
select.top_share of the eligible samples by the selector's score, and at least select.min_kept of them,
so a line calibrated on one task never shuts out another's samples. The filters (correct, majority,
random) keep every eligible sample. Duplicate answers to one prompt are kept once (the best-ranked).
Only an eligible pool smaller than select.min_kept refuses to train, and says which setting would help.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

from .. import artifacts
from ..checking import normalise
from ..config import RunConfig, SelectConfig
from ..errors import DepthtuneError
from ..selectors import AUTO, NO_VOTE, SELECTORS, resolve


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1]."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def resolved(cfg: SelectConfig, rows: list[dict]) -> SelectConfig:
    """cfg with `auto` replaced by the selector that runs on these rows (depthtune.selectors.resolve); with
    select.require_correct off, the references judge nothing here, so `auto` is the label-free selector."""
    if cfg.selector != AUTO:
        return cfg
    labelled = cfg.require_correct and any(r.get("correct") is not None for r in rows)
    votes = labelled or cfg.threshold is not None or can_vote(rows, cfg)  # the pool is counted only where it decides
    return dataclasses.replace(cfg, selector=resolve(cfg.selector, labelled, cfg.threshold, votes=votes))


def can_vote(rows: list[dict], cfg: SelectConfig) -> bool:
    """Whether at least select.min_kept samples (one, at the least) agree with their prompt's majority answer."""
    return len(pool(rows, dataclasses.replace(cfg, selector="majority"))) >= max(1, cfg.min_kept)


def needs_correct(cfg: SelectConfig) -> bool:
    return cfg.selector == "correct" or (cfg.require_correct and cfg.selector != "random")


def uses_labels(cfg: SelectConfig, rows: list[dict]) -> bool:
    """Whether this selection reads any reference answer."""
    return needs_correct(cfg) and any(r.get("correct") is not None for r in rows)


def eligible(row: dict, cfg: SelectConfig) -> bool:
    """Everything but the line: a non-empty answer, not degenerate, correct where required and known, and
    agreeing with the majority for the majority selectors."""
    if not row["completion_ids"]:
        return False
    if cfg.exclude_degenerate and row.get("degenerate"):
        return False
    if SELECTORS[cfg.selector].votes and not row.get("majority"):
        return False
    return not (needs_correct(cfg) and row.get("correct") is False)


def score_of(row: dict, cfg: SelectConfig) -> float | None:
    field = SELECTORS[cfg.selector].field
    return row.get(field) if field else None


def rank(row: dict, cfg: SelectConfig) -> tuple:
    """Sort key, best first: the selector's score, descending (majority: agreement, then CDM, then log-prob);
    a seeded hash for correct and random."""
    if SELECTORS[cfg.selector].field is None:
        return (zlib.crc32(f"{cfg.seed}:{row['sample_id']}".encode()), row["sample_id"])
    key = [score_of(row, cfg)] + ([row.get("cdm"), row.get("mean_logprob")] if cfg.selector == "majority" else [])
    return tuple(-(v if v is not None else float("-inf")) for v in key) + (row["sample_id"],)


def _dedup(ordered: list[dict], cfg: SelectConfig) -> list[dict]:
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
    return chosen


def pool(rows: list[dict], cfg: SelectConfig) -> list[dict]:
    """The eligible samples, best first, duplicates dropped."""
    return _dedup(sorted((r for r in rows if eligible(r, cfg)), key=lambda r: rank(r, cfg)), cfg)


def describe_pool(cfg: SelectConfig, labelled: bool) -> str:
    what = "non-degenerate samples" if cfg.exclude_degenerate else "samples"
    if labelled:
        what = ("correct, " if cfg.exclude_degenerate else "correct ") + what
    if SELECTORS[cfg.selector].votes:
        what += " agreeing with their prompt's majority answer"
    return what


def select(rows: list[dict], cfg: SelectConfig) -> tuple[list[dict], dict, str]:
    """-> (kept rows in their original order, yield per prompt {prompt_id: [kept, total]}, the line used in
    words)."""
    asked, cfg = cfg.selector, resolved(cfg, rows)
    if SELECTORS[cfg.selector].cdm and any(r.get("cdm") is None for r in rows if r["completion_ids"]):
        raise DepthtuneError(f"selector {cfg.selector} ranks by CDM, which the score stage did not compute for these "
                             f"samples; rerun `depthtune score --redo --set score.cdm=true`")
    ranked = pool(rows, cfg)
    what = describe_pool(cfg, uses_labels(cfg, rows))
    by = {"cdm": "CDM", "logprob": "mean log-prob", "majority_cdm": "CDM"}.get(cfg.selector, cfg.selector)
    if cfg.keep is not None:
        chosen, line = ranked[:cfg.keep], f"the best {cfg.keep} by {by} of {len(ranked)} {what}"
        if SELECTORS[cfg.selector].field is None:
            line = f"{cfg.keep} drawn at random (seed {cfg.seed}) from {len(ranked)} {what}"
    elif cfg.threshold is not None and not SELECTORS[cfg.selector].keeps_all:
        chosen = [r for r in ranked if score_of(r, cfg) is not None and score_of(r, cfg) >= cfg.threshold]
        line = f"{by} >= {cfg.threshold:g}, of {len(ranked)} {what}"
    elif SELECTORS[cfg.selector].keeps_all:
        chosen, line = ranked, f"every one of the {what}"
    else:
        n = math.ceil(cfg.top_share * len(ranked))
        chosen = ranked[:max(n, min(cfg.min_kept, len(ranked)))]
        line = f"the top {cfg.top_share:.0%} by {by} of {len(ranked)} {what}"
        if len(chosen) > n:
            line += f", raised to select.min_kept = {cfg.min_kept}"
    if asked == AUTO and cfg.selector == NO_VOTE:
        line += (f" (fewer than {max(1, cfg.min_kept)} samples agree with their prompt's majority answer, too few "
                 f"to vote with, so auto ranked by mean log-prob)")
    ids = {r["sample_id"] for r in chosen}
    kept = [r for r in rows if r["sample_id"] in ids]
    yields: dict[str, list[int]] = {}
    for r in rows:
        y = yields.setdefault(r["prompt_id"], [0, 0])
        y[0] += r["sample_id"] in ids
        y[1] += 1
    return kept, yields, line


def explain_small(rows: list[dict], cfg: SelectConfig, kept: int) -> str:
    """Why the selection is too small to train on, and a setting that would keep enough."""
    cfg = resolved(cfg, rows)
    need = max(1, cfg.min_kept)
    ranked = pool(rows, cfg)
    what = describe_pool(cfg, uses_labels(cfg, rows))
    head = (f"selection kept {kept} of {len(rows)} samples" +
            (f", fewer than select.min_kept = {cfg.min_kept}" if kept else "") + ": ")
    dropped = [r for r in rows if r.get("degenerate")] if cfg.exclude_degenerate else []
    kinds = {f: sum(f in r["degenerate"] for r in dropped) for f in ("repetition", "unfinished", "echo")}
    tail = (f" ({len(dropped)} degenerate samples were left out: " + ", ".join(f"{n} {f}" for f, n in kinds.items()
            if n) + ")") if dropped else ""
    if not ranked:
        return (head + f"none is one of the {what}{tail}; try more samples (--k), a larger generate.max_new_tokens "
                f"when answers are cut off, or --set select.require_correct=false")
    fixes = []
    if kept >= len(ranked):
        head += f"only {len(ranked)} of the {len(rows)} samples are {what}{tail}; "
        fixes.append("more samples (--k) or more prompts")
        if dropped:
            fixes.append("a larger generate.max_new_tokens when answers are cut off")
    elif cfg.threshold is not None and cfg.keep is None:
        scores = [score_of(r, cfg) for r in ranked if score_of(r, cfg) is not None]
        q = [round(quantile(scores, x), 1) for x in (0, 0.25, 0.5, 0.75, 0.9, 1)]
        head += (f"threshold {cfg.threshold:g} is above all but {kept} of {len(ranked)} {what} (min {q[0]}, "
                 f"p25 {q[1]}, median {q[2]}, p75 {q[3]}, p90 {q[4]}, max {q[5]}){tail}; ")
        line = sorted(scores, reverse=True)[min(need, len(scores)) - 1]
        if need <= len(scores):
            fixes.append(f"--threshold {math.floor(line * 10) / 10:.1f} would keep about {need}")
        fixes.append(f"--threshold {q[4]} would keep about 10%")
        if need <= len(ranked):
            fixes.append(f"--keep {need} keeps the {need} best")
        fixes.append("leaving --threshold out keeps the top select.top_share of them")
    else:
        head += f"only {len(ranked)} {what}{tail}; "
        fixes.append("more samples (--k) or more prompts")
    fixes.append(f"--set select.min_kept=0 trains on {kept} anyway" if kept else "--selector correct keeps every "
                 "correct sample")
    return head + "; ".join(fixes)


def run(run_dir: Path, cfg: RunConfig, log=print) -> dict:
    stage_dir = Path(run_dir) / "select"
    path = Path(run_dir) / "score" / "scored.jsonl"
    if not path.exists():
        raise DepthtuneError(f"the score stage has not run in {run_dir}: run `depthtune score --run-dir {run_dir}` "
                             f"(or `depthtune run`) first")
    rows = artifacts.read_jsonl(path)
    s = resolved(cfg.select, rows)
    if s.selector == "correct" and not any(r.get("correct") is not None for r in rows):
        raise DepthtuneError("--selector correct keeps the correct samples, and these prompts have no reference "
                             "answers; select without labels: --selector majority (self-consistency), cdm or logprob")
    kept, yields, line = select(rows, cfg.select)  # resolves auto itself, and says when it fell back
    if not kept or len(kept) < s.min_kept:
        raise DepthtuneError(explain_small(rows, s, len(kept)))
    labelled = uses_labels(s, rows)
    artifacts.write_jsonl(stage_dir / "selected.jsonl", kept)
    summary = f"kept {len(kept)} of {len(rows)} samples: {line}" + ("" if labelled else "; no labels used")
    log(summary)
    return artifacts.write_manifest(stage_dir, "select", cfg.to_dict(), total=len(rows), kept=len(kept),
                                    selector=s.selector, threshold=s.threshold, line=line, summary=summary,
                                    labelled=labelled, eligible=len(pool(rows, s)),
                                    degenerate_left_out=sum(bool(r.get("degenerate")) for r in rows)
                                    if s.exclude_degenerate else 0,
                                    prompts_with_kept=sum(1 for k, _ in yields.values() if k), yield_per_prompt=yields)
