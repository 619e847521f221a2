"""Stage 7, report: metrics.json, report.md, report.html and the plots, from the run's own files.

Reads  the manifests of generate, score, select, train, evaluate (and benchmark, after --lm-eval);
       score/scored.jsonl;
       evaluate/{base,tuned}.jsonl
Writes <run>/metrics.json, report.md, report.html (plots inlined), cdm.png, suites.png

Every before/after delta carries a paired bootstrap 95% interval over the held-out prompts
(depthtune.stats), and a change is called an improvement or a loss only when its interval excludes
zero; otherwise the report says "no detectable change" and how wide the interval is.
"""
from __future__ import annotations

from pathlib import Path

from .. import artifacts, htmlpage, stats
from ..cdm import PARTS
from ..degenerate import looping
from ..models import EMBEDDED_NAME
from ..reporting import (
    PERCENT,
    ROWS,
    answer_cell,
    change,
    describe,
    fmt,
    machine,
    paired,
    paired_metric,
    pairs,
    prompt_of,
    save,
    side_by_side,
)
from . import benchmark, evaluate

HIGHER_IS_BETTER = {"mean_cdm": True, "deep_rate": True, "accuracy": True, "ms_per_token": False,
                    "mean_completion_tokens": None}
SIGNALS = ("cdm", "mean_logprob", "agreement") + PARTS  # what can rank samples: CDM, the free baselines, each part
# Speed on the shared 2-core CPU: two evaluations of one and the same model differed by up to 13 %
# (22.0 vs 19.4 ms per token), so a speed change is called only beyond this and its interval.
NOISE = 0.15


def deltas(before: list[dict], after: list[dict], deep_line: float) -> dict:
    """Paired before/after change of every per-prompt metric, with its bootstrap 95% interval."""
    out = {}
    for key in ("accuracy", "mean_cdm", "deep_rate", "mean_completion_tokens"):
        d = paired_metric(before, after, key, deep_line)
        if d["n"]:
            out[key] = d
    timed = [(x, y) for x, y in pairs(before, after) if x.get("gen_seconds") and y.get("gen_seconds")]
    if timed:  # ms per token as total time over total tokens, resampled by prompt
        col = lambda side, f: [f(p[side]) for p in timed]  # noqa: E731
        out["ms_per_token"] = stats.paired_ratio_delta(
            col(0, lambda r: 1000 * r["gen_seconds"]), col(0, lambda r: max(1, len(r["completion_ids"]))),
            col(1, lambda r: 1000 * r["gen_seconds"]), col(1, lambda r: max(1, len(r["completion_ids"]))))
    return out


def ranking_power(scored: list[dict]) -> dict:
    """How well each signal ranks correct above wrong samples: pooled over all samples, and within
    prompt (pairs of one prompt's samples only), for CDM, the mean token log-prob, majority agreement
    (self-consistency) and each CDM part. Without labels it is empty: nothing to rank against."""
    judged = [r for r in scored if r.get("correct") is not None]
    out = {}
    for signal in SIGNALS:
        rows = [r for r in judged if r.get(signal) is not None]
        if not rows:
            continue
        scores, labels = [r[signal] for r in rows], [r["correct"] for r in rows]
        pooled = stats.auroc(scores, labels)
        if pooled is None:  # every sample right, or every one wrong: nothing to rank
            continue
        out[signal] = {"pooled": round(pooled, 4),
                       "within_prompt": stats.within_prompt_auroc(scores, labels, [r["prompt_id"] for r in rows])}
    return out


def token_limit(rows: list[dict], limit: int) -> dict:
    """Answers cut off at the limit; `looping` of them go round in circles, which no larger limit ends."""
    hit = sum(1 for r in rows if not r.get("finished", True))
    loops = sum(1 for r in rows if looping(r))
    return {"hit": hit, "total": len(rows), "share": round(hit / max(1, len(rows)), 4), "max_new_tokens": limit,
            "looping": loops, "still_going_share": round((hit - loops) / max(1, len(rows)), 4)}


