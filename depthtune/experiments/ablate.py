"""`depthtune ablate`: does CDM select better training data than the filters everyone already uses?

    prepare -> generate -> score -> evaluate[base]        (the run stages; a finished run dir is reused)
      -> for each selector x seed: select exactly K samples -> train a LoRA -> evaluate on held-out
      -> ablate/report.md, report.html, ablate.json, selectors.png

Every selector keeps the same number K of samples (ablate.keep; by default K = what the cdm selector
keeps at its threshold, the default run's selection), so a difference in held-out accuracy is the
data's, not the amount's. Each selector trains one adapter per seed (ablate.seeds), which also draws
the correct and random selectors' samples. Per held-out prompt, a selector's score is its mean over
seeds; intervals are paired bootstraps over prompts against the untrained model and against cdm.

Layout of <run>/ablate/: <selector>-seed<s>/ (select/, train/adapter/, evaluate/tuned.*, result.json:
the done marker; a rerun skips finished cells and resumes an interrupted one).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from .. import artifacts, htmlpage, stats
from ..config import RunConfig
from ..errors import DepthtuneError
from ..stages import evaluate, generate, pipeline, score, select, train
from ..stages.report import per_prompt

METRICS = (("accuracy", "accuracy", 100), ("mean_cdm", "mean CDM", 1), ("deep_rate", "deep rate", 100))


def selection_size(rows: list[dict], cfg: RunConfig) -> int:
    """K: ablate.keep, else what the cdm selector keeps at its threshold."""
    if cfg.ablate.keep:
        return cfg.ablate.keep
    kept, _ = select.select(rows, dataclasses.replace(cfg.select, selector="cdm", keep=None))
    if len(kept) < max(1, cfg.select.min_kept):
        raise DepthtuneError(f"the cdm selector keeps {len(kept)} samples at threshold {cfg.select.threshold:g}, "
                             f"fewer than select.min_kept = {cfg.select.min_kept}; give the size with "
                             f"--set ablate.keep=N (or a lower --threshold)")
    return len(kept)


def run_cell(run_dir: Path, cfg: RunConfig, selector: str, seed: int, k: int, rows: list[dict], base, tok,
             log=print) -> dict:
    """Select k samples with one selector, train a LoRA with one seed, evaluate the merged model."""
    cell = run_dir / "ablate" / f"{selector}-seed{seed}"
    if (cell / "result.json").exists():
        return artifacts.read_json(cell / "result.json")
    ccfg = copy.deepcopy(cfg)
    ccfg.select = dataclasses.replace(cfg.select, selector=selector, keep=k, seed=seed)
    ccfg.train = dataclasses.replace(cfg.train, seed=seed, full=False)
    kept, _ = select.select(rows, ccfg.select)
    if len(kept) < k:
        raise DepthtuneError(f"selector {selector} finds only {len(kept)} eligible samples, fewer than the {k} every "
                             f"selector must keep; set --set ablate.keep={len(kept)} or drop it from ablate.selectors")
    artifacts.write_jsonl(cell / "select" / "selected.jsonl", kept)
    log(f"[ablate {selector}, seed {seed}] training on {len(kept)} samples")
    manifest, model = train.run(cell, ccfg, copy.deepcopy(base), tok)
    tuned = model.merge_and_unload().eval()
    summary = evaluate.evaluate_model(cell, ccfg, "tuned", tuned, tok, log=log,
                                      items=artifacts.read_jsonl(run_dir / "prompts" / "eval.jsonl"))
    result = {"selector": selector, "seed": seed, "examples": len(kept), "train_seconds": manifest["train_seconds"],
              "final_loss": manifest["final_loss"], "summary": summary,
              "selected_mean_cdm": round(sum(r.get("cdm") or 0 for r in kept) / len(kept), 3),
              "selected_correct": sum(bool(r.get("correct")) for r in kept)}
    artifacts.write_json(cell / "result.json", result)
    return result


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
    out = {"keep": results[0]["examples"], "seeds": cfg.ablate.seeds, "held_out": len(base_rows), "selectors": {}}
    base = {key: per_prompt_means([base_rows], key, deep) for key, _, _ in METRICS}
    per_sel = {}
    for sel in cfg.ablate.selectors:
        mine = [r for r in results if r["selector"] == sel]
        rows = [artifacts.read_jsonl(run_dir / "ablate" / f"{sel}-seed{r['seed']}" / "evaluate" / "tuned.jsonl")
                for r in mine]
        per_sel[sel] = {key: per_prompt_means(rows, key, deep) for key, _, _ in METRICS}
        entry = {"seed_accuracy": [r["summary"]["accuracy"] for r in mine],
                 "train_seconds": sum(r["train_seconds"] for r in mine) / len(mine),
                 "selected_mean_cdm": sum(r["selected_mean_cdm"] for r in mine) / len(mine),
                 "selected_correct": sum(r["selected_correct"] for r in mine) / len(mine)}
        for key, _, _ in METRICS:
            vals = per_sel[sel][key]
            common = [p for p in vals if p in base[key]]
            entry[key] = {**stats.mean_ci(list(vals.values())),
                          "vs_untrained": stats.paired_delta([base[key][p] for p in common], [vals[p] for p in common])}
        out["selectors"][sel] = entry
    ref = "cdm" if "cdm" in per_sel else cfg.ablate.selectors[0]
    for sel, entry in out["selectors"].items():
        for key, _, _ in METRICS:
            a, b = per_sel[ref][key], per_sel[sel][key]
            common = [p for p in a if p in b]
            entry[key][f"vs_{ref}"] = stats.paired_delta([a[p] for p in common], [b[p] for p in common])
    out["reference"] = ref
    out["untrained"] = {key: stats.mean_ci(list(base[key].values())) for key, _, _ in METRICS}
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
        lines.append(f"{sel}: {100 * e['accuracy']['mean']:.1f}% held-out accuracy, {word} the untrained model "
                     f"({100 * d['delta']:+.1f} points, {_ci(d, 100)}); seeds gave "
                     + ", ".join(f"{100 * a:.1f}%" for a in e["seed_accuracy"]) + ".")
    return lines


def render(m: dict) -> str:
    ref = m["reference"]
    head = ["| selector | accuracy % (95% CI) | vs untrained | vs " + ref + " | mean CDM | deep rate % | "
            "seed spread (accuracy %) | selected: mean CDM, correct |", "|---|---|---|---|---|---|---|---|"]
    u = m["untrained"]
    head.append(f"| (untrained model) | {100 * u['accuracy']['mean']:.1f} ({_ci(u['accuracy'], 100).replace('+', '')}) "
                f"| | | {u['mean_cdm']['mean']:.1f} | {100 * u['deep_rate']['mean']:.1f} | | |")
    for sel, e in m["selectors"].items():
        a = e["accuracy"]
        spread = max(e["seed_accuracy"]) - min(e["seed_accuracy"])
        head.append(f"| {sel} | {100 * a['mean']:.1f} ({_ci(a, 100).replace('+', '')}) | "
                    f"{100 * a['vs_untrained']['delta']:+.1f} ({_ci(a['vs_untrained'], 100)}) | "
                    + ("" if sel == ref else f"{100 * a[f'vs_{ref}']['delta']:+.1f} ({_ci(a[f'vs_{ref}'], 100)})")
                    + f" | {e['mean_cdm']['mean']:.1f} | {100 * e['deep_rate']['mean']:.1f} | {100 * spread:.1f} | "
                    f"{e['selected_mean_cdm']:.1f}, {e['selected_correct']:.0f}/{m['keep']} |")
    return "\n".join(["# depthtune ablate: which selection trains the best adapter?", "",
                      f"Each selector kept the same {m['keep']} samples' worth of training data and trained one LoRA "
                      f"per seed ({', '.join(map(str, m['seeds']))}); {m['held_out']} held-out prompts, greedy "
                      f"answers. Intervals: paired bootstrap over prompts (per prompt, the mean over seeds).", "",
                      *head, "", "## Findings", "", *[f"- {f}" for f in m["findings"]], "",
                      "![Held-out accuracy per selector](selectors.png)", ""])


def plot(folder: Path, m: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..stages.report import save

    names = list(m["selectors"])
    acc = [100 * m["selectors"][n]["accuracy"]["mean"] for n in names]
    ci = [m["selectors"][n]["accuracy"]["ci95"] or [a / 100] * 2 for n, a in zip(names, acc)]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(range(len(names)), acc, yerr=[[a - 100 * c[0] for a, c in zip(acc, ci)],
                                         [100 * c[1] - a for a, c in zip(acc, ci)]], capsize=4, color="tab:blue")
    ax.axhline(100 * m["untrained"]["accuracy"]["mean"], color="black", linestyle="--", linewidth=1, label="untrained")
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set(ylabel="held-out accuracy (%)", title=f"{m['keep']} samples per selector, mean of {len(m['seeds'])} seeds")
    ax.legend()
    save(fig, folder / "selectors.png")


def run_ablate(run_dir: Path, cfg: RunConfig, log=print) -> dict:
    run_dir = Path(run_dir)
    session = pipeline.Session(cfg, log)
    try:
        step = pipeline.step
        step("prepare", False, lambda: pipeline.prepare(run_dir, cfg), log)
        step("generate", artifacts.is_done(run_dir / "generate"),
             lambda: generate.run(run_dir, cfg, session.sampler()), log)
        step("score", artifacts.is_done(run_dir / "score"), lambda: score.run(run_dir, cfg, *session.base()), log)
        step("evaluate-base", (run_dir / "evaluate" / "base.json").exists(),
             lambda: evaluate.evaluate_model(run_dir, cfg, "base", *session.base(), log=log), log)
        rows = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
        k = selection_size(rows, cfg)
        base, tok = session.base()
        results = [run_cell(run_dir, cfg, sel, seed, k, rows, base, tok, log)
                   for sel in cfg.ablate.selectors for seed in cfg.ablate.seeds]
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
