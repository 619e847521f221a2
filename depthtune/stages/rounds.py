"""`depthtune run --rounds N`: sample, select and train again from the tuned model (STaR, ReST-EM).

    <run>/round-1/   a whole run: the base samples, is tuned, the tuned model is evaluated
    <run>/round-2/   round 1's tuned model samples and is scored; the adapter trains on round 2's samples
    ...              (rounds.mode restart: a fresh adapter on the first base, as ReST-EM does;
                      continue: on the model the round before tuned); its "base" evaluation is the round
                      before's tuned evaluation, copied, not recomputed
    <run>/rounds.md, rounds.json   per round, held-out accuracy with its interval against the first base
                                   and against the round before

Each round is a run directory of its own, so an interrupted round resumes where it stopped and a
finished round is never redone. After each round from the second on, the rounds stop early (and say
so) when the round's gain over the round before has a 95% interval entirely below rounds.margin
points of accuracy: another round is unlikely to help.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

from .. import artifacts, htmlpage, models
from ..config import RunConfig
from ..reporting import change, describe, paired_metric
from .pipeline import run_all


def round_config(cfg: RunConfig, run_dir: Path, r: int) -> RunConfig:
    """Round r's settings: round r - 1's tuned model samples; the adapter trains on the first base (restart)
    or on that tuned model (continue)."""
    out = copy.deepcopy(cfg)
    out.rounds.n = 1
    if r > 1:
        previous = str(run_dir / f"round-{r - 1}" / "merge" / "model")
        out.model.name = previous
        # restart names the first base outright: the embedded model's name is None, which would mean "the
        # model that samples", i.e. continue
        out.train.base = (cfg.model.name or models.EMBEDDED_NAME) if cfg.rounds.mode == "restart" else previous
        out.generate.seed = cfg.generate.seed + r - 1  # fresh draws from the new model
    return out


def carry_evaluation(run_dir: Path, r: int) -> None:
    """Round r's before-evaluation is round r - 1's tuned one: the same model, prompts and settings."""
    src, dest = run_dir / f"round-{r - 1}" / "evaluate", run_dir / f"round-{r}" / "evaluate"
    if (dest / "base.json").exists() or not (src / "tuned.json").exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "tuned.jsonl", dest / "base.jsonl")
    # the summary last (it marks the stage finished), without the tuned stage's fingerprint: a marker without
    # one is taken as made under the current settings, which it was
    summary = {k: v for k, v in artifacts.read_json(src / "tuned.json").items() if k not in ("fingerprint", "settings")}
    artifacts.write_json(dest / "base.json", summary)


def summary(run_dir: Path, done: int, cfg: RunConfig, stopped: str | None) -> dict:
    first = artifacts.read_jsonl(run_dir / "round-1" / "evaluate" / "base.jsonl")
    rounds, prev = [], first
    for r in range(1, done + 1):
        tuned = artifacts.read_jsonl(run_dir / f"round-{r}" / "evaluate" / "tuned.jsonl")
        sel = artifacts.read_json(run_dir / f"round-{r}" / "select" / "manifest.json")
        rounds.append({"round": r, "accuracy": paired_metric(first, tuned, "accuracy")["after"],
                       "vs_base": paired_metric(first, tuned, "accuracy"), "vs_previous": paired_metric(prev, tuned, "accuracy"),
                       "kept": sel["kept"], "samples": sel["total"], "labelled": sel.get("labelled", True)})
        prev = tuned
    return {"mode": cfg.rounds.mode, "margin": cfg.rounds.margin, "asked": cfg.rounds.n, "done": done,
            "stopped_early": stopped, "base_accuracy": paired_metric(first, first, "accuracy")["before"],
            "rounds": rounds}


def lines(s: dict) -> list[str]:
    out = [f"rounds ({s['mode']}): base accuracy {100 * s['base_accuracy']:.1f}%"]
    for r in s["rounds"]:
        out.append(f"  round {r['round']}: {100 * r['accuracy']:.1f}%; vs base "
                   f"{describe(r['vs_base'], 100, ' points')}; vs the round before {describe(r['vs_previous'], 100, ' points')}"
                   f"; trained on {r['kept']} of {r['samples']} samples")
    if s["stopped_early"]:
        out.append(f"  stopped after round {s['done']} of {s['asked']}: {s['stopped_early']}")
    return out


def render(s: dict) -> str:
    rows = ["| round | accuracy | vs base (95% interval) | vs round before (95% interval) | samples kept |",
            "|---|---|---|---|---|", f"| base | {100 * s['base_accuracy']:.1f}% | | | |"]
    for r in s["rounds"]:
        rows.append(f"| {r['round']} | {100 * r['accuracy']:.1f}% | {change(r['vs_base'], 100)} | "
                    f"{change(r['vs_previous'], 100)} | {r['kept']} of {r['samples']} |")
    how = ("every round trains a fresh adapter on the first base, on the samples the round before's tuned model "
           "wrote (ReST-EM)" if s["mode"] == "restart" else
           "every round trains on the model the round before tuned (iterated fine-tuning)")
    stop = [f"Stopped after round {s['done']} of {s['asked']}: {s['stopped_early']}.", ""] if s["stopped_early"] else []
    labels = ("Selection used the reference answers." if all(r["labelled"] for r in s["rounds"]) else
              "Selection used no labels: the references judged the held-out answers only."
              if not any(r["labelled"] for r in s["rounds"]) else "Some rounds' selection used the reference answers.")
    return "\n".join(["# depthtune rounds", "", f"Mode {s['mode']}: {how}. {labels} Held-out accuracy, paired over "
                      f"the same prompts; each round's own report is in round-R/report.md.", "", *rows, "", *stop])


def run_rounds(run_dir: Path, cfg: RunConfig, log=print, redo: bool = False) -> dict | None:
    """Every round in order; -> {metrics: the last round's, rounds: summary, lines}."""
    run_dir = Path(run_dir)
    metrics, stopped, done = None, None, 0
    for r in range(1, cfg.rounds.n + 1):
        log(f"== round {r} of {cfg.rounds.n} ==")
        if r > 1:
            carry_evaluation(run_dir, r)
        metrics = run_all(run_dir / f"round-{r}", round_config(cfg, run_dir, r), log=log, redo=redo)
        if metrics is None:  # another process of accelerate launch
            return None
        done = r
        if r > 1:
            gain = metrics["deltas"].get("accuracy")
            if gain and gain.get("ci95") and 100 * gain["ci95"][1] < cfg.rounds.margin:
                stopped = (f"round {r}'s gain over round {r - 1} has a 95% interval entirely below {cfg.rounds.margin:g} "
                           f"points ({100 * gain['ci95'][0]:+.1f} to {100 * gain['ci95'][1]:+.1f})")
                log(f"stopping early: {stopped}")
                break
    s = summary(run_dir, done, cfg, stopped)
    artifacts.write_json(run_dir / "rounds.json", s)
    md = render(s)
    artifacts.write_text(run_dir / "rounds.md", md)
    artifacts.write_text(run_dir / "rounds.html", htmlpage.render(md, run_dir, "depthtune rounds"))
    return {"metrics": metrics, "rounds": s, "lines": lines(s)}
