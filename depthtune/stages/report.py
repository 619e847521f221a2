"""Stage 7, report: metrics.json, report.md and cdm.png from the run's own files.

Reads  the manifests of score, select, train and evaluate, and evaluate/{base,tuned}.jsonl
Writes <run>/metrics.json, <run>/report.md, <run>/cdm.png

Every figure comes from those files; the sentences are chosen by comparing numbers.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from .. import artifacts

ROWS = [("mean_cdm", "Mean CDM", "{:.1f}"), ("deep_rate", "Deep rate (CDM >= {line:g})", "{:.0%}"),
        ("accuracy", "Accuracy", "{:.0%}"), ("mean_completion_tokens", "Mean answer tokens", "{:.1f}"),
        ("ms_per_token", "ms per token", "{:.1f}"), ("peak_memory_mb", "Peak memory (MB)", "{:.0f}")]
HIGHER_IS_BETTER = {"mean_cdm": True, "deep_rate": True, "accuracy": True, "ms_per_token": False,
                    "peak_memory_mb": False}


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a random correct sample > that of a random wrong one), ties count half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (sign test, exact McNemar)."""
    if n == 0:
        return 1.0
    from math import comb

    tail = sum(comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired(before: list[dict], after: list[dict]) -> dict:
    """Per-prompt comparison of the two evaluations (same held-out prompts, same order)."""
    b = {r["prompt_id"]: r for r in before}
    pairs = [(b[r["prompt_id"]], r) for r in after if r["prompt_id"] in b]
    judged = [(x["correct"], y["correct"]) for x, y in pairs if x.get("correct") is not None]
    fixed = sum(1 for x, y in judged if not x and y)
    broken = sum(1 for x, y in judged if x and not y)
    up = sum(1 for x, y in pairs if y["cdm"] > x["cdm"])
    down = sum(1 for x, y in pairs if y["cdm"] < x["cdm"])
    return {"prompts": len(pairs), "fixed": fixed, "broken": broken,
            "accuracy_p": round(binomial_two_sided(fixed, fixed + broken), 4) if judged else None,
            "cdm_up": up, "cdm_down": down, "cdm_p": round(binomial_two_sided(up, up + down), 4)}


def by_suite(rows: list[dict]) -> dict:
    out: dict[str, list] = {}
    for r in rows:
        if r.get("correct") is not None:
            out.setdefault(r.get("suite") or "user", []).append(r["correct"])
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(out.items())}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"CPU {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def collect(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    ev = artifacts.read_manifest(run_dir / "evaluate", "evaluate")
    sel = artifacts.read_manifest(run_dir / "select", "select")
    tr = artifacts.read_manifest(run_dir / "train", "train")
    scored = artifacts.read_jsonl(run_dir / "score" / "scored.jsonl")
    judged = [(r["cdm"], r["correct"]) for r in scored if r.get("correct") is not None]
    base_rows = artifacts.read_jsonl(run_dir / "evaluate" / "base.jsonl")
    tuned_rows = artifacts.read_jsonl(run_dir / "evaluate" / "tuned.jsonl")
    au = auroc([s for s, _ in judged], [y for _, y in judged]) if judged else None
    return {
        "model": tr["base_model"] or "embedded SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
        "machine": machine(),
        "before": ev["base"], "after": ev["tuned"],
        "selection": {"total": sel["total"], "kept": sel["kept"], "threshold": sel["threshold"],
                      "prompts_with_kept": sel["prompts_with_kept"],
                      "correct_only": bool(judged) and sel["config"]["select"]["require_correct"]},
        "method": tr["method"], "trainable_params": tr["trainable_params"], "base_params": tr["base_params"],
        "train_seconds": tr["train_seconds"], "train_examples": tr["examples"], "final_loss": tr["final_loss"],
        "cdm_auroc": round(au, 4) if au is not None else None,
        "cdm_auroc_samples": len(judged),
        "deep_line": ev["config"]["evaluate"]["deep_line"],
        "paired": paired(base_rows, tuned_rows),
        "accuracy_by_suite": {"before": by_suite(base_rows), "after": by_suite(tuned_rows)},
    }


