"""`depthtune ablate`: which selection of the model's own samples trains the best adapter?

    prepare -> generate -> score -> evaluate-base        (the run stages; a finished run dir is reused)
      -> for each selector x seed: select exactly K samples -> train a LoRA -> evaluate on held-out
      -> ablate/report.md, report.html, ablate.json, selectors.png

Every selector keeps the same number K of samples (ablate.keep; by default the smallest eligible pool of
the selectors compared), so a difference in held-out accuracy is the data's, not the amount's. Each
selector trains one adapter per seed (ablate.seeds), which also draws the correct and random selectors'
samples. Per held-out prompt, a selector's score is its mean over seeds; intervals are paired bootstraps
over prompts against the untrained model and against the reference selector: correct (rejection
sampling) with labels, majority (self-consistency) without.

--label-free (ablate.label_free): every selector but `correct` selects without reference answers
(select.require_correct off); `correct` stays in as the labelled upper bound. The references then only
judge the held-out answers and the within-prompt AUROC of each label-free signal.

Layout of <run>/ablate/: <selector>-seed<s>/ (select/, train/adapter/, evaluate/tuned.*, result.json:
the done marker; a rerun skips finished cells and resumes an interrupted one). With --executor ray the
cells run as Ray tasks (depthtune.experiments.executor), with the same cell function and results.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

from .. import artifacts, htmlpage, stats
from ..config import RunConfig
from ..errors import DepthtuneError
from ..reporting import interval_bars, per_prompt
from ..selectors import COMPARED, SELECTORS
from ..stages import before, evaluate, pipeline, select, train
from ..stages.report import ranking_power
from . import executor

METRICS = (("accuracy", "accuracy", 100), ("mean_cdm", "mean CDM", 1), ("deep_rate", "deep rate", 100))


def selectors_of(cfg: RunConfig) -> list[str]:
    return list(cfg.ablate.selectors or COMPARED)


def reference_of(cfg: RunConfig, selectors: list[str]) -> str:
    want = "majority" if cfg.ablate.label_free else "correct"
    return want if want in selectors else selectors[0]


def cell_select(cfg: RunConfig, selector: str, seed: int, k: int) -> dataclasses.dataclass:
    """The select settings of one cell: K samples by `selector`; without labels in label-free mode."""
    labels = selector == "correct" or not cfg.ablate.label_free
    return dataclasses.replace(cfg.select, selector=selector, keep=k, seed=seed, threshold=None,
                               require_correct=cfg.select.require_correct and labels)


def selection_size(rows: list[dict], cfg: RunConfig) -> int:
    """K: ablate.keep, else the smallest eligible pool among the selectors compared."""
    if cfg.ablate.keep:
        return cfg.ablate.keep
    pools = {sel: len(select.pool(rows, cell_select(cfg, sel, 0, 1))) for sel in selectors_of(cfg)}
    k = min(pools.values())
    if k < max(1, cfg.select.min_kept):
        small = min(pools, key=pools.get)
        raise DepthtuneError(f"selector {small} has only {k} eligible samples, fewer than select.min_kept = "
                             f"{cfg.select.min_kept}; give the size with --set ablate.keep=N, or sample more "
                             f"(--k, --max-train-prompts)")
    return k


def run_cell(run_dir: Path, cfg: RunConfig, selector: str, seed: int, k: int, rows: list[dict], base, tok,
             log=print) -> dict:
    """Select k samples with one selector, train a LoRA with one seed, evaluate the merged model."""
    cell = run_dir / "ablate" / f"{selector}-seed{seed}"
    if (cell / "result.json").exists():
        return artifacts.read_json(cell / "result.json")
    ccfg = copy.deepcopy(cfg)
    ccfg.select = cell_select(cfg, selector, seed, k)
    ccfg.train = dataclasses.replace(cfg.train, seed=seed, full=False)
    kept, _, line = select.select(rows, ccfg.select)
    if len(kept) < k:
        raise DepthtuneError(f"selector {selector} finds only {len(kept)} eligible samples, fewer than the {k} every "
                             f"selector must keep; set --set ablate.keep={len(kept)} or drop it from ablate.selectors")
    artifacts.write_jsonl(cell / "select" / "selected.jsonl", kept)
    log(f"[ablate {selector}, seed {seed}] training on {line}")
    manifest, model = train.run(cell, ccfg, copy.deepcopy(base), tok)
    tuned = model.merge_and_unload().eval()
    summary = evaluate.evaluate_model(cell, ccfg, "tuned", tuned, tok, log=log,
                                      items=artifacts.read_jsonl(run_dir / "prompts" / "eval.jsonl"))
    result = {"selector": selector, "seed": seed, "examples": len(kept), "train_seconds": manifest["train_seconds"],
              "final_loss": manifest["final_loss"], "summary": summary, "labels": select.uses_labels(ccfg.select, rows),
              "selected_mean_cdm": _mean([r.get("cdm") for r in kept]),
              "selected_correct": sum(bool(r.get("correct")) for r in kept)}
    artifacts.write_json(cell / "result.json", result)
    return result


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def per_prompt_means(rows_by_seed: list[list[dict]], key: str, deep_line: float) -> dict[str, float]:
    """{prompt_id: the metric averaged over seeds}."""
    acc: dict[str, list[float]] = {}
    for rows in rows_by_seed:
        for r in rows:
            v = per_prompt(r, key, deep_line)
            if v is not None:
                acc.setdefault(r["prompt_id"], []).append(v)
    return {p: sum(v) / len(v) for p, v in acc.items()}


def summarise(run_dir: Path, cfg: RunConfig, results: list[dict]) -> dict:
    deep = cfg.evaluate.deep_line
    base_rows = artifacts.read_jsonl(run_dir / "evaluate" / "base.jsonl")
    sels = selectors_of(cfg)
    out = {"keep": results[0]["examples"], "seeds": cfg.ablate.seeds, "held_out": len(base_rows), "selectors": {},
           "label_free": cfg.ablate.label_free}
    base = {key: per_prompt_means([base_rows], key, deep) for key, _, _ in METRICS}
    per_sel = {}
    for sel in sels:
        mine = [r for r in results if r["selector"] == sel]
        rows = [artifacts.read_jsonl(run_dir / "ablate" / f"{sel}-seed{r['seed']}" / "evaluate" / "tuned.jsonl")
                for r in mine]
        per_sel[sel] = {key: per_prompt_means(rows, key, deep) for key, _, _ in METRICS}
        entry = {"seed_accuracy": [r["summary"]["accuracy"] for r in mine], "labels": mine[0].get("labels", True),
                 "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine),
                 "selected_mean_cdm": _mean([r["selected_mean_cdm"] for r in mine]),
                 "selected_correct": sum(r["selected_correct"] for r in mine) / len(mine)}
        for key, _, _ in METRICS:
            vals = per_sel[sel][key]
            common = [p for p in vals if p in base[key]]
            entry[key] = {**stats.mean_ci(list(vals.values())),
                          "vs_untrained": stats.paired_delta([base[key][p] for p in common], [vals[p] for p in common])}
        out["selectors"][sel] = entry
    ref = reference_of(cfg, sels)
    for sel, entry in out["selectors"].items():
        for key, _, _ in METRICS:
            a, b = per_sel[ref][key], per_sel[sel][key]
            common = [p for p in a if p in b]
            entry[key][f"vs_{ref}"] = stats.paired_delta([a[p] for p in common], [b[p] for p in common])
    out["reference"] = ref
    out["untrained"] = {key: stats.mean_ci(list(base[key].values())) for key, _, _ in METRICS}
    out["ranking"] = ranking_power(artifacts.read_jsonl(run_dir / "score" / "scored.jsonl"))
    out["findings"] = findings(out)
    return out


def _ci(d: dict, scale: float) -> str:
    if not d.get("ci95"):
        return "–"
    return f"{d['ci95'][0] * scale:+.1f} to {d['ci95'][1] * scale:+.1f}"


def findings(m: dict) -> list[str]:
    ref, sels, lines = m["reference"], m["selectors"], []
    for sel, e in sels.items():
        if sel == ref:
            continue
        d = e["accuracy"][f"vs_{ref}"]
        if d["ci95"] and d["ci95"][0] > 0:
            verdict = f"{sel} beat {ref}"
        elif d["ci95"] and d["ci95"][1] < 0:
            verdict = f"{ref} beat {sel}"
        else:
            verdict = f"no detectable difference between {ref} and {sel}"
        lines.append(f"{verdict}: accuracy {100 * d['delta']:+.1f} points for {sel} (95% interval {_ci(d, 100)}), "
                     f"paired over {d['n']} held-out prompts, each averaged over {len(m['seeds'])} seeds.")
    for sel, e in sels.items():
        d = e["accuracy"]["vs_untrained"]
        word = ("above" if d["ci95"] and d["ci95"][0] > 0 else "below" if d["ci95"] and d["ci95"][1] < 0
                else "not detectably different from")
        how = "" if not m["label_free"] else " (labelled: the upper bound)" if e["labels"] else " (no labels)"
        lines.append(f"{sel}{how}: {100 * e['accuracy']['mean']:.1f}% held-out accuracy, {word} the untrained model "
                     f"({100 * d['delta']:+.1f} points, {_ci(d, 100)}); seeds gave "
                     + ", ".join(f"{100 * a:.1f}%" for a in e["seed_accuracy"]) + ".")
    return lines


def ranking_table(ranking: dict) -> list[str]:
    """Within-prompt AUROC of each signal for correctness, on the training samples."""
    names = {"cdm": "CDM", "mean_logprob": "mean log-prob", "agreement": "majority agreement",
             "entropy_collapse": "entropy collapse", "attention_sparsification": "attention sparsification",
             "basin_resistance": "basin resistance"}
    rows = ["| signal | within-prompt AUROC (95% CI) | prompts | pairs | pooled AUROC |", "|---|---|---|---|---|"]
    for key, label in names.items():
        if key not in ranking:
            continue
        w = ranking[key]["within_prompt"]
        ci = f" ({w['ci95'][0]:.2f}-{w['ci95'][1]:.2f})" if w.get("ci95") else ""
        value = f"{w['value']:.2f}{ci}" if w["value"] is not None else "n/a"
        rows.append(f"| {label} | {value} | {w['prompts']} | {w['pairs']} | {ranking[key]['pooled']:.2f} |")
    return rows if len(rows) > 2 else []


def render(m: dict) -> str:
    ref = m["reference"]
    head = ["| selector | labels | accuracy % (95% CI) | vs untrained | vs " + ref + " | mean CDM | deep rate % | "
            "seed spread (accuracy %) | selected: mean CDM, correct |", "|---|---|---|---|---|---|---|---|---|"]
    u = m["untrained"]
    num = lambda d, scale, pattern: "n/a" if d.get("mean") is None else pattern.format(scale * d["mean"])  # noqa: E731
    head.append(f"| (untrained model) | | {100 * u['accuracy']['mean']:.1f} ({_ci(u['accuracy'], 100).replace('+', '')}) "
                f"| | | {num(u['mean_cdm'], 1, '{:.1f}')} | {num(u['deep_rate'], 100, '{:.1f}')} | | |")
    for sel, e in m["selectors"].items():
        a = e["accuracy"]
        spread = max(e["seed_accuracy"]) - min(e["seed_accuracy"])
        picked = "n/a" if e["selected_mean_cdm"] is None else f"{e['selected_mean_cdm']:.1f}"
        head.append(f"| {sel} | {'yes' if e['labels'] else 'no'} | {100 * a['mean']:.1f} "
                    f"({_ci(a, 100).replace('+', '')}) | "
                    f"{100 * a['vs_untrained']['delta']:+.1f} ({_ci(a['vs_untrained'], 100)}) | "
                    + ("" if sel == ref else f"{100 * a[f'vs_{ref}']['delta']:+.1f} ({_ci(a[f'vs_{ref}'], 100)})")
                    + f" | {num(e['mean_cdm'], 1, '{:.1f}')} | {num(e['deep_rate'], 100, '{:.1f}')} | "
                    f"{100 * spread:.1f} | {picked}, {e['selected_correct']:.0f}/{m['keep']} |")
    mode = ("Label-free: every selector but `correct` chose its samples without reference answers; `correct` "
            "(rejection sampling) is the labelled upper bound. References judged the held-out answers only."
            if m["label_free"] else "Every selector but `random` kept correct samples only (references used).")
    ranking = ranking_table(m.get("ranking") or {})
    return "\n".join(["# depthtune ablate: which selection trains the best adapter?", "", mode, "",
                      f"Each selector kept the same {m['keep']} samples' worth of training data and trained one LoRA "
                      f"per seed ({', '.join(map(str, m['seeds']))}); {m['held_out']} held-out prompts, greedy "
                      f"answers. Intervals: paired bootstrap over prompts (per prompt, the mean over seeds).", "",
                      *head, "", "## Findings", "", *[f"- {f}" for f in m["findings"]], "",
                      *(["## How well each signal ranks one prompt's samples (correct above wrong)", "", *ranking, ""]
                        if ranking else []),
                      "![Held-out accuracy per selector](selectors.png)", ""])


def plot(folder: Path, m: dict) -> None:
    names = list(m["selectors"])
    interval_bars(folder / "selectors.png", [n.replace("_", "\n") for n in names],
                  [100 * m["selectors"][n]["accuracy"]["mean"] for n in names],
                  [m["selectors"][n]["accuracy"]["ci95"] for n in names], ylabel="held-out accuracy (%)",
                  title=f"{m['keep']} samples per selector, mean of {len(m['seeds'])} seeds",
                  baseline=100 * m["untrained"]["accuracy"]["mean"])


def run_ablate(run_dir: Path, cfg: RunConfig, log=print, executor: str = "local", address: str | None = None,
               redo: bool = False) -> dict:
    """The run stages up to select (stale ones refused, or redone with redo), then every (selector, seed) cell
    not finished yet, then the report."""
    run_dir = Path(run_dir)
    bad = [s for s in selectors_of(cfg) if s not in SELECTORS]
    if bad:
        raise DepthtuneError(f"unknown selectors {bad}")
    if cfg.score.cdm is None and any(SELECTORS[s].cdm for s in selectors_of(cfg)):
        cfg = copy.deepcopy(cfg)
        cfg.score.cdm = True  # the selectors compared rank by CDM, whatever the run's own selector needs
    session = pipeline.Session(cfg, log)
    try:
        pipeline.run_stages(run_dir, cfg, session, before("select"), redo=redo)
        rows = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
        k = selection_size(rows, cfg)
        cells = [(sel, seed) for sel in selectors_of(cfg) for seed in cfg.ablate.seeds]
        if executor == "ray":
            session.close()
            results = _on_ray(run_dir, cfg, cells, k, log, address)
        else:
            base, tok = session.base()
            results = [run_cell(run_dir, cfg, sel, seed, k, rows, base, tok, log) for sel, seed in cells]
    finally:
        session.close()
    m = summarise(run_dir, cfg, results)
    folder = run_dir / "ablate"
    plot(folder, m)
    md = render(m)
    artifacts.write_json(folder / "ablate.json", m)
    artifacts.write_text(folder / "report.md", md)
    artifacts.write_text(folder / "report.html", htmlpage.render(md, folder, "depthtune ablate"))
    return m


# -- on Ray (--executor ray; see experiments.executor) --------------------------------------------------


def cell_task(run_dir: str, cfg: RunConfig, selector: str, seed: int, k: int) -> dict:
    """One (selector, seed) cell as a Ray task."""
    folder = Path(run_dir)
    cell_dir = folder / "ablate" / f"{selector}-seed{seed}"
    try:
        with artifacts.DirLock(cell_dir, lambda *a: None, "cell directory"):
            artifacts.write_text(cell_dir / "worker.pid", str(os.getpid()))
            session = pipeline.Session(cfg, lambda *a: None)
            rows = artifacts.read_jsonl(folder / "score" / "scored.jsonl")
            return run_cell(folder, cfg, selector, seed, k, rows, *session.base(), log=lambda *a: None)
    except DepthtuneError as e:
        return {"error": str(e), "selector": selector, "seed": seed}


def _on_ray(run_dir: Path, cfg: RunConfig, cells: list[tuple[str, int]], k: int, log, address: str | None) -> list:
    """Every (selector, seed) cell as a Ray task; -> their results in `cells` order."""
    with executor.cluster(address, log) as ray:
        executor.check_shared(ray, run_dir)
        task = executor.remote(ray, cell_task, cfg.ablate.resources)
        refs = {f"{sel}-seed{seed}": task.remote(str(run_dir), cfg, sel, seed, k) for sel, seed in cells}
        results = executor.wait_all(ray, refs, log)
    failed = {n: r["error"] for n, r in results.items() if r.get("error")}
    if failed:
        name, error = next(iter(failed.items()))
        raise DepthtuneError(f"ablation cell {name} failed: {error}; the others are kept, run the same command again")
    return [results[f"{sel}-seed{seed}"] for sel, seed in cells]