def template_used(cfg: dict, gen: dict) -> str:
    """'chat', 'raw', or 'chat (auto)' when auto chose it (the generate manifest records what ran)."""
    asked, used = cfg["data"].get("template", "auto"), gen.get("template")
    return asked if not used or used == asked else f"{used} ({asked})"


def by_suite(rows: list[dict]) -> dict:
    out: dict[str, list] = {}
    for r in rows:
        if r.get("correct") is not None:
            out.setdefault(r.get("suite") or "user", []).append(r["correct"])
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(out.items())}


def at_line(summary: dict, rows: list[dict], deep_line: float) -> dict:
    """The summary with its deep rate recounted at the report's line: base and tuned may have been
    evaluated under different evaluate.deep_line settings (a resumed run), and must share one line."""
    if summary.get("deep_rate") is None or not rows or any(r.get("cdm") is None for r in rows):
        return summary
    return {**summary, "deep_rate": evaluate.deep_rate(rows, deep_line)}


def collect(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    ev = artifacts.read_manifest(run_dir / "evaluate", "evaluate")
    sel = artifacts.read_manifest(run_dir / "select", "select")
    tr = artifacts.read_manifest(run_dir / "train", "train")
    gen = artifacts.read_manifest(run_dir / "generate", "generate")
    sc = artifacts.read_manifest(run_dir / "score", "score")
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    base_rows = artifacts.read_jsonl(run_dir / "evaluate" / "base.jsonl")
    tuned_rows = artifacts.read_jsonl(run_dir / "evaluate" / "tuned.jsonl")
    deep_line = ev["config"]["evaluate"]["deep_line"]
    power = ranking_power(scored)
    judged = [r for r in scored if r.get("correct") is not None]
    cfg = ev["config"]
    return {
        "model": (tr["base_model"] if tr["base_model"] not in (None, EMBEDDED_NAME)  # a restarting round names it
                  else "embedded SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"),
        "machine": machine(), "backend": gen.get("backend", "local"), "template": template_used(cfg, gen),
        "before": at_line(ev["base"], base_rows, deep_line), "after": at_line(ev["tuned"], tuned_rows, deep_line),
        "deltas": deltas(base_rows, tuned_rows, deep_line),
        "selection": {"total": sel["total"], "kept": sel["kept"], "threshold": sel["threshold"],
                      "selector": sel.get("selector", "cdm"), "prompts_with_kept": sel["prompts_with_kept"],
                      "degenerate_left_out": sel.get("degenerate_left_out", 0), "line": sel.get("line", ""),
                      "labelled": sel.get("labelled", bool(judged)), "eligible": sel.get("eligible"),
                      "correct_only": bool(judged) and sel["config"]["select"]["require_correct"]},
        "leaked": artifacts.read_json(run_dir / "prompts" / "manifest.json").get("leaked", []),
        "examples": side_by_side(base_rows, tuned_rows, ("base", "tuned")),
        "extremes": extremes(artifacts.read_jsonl(run_dir / "select" / "selected.jsonl")),
        "method": tr["method"], "trainable_params": tr["trainable_params"], "base_params": tr["base_params"],
        "train_seconds": tr["train_seconds"], "train_examples": tr["examples"], "final_loss": tr["final_loss"],
        "cdm_auroc": power.get("cdm", {}).get("pooled"), "cdm_auroc_samples": len(judged), "auroc": power,
        "degenerate": sc.get("degenerate"),
        "token_limit": {"samples": token_limit(scored, cfg["generate"]["max_new_tokens"]),
                        "base": token_limit(base_rows, cfg["evaluate"]["max_new_tokens"]),
                        "tuned": token_limit(tuned_rows, cfg["evaluate"]["max_new_tokens"])},
        "deep_line": deep_line, "paired": paired(base_rows, tuned_rows),
        "accuracy_by_suite": {"before": by_suite(base_rows), "after": by_suite(tuned_rows)},
        "lm_eval": benchmark.summary(run_dir),  # None unless --lm-eval ran
    }


def verdicts(m: dict) -> list[str]:
    lines, b, a, pr, dl = [], m["before"], m["after"], m["paired"], m["deltas"]
    units = {"accuracy": (100, " points"), "deep_rate": (100, " points"), "mean_cdm": (1, " CDM"),
             "mean_completion_tokens": (1, " tokens"), "ms_per_token": (1, " ms")}
    for key, label, pattern in ROWS:
        if key not in dl:
            continue
        label = label.format(line=m["deep_line"])
        change = f"{fmt(b.get(key), pattern)} -> {fmt(a.get(key), pattern)}"
        d, (scale, unit) = dl[key], units[key]
        if key == "ms_per_token" and abs(d["delta"]) <= NOISE * max(abs(d["before"]), 1e-9):
            lines.append(f"- {label}: about the same ({change}; within the {NOISE:.0%} run-to-run noise of this machine).")
            continue
        note = ""
        if key == "accuracy":
            note = f"; {pr['fixed']} prompts fixed, {pr['broken']} broken, exact McNemar p = {pr['accuracy_p']:.2f}"
        lines.append(f"- {label} ({change}): {describe(d, scale, unit, HIGHER_IS_BETTER[key])}{note}, "
                     f"n = {d['n']} prompts.")
    if "peak_memory_mb" in b:
        lines.append(f"- Peak memory: {fmt(b['peak_memory_mb'], '{:.0f}')} -> {fmt(a['peak_memory_mb'], '{:.0f}')} "
                     f"MB (one measurement each; a merged adapter does not change the architecture).")
    acc, cdm = dl.get("accuracy"), dl.get("mean_cdm")
    if cdm and acc and cdm["ci95"] and cdm["ci95"][0] > 0 and acc["ci95"] and acc["ci95"][0] <= 0:
        lines.append("- Depth rose without a detectable change in accuracy: the adapter made the model more "
                     "certain and more stable, which is what CDM measures, more than it made answers right.")
    return lines + ranking_lines(m) + warnings(m)


def ranking_lines(m: dict) -> list[str]:
    au = m["auroc"]
    if not au:
        return ["- Ranking correct above wrong samples: not measurable here (no reference answers, or all samples "
                "right or all wrong)."]

    def within(sig):
        w = au[sig]["within_prompt"]
        if w["value"] is None:
            return "n/a (no prompt had both a right and a wrong sample)"
        ci = f" (95% interval {w['ci95'][0]:.2f}-{w['ci95'][1]:.2f})" if w["ci95"] else ""
        return f"{w['value']:.2f}{ci} over {w['pairs']} pairs in {w['prompts']} prompts"

    lines = []
    if "cdm" in au:
        lines.append(f"- Ranking correct above wrong samples (AUROC, 0.5 = chance): CDM {au['cdm']['pooled']:.2f} "
                     f"pooled over {m['cdm_auroc_samples']} samples, {within('cdm')} within prompt.")
    else:
        lines.append("- CDM was not computed: the selector does not rank by it (`--set score.cdm=true` computes it "
                     "and its ranking power).")
    names = {"mean_logprob": "The mean token log-prob (no extra pass)", "agreement": "Agreement with the "
             "prompt's majority answer (self-consistency)"}
    for sig, name in names.items():
        if sig in au:
            lines.append(f"- {name}, ranking correct above wrong samples (AUROC, 0.5 = chance): "
                         f"{au[sig]['pooled']:.2f} pooled, {within(sig)} within prompt.")
    parts = [f"{p.replace('_', ' ')} {au[p]['within_prompt']['value']:.2f}" for p in PARTS
             if p in au and au[p]["within_prompt"]["value"] is not None]
    if parts:
        lines.append("- Each CDM part alone, within prompt: " + ", ".join(parts) + ".")
    return lines


def warnings(m: dict) -> list[str]:
    out, s, tl = [], m["selection"], m["token_limit"]
    if m.get("leaked"):
        out.append(f"- **Leakage**: {len(m['leaked'])} held-out prompts are also training prompts; their figures "
                   f"measure memory, not generalisation.")
    if s["kept"] < 50:
        out.append(f"- **Small training set**: the adapter learned from {s['kept']} examples; effects this small a "
                   f"set can teach are hard to tell from noise.")
    for which, what, key in (("samples", "generated samples", "generate"), ("base", "held-out base answers",
                                                                              "evaluate"),
                             ("tuned", "held-out tuned answers", "evaluate")):
        t = tl[which]
        going = t.get("still_going_share", t["share"])  # a metrics.json written before loops were told apart
        if t["total"] and going >= 0.1:
            out.append(f"- **Cut-off answers**: {t['hit']} of {t['total']} {what} ({t['share']:.0%}) hit the "
                       f"{t['max_new_tokens']}-token limit and were judged unfinished, {t['hit'] - t.get('looping', 0)} "
                       f"of them not looping; raise `--set {key}.max_new_tokens=...`.")
        elif t["total"] and t["share"] >= 0.1:
            out.append(f"- Cut-off answers: {t['hit']} of {t['total']} {what} ({t['share']:.0%}) hit the "
                       f"{t['max_new_tokens']}-token limit, {t['looping']} of them looping (repeating their own "
                       f"phrases), which a larger limit would not end; judged unfinished.")
    dg = m.get("degenerate") or {}
    if dg.get("any"):
        out.append(f"- Degenerate samples: {dg['any']} of {s['total']} (repetition {dg['repetition']}, unfinished "
                   f"{dg['unfinished']}, prompt echo {dg['echo']}); {s['degenerate_left_out']} left out of selection.")
    return out


def summary_line(m: dict) -> str:
    """The line the command line prints under the table."""
    s, au = m["selection"], m["auroc"].get("cdm")
    within = (au or {}).get("within_prompt", {}).get("value")
    auroc = (f"; CDM AUROC {au['pooled']:.2f} pooled, {within:.2f} within prompt" if au and within is not None
             else f"; CDM AUROC {au['pooled']:.2f} pooled" if au else "")
    labels = "" if s["labelled"] else "; selected without labels"
    return (f"kept {s['kept']}/{s['total']} samples ({s['line'] or s['selector']}){labels}; "
            f"{m['trainable_params']:,} trainable params; trained {m['train_seconds']:.0f} s{auroc}")


def extremes(selected: list[dict], most: int = 2) -> list[str]:
    """The deepest and shallowest selected samples by CDM, with their scores: what the selector picked."""
    scored = sorted((r for r in selected if r.get("cdm") is not None), key=lambda r: -r["cdm"])
    if len(scored) < 2:
        return []
    picks = [("deepest", r) for r in scored[:most]] + [("shallowest", r) for r in scored[-most:][::-1]]
    lines = ["| | prompt | sample | CDM | mean log-prob | correct |", "|---|---|---|---|---|---|"]
    for kind, r in picks:
        lp = "n/a" if r.get("mean_logprob") is None else f"{r['mean_logprob']:.2f}"
        lines.append(f"| {kind} | {answer_cell(prompt_of(r))} | {answer_cell(r['completion'])} | {r['cdm']:.1f} | {lp} | "
                     f"{'n/a' if r.get('correct') is None else 'yes' if r['correct'] else 'no'} |")
    return lines


def render(m: dict) -> str:
    b, a = m["before"], m["after"]
    table = ["| metric | before | after | change (95% interval) |", "|---|---|---|---|"]
    for key, label, pattern in ROWS:
        if b.get(key) is None and a.get(key) is None:
            continue
        table.append(f"| {label.format(line=m['deep_line'])} | {fmt(b.get(key), pattern)} | {fmt(a.get(key), pattern)} "
                     f"| {change(m['deltas'].get(key), 100 if key in PERCENT else 1)} |")
    s = m["selection"]
    share = m["trainable_params"] / max(1, m["base_params"])
    labels = ("Selection used the reference answers (correct samples only)." if s["labelled"] else
              "**Selection used no labels**: no reference answer decided which samples were kept"
              + (" (the references judged the held-out answers only)." if m["auroc"] or b.get("accuracy") is not None
                 else "."))
    return "\n".join([
        "# depthtune report", "",
        f"Model: {m['model']}. Machine: {m['machine']}. Sampling backend: {m['backend']}. "
        f"Prompt template: {m['template']}.", "",
        f"Selection: kept {s['kept']} of {s['total']} samples: {s['line'] or s['selector']}; from "
        f"{s['prompts_with_kept']} prompts. {labels}",
        f"Training: {m['method']}, {m['trainable_params']:,} trainable of {m['base_params']:,} parameters "
        f"({share:.2%}), {m['train_examples']} examples, {m['train_seconds']:.0f} s, final loss {m['final_loss']:.3f}.", "",
        f"Held-out prompts: {b['samples']} (never trained on), greedy answers. Changes are paired over these prompts; "
        f"the interval is a bootstrap over prompts.", "",
        *table, "", "## What changed", "", *verdicts(m), "", *suite_table(m),
        *(["## Answers before and after", "", "A few held-out prompts the tuned model now gets right, gets wrong, and "
           "answers differently but no better:", "", *m["examples"], ""] if m.get("examples") else []),
        *(["## What was selected", "", "The deepest and the shallowest of the samples the adapter trained on:", "",
           *m["extremes"], ""] if m.get("extremes") else []),
        *(benchmark.render(m["lm_eval"]) if m.get("lm_eval") else []),
        *(["![CDM before and after](cdm.png)", ""] if b.get("mean_cdm") is not None else []),
        "![Accuracy by suite](suites.png)", "",
    ])


def suite_table(m: dict) -> list[str]:
    before, after = m["accuracy_by_suite"]["before"], m["accuracy_by_suite"]["after"]
    if not before:
        return []
    rows = [f"| {k} | {before[k]:.0%} | {after.get(k, 0):.0%} |" for k in before]
    return ["## Accuracy by suite", "", "| suite | before | after |", "|---|---|---|", *rows, ""]


def plot(run_dir: Path, m: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir, deep_line = Path(run_dir), m["deep_line"]
    scores = {w: [r["cdm"] for r in artifacts.read_jsonl(run_dir / "evaluate" / f"{w}.jsonl") if r.get("cdm") is not None]
              for w in ("base", "tuned")}
    if scores["base"] or scores["tuned"]:  # held-out answers scored with CDM (evaluate.cdm)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        every = scores["base"] + scores["tuned"] + [deep_line]
        lo, hi = max(0.0, min(every) - 5), min(100.0, max(every) + 5)
        bins = [lo + i * (hi - lo) / 30 for i in range(31)]
        for which, colour in (("base", "tab:gray"), ("tuned", "tab:blue")):
            ax.hist(scores[which], bins=bins, alpha=0.6, color=colour,
                    label=f"{'before' if which == 'base' else 'after'} (n={len(scores[which])})")
        ax.axvline(deep_line, color="black", linestyle="--", linewidth=1, label=f"deep line {deep_line:g}")
        ax.set(xlabel="CDM on held-out prompts", ylabel="samples")
        ax.legend()
        save(fig, run_dir / "cdm.png")
    before, after = m["accuracy_by_suite"]["before"], m["accuracy_by_suite"]["after"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(before) or ["(no references)"]
    ax.bar([i - 0.2 for i in range(len(names))], [100 * before.get(n, 0) for n in names], 0.4, label="before",
           color="tab:gray")
    ax.bar([i + 0.2 for i in range(len(names))], [100 * after.get(n, 0) for n in names], 0.4, label="after",
           color="tab:blue")
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel="held-out accuracy (%)", title="Accuracy by suite")
    ax.legend()
    save(fig, run_dir / "suites.png")


def run(run_dir: Path) -> dict:
    m = collect(run_dir)
    m["summary_line"] = summary_line(m)
    plot(run_dir, m)
    md = render(m)
    artifacts.write_text(Path(run_dir) / "report.md", md)
    artifacts.write_text(Path(run_dir) / "report.html", htmlpage.render(md, Path(run_dir), "depthtune report"))
    artifacts.write_json(Path(run_dir) / "metrics.json", m)
    return m
