"""What every report shares: the machine line, number formats, paired per-prompt comparisons, the
sentence that says whether a change is real, plots with intervals, and answers shown side by side.

The run report (depthtune.stages.report), the compare report (depthtune.distill.decide), the ablation
and sweep reports (depthtune.experiments) and the command line all read these, so a figure is worded,
counted and drawn the same way everywhere.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from . import artifacts, stats

# the before/after table of a run: (metrics key, label, format)
ROWS = [("mean_cdm", "Mean CDM", "{:.1f}"), ("deep_rate", "Deep rate (CDM >= {line:g})", "{:.0%}"),
        ("accuracy", "Accuracy", "{:.0%}"), ("mean_completion_tokens", "Mean answer tokens", "{:.1f}"),
        ("ms_per_token", "ms per token", "{:.1f}"), ("peak_memory_mb", "Peak memory (MB)", "{:.0f}")]
PERCENT = ("accuracy", "deep_rate")  # shown in points: 100 x the share


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def change(d: dict | None, scale: float = 1.0) -> str:
    """'+4.1 (+1.0 to +7.3)': a delta with its 95% interval, '' when there is none."""
    if not d or d.get("ci95") is None:
        return ""
    return f"{d['delta'] * scale:+.1f} ({d['ci95'][0] * scale:+.1f} to {d['ci95'][1] * scale:+.1f})"


def describe(d: dict, scale: float = 1.0, unit: str = "", higher_is_better: bool | None = True) -> str:
    """'improved, +4.1 points (95% interval +1.0 to +7.3)' or 'no detectable change (... ±x)'."""
    if d.get("ci95") is None:
        return f"{d['delta'] * scale:+.1f}{unit}, interval not computable (too few prompts)"
    lo, hi = (x * scale for x in d["ci95"])
    span = f"95% interval {lo:+.1f} to {hi:+.1f}{unit}"
    if lo <= 0 <= hi or higher_is_better is None:
        word = "no detectable change" if lo <= 0 <= hi else "changed"
        return f"{word}: {d['delta'] * scale:+.1f}{unit} ({span}, ±{(hi - lo) / 2:.1f})"
    word = "improved" if (lo > 0) == higher_is_better else "got worse"
    return f"{word}, {d['delta'] * scale:+.1f}{unit} ({span})"


def pairs(before: list[dict], after: list[dict]) -> list[tuple[dict, dict]]:
    """The two evaluations' answers to the same held-out prompts, in `after`'s order."""
    b = {r["prompt_id"]: r for r in before}
    return [(b[r["prompt_id"]], r) for r in after if r["prompt_id"] in b]


def paired(before: list[dict], after: list[dict]) -> dict:
    """Per-prompt comparison of two evaluations on the same held-out prompts: fixed / broken answers
    (exact McNemar) over the prompts both have a verdict for, prompts whose CDM rose / fell (sign test)."""
    both = pairs(before, after)
    judged = [(x["correct"], y["correct"]) for x, y in both
              if x.get("correct") is not None and y.get("correct") is not None]
    fixed = sum(1 for x, y in judged if not x and y)
    broken = sum(1 for x, y in judged if x and not y)
    scored = [(x, y) for x, y in both if x.get("cdm") is not None and y.get("cdm") is not None]
    up = sum(1 for x, y in scored if y["cdm"] > x["cdm"])
    down = sum(1 for x, y in scored if y["cdm"] < x["cdm"])
    return {"prompts": len(both), "judged": len(judged), "fixed": fixed, "broken": broken,
            "accuracy_p": round(stats.binomial_two_sided(fixed, fixed + broken), 4) if judged else None,
            "cdm_up": up, "cdm_down": down, "cdm_p": round(stats.binomial_two_sided(up, up + down), 4)}


def per_prompt(row: dict, key: str, deep_line: float):
    """One held-out answer's value of a metric (accuracy and deep rate as 0/1), None when unmeasured."""
    if key == "accuracy":
        return None if row.get("correct") is None else float(row["correct"])
    if key == "deep_rate":
        return None if row.get("cdm") is None else float(row["cdm"] >= deep_line)
    if key == "mean_completion_tokens":
        return float(len(row["completion_ids"]))
    return row.get("cdm") if key == "mean_cdm" else None


def paired_metric(before: list[dict], after: list[dict], key: str, deep_line: float = 0.0) -> dict:
    """after - before of one per-prompt metric over the prompts both measured, with its 95% interval."""
    vals = [(per_prompt(x, key, deep_line), per_prompt(y, key, deep_line)) for x, y in pairs(before, after)]
    vals = [(x, y) for x, y in vals if x is not None and y is not None]
    return stats.paired_delta([x for x, _ in vals], [y for _, y in vals])


def save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def interval_bars(path: Path, names: list[str], values: list[float], cis: list, *, ylabel: str, title: str,
                  baseline: float | None = None, baseline_label: str = "untrained", colors=None) -> None:
    """Bars (values in %, 0-100) with their 95% intervals as error bars; a dashed line for a baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cis = [c or [v / 100, v / 100] for c, v in zip(cis, values)]
    err = [[max(0.0, v - 100 * c[0]) for v, c in zip(values, cis)], [max(0.0, 100 * c[1] - v) for v, c in zip(values, cis)]]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names)), 3.8))
    ax.bar(range(len(names)), values, yerr=err, capsize=4, color=colors or "tab:blue")
    if baseline is not None:
        ax.axhline(baseline, color="black", linestyle="--", linewidth=1, label=baseline_label)
        ax.legend()
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    save(fig, path)


def _clip(text: str, most: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= most else text[:most - 1] + "…"


def prompt_of(row: dict) -> str:
    if row.get("messages"):
        return " / ".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return row.get("prompt") or ""


def answer_cell(text: str) -> str:
    """An answer as a markdown table cell: one line, clipped, its pipes shown as a broken bar so they do not
    split the table (report.html escapes every cell: model output never becomes markup)."""
    return _clip(text).replace("|", "\u00a6") or "(empty)"


def side_by_side(before: list[dict], after: list[dict], names: tuple[str, str] = ("before", "after"),
                 most: int = 2) -> list[str]:
    """A markdown table of a few held-out prompts answered before and after: fixed ones, broken ones and
    one unchanged, so a reader sees what changed and not only how much."""
    both = [(x, y) for x, y in pairs(before, after) if x.get("correct") is not None and y.get("correct") is not None]
    picks = ([("fixed", p) for p in both if not p[0]["correct"] and p[1]["correct"]][:most] +
             [("broken", p) for p in both if p[0]["correct"] and not p[1]["correct"]][:most] +
             [("unchanged", p) for p in both if p[0]["correct"] == p[1]["correct"]
              and p[0]["completion"] != p[1]["completion"]][:1])
    if not picks:
        return []
    lines = [f"| | prompt | reference | {names[0]} | {names[1]} |", "|---|---|---|---|---|"]
    for kind, (x, y) in picks:
        lines.append(f"| {kind} | {answer_cell(prompt_of(y))} | {answer_cell(y.get('answer') or '')} | "
                     f"{answer_cell(x['completion'])} | {answer_cell(y['completion'])} |")
    return lines