def _fmt(value, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


# Relative change in speed or memory below which it is noise: on the 2-core CPU two evaluations of
# one and the same model differed by up to 13 % (1035 vs 1169 MB; 22.0 vs 19.4 ms per token).
NOISE = 0.15


def verdicts(m: dict) -> list[str]:
    lines, b, a, pr = [], m["before"], m["after"], m["paired"]
    for key, label, fmt in ROWS:
        if key not in HIGHER_IS_BETTER or b.get(key) is None or a.get(key) is None:
            continue
        label = label.format(line=m["deep_line"])
        diff = a[key] - b[key]
        better = diff > 0 if HIGHER_IS_BETTER[key] else diff < 0
        change = f"{_fmt(b[key], fmt)} -> {_fmt(a[key], fmt)}"
        if key in ("ms_per_token", "peak_memory_mb") and abs(diff) <= NOISE * max(abs(b[key]), 1e-9):
            lines.append(f"- {label}: about the same ({change}; within {NOISE:.0%} measurement noise).")
            continue
        word = "unchanged" if abs(diff) < 1e-9 else "improved" if better else "got worse"
        note = ""
        if key == "accuracy":
            sig = "significant" if pr["accuracy_p"] is not None and pr["accuracy_p"] < 0.05 else "not significant"
            note = (f" ({pr['fixed']} prompts fixed, {pr['broken']} broken; exact McNemar p = {pr['accuracy_p']:.2f}, "
                    f"{sig} at n = {pr['prompts']})")
        elif key == "mean_cdm":
            sig = "significant" if pr["cdm_p"] < 0.05 else "not significant"
            note = f" (rose on {pr['cdm_up']} prompts, fell on {pr['cdm_down']}; sign test p = {pr['cdm_p']:.3f}, {sig})"
        lines.append(f"- {label}: {word}, {change}{note}.")
    if a["mean_cdm"] > b["mean_cdm"] and (pr["accuracy_p"] is None or pr["accuracy_p"] >= 0.05):
        lines.append("- Depth rose without a significant change in accuracy: the adapter made the model more "
                     "certain and more stable, which is what CDM measures, more than it made answers right.")
    au = m["cdm_auroc"]
    if au is None:
        lines.append("- CDM vs correctness: not measurable here (no reference answers, or all samples right or all wrong).")
    else:
        strength = "well" if au >= 0.75 else "weakly" if au >= 0.6 else "no better than chance" if au > 0.4 else "inversely"
        lines.append(f"- CDM predicted correctness {strength} on this data: AUROC {au:.2f} over "
                     f"{m['cdm_auroc_samples']} base-model samples (0.5 = chance).")
    return lines


def render(m: dict) -> str:
    b, a = m["before"], m["after"]
    table = ["| metric | before | after |", "|---|---|---|"]
    for key, label, fmt in ROWS:
        table.append(f"| {label.format(line=m['deep_line'])} | {_fmt(b.get(key), fmt)} | {_fmt(a.get(key), fmt)} |")
    s = m["selection"]
    share = m["trainable_params"] / max(1, m["base_params"])
    return "\n".join([
        "# depthtune report", "",
        f"Model: {m['model']}. Machine: {m['machine']}.", "",
        f"Selection: kept {s['kept']} of {s['total']} samples (CDM >= {s['threshold']:g}"
        f"{', correct only' if s['correct_only'] else ''}), from {s['prompts_with_kept']} prompts.",
        f"Training: {m['method']}, {m['trainable_params']:,} trainable of {m['base_params']:,} parameters "
        f"({share:.2%}), {m['train_examples']} examples, {m['train_seconds']:.0f} s, final loss {m['final_loss']:.3f}.", "",
        f"Held-out prompts: {b['samples']} (never trained on), greedy answers.", "",
        *table, "", "## What changed", "", *verdicts(m), "", *suite_table(m),
        "![CDM before and after](cdm.png)", "",
    ])


def suite_table(m: dict) -> list[str]:
    before, after = m["accuracy_by_suite"]["before"], m["accuracy_by_suite"]["after"]
    if not before:
        return []
    rows = [f"| {k} | {before[k]:.0%} | {after.get(k, 0):.0%} |" for k in before]
    return ["## Accuracy by suite", "", "| suite | before | after |", "|---|---|---|", *rows, ""]


def plot(run_dir: Path, deep_line: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    scores = {w: [r["cdm"] for r in artifacts.read_jsonl(Path(run_dir) / "evaluate" / f"{w}.jsonl")] for w in ("base", "tuned")}
    every = scores["base"] + scores["tuned"] + [deep_line]
    lo, hi = max(0.0, min(every) - 5), min(100.0, max(every) + 5)
    bins = [lo + i * (hi - lo) / 30 for i in range(31)]
    for which, colour in (("base", "tab:gray"), ("tuned", "tab:blue")):
        ax.hist(scores[which], bins=bins, alpha=0.6, color=colour,
                label=f"{'before' if which == 'base' else 'after'} (n={len(scores[which])})")
    ax.axvline(deep_line, color="black", linestyle="--", linewidth=1, label=f"deep line {deep_line:g}")
    ax.set_xlabel("CDM on held-out prompts")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(Path(run_dir) / "cdm.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(run_dir: Path) -> dict:
    m = collect(run_dir)
    plot(run_dir, m["deep_line"])
    artifacts.write_text(Path(run_dir) / "report.md", render(m))
    artifacts.write_json(Path(run_dir) / "metrics.json", m)
    return m
