"""The `depthtune compare` report: the four models side by side, gap recovered, and a decision.

Every figure comes from the run's files; every sentence of the decision is picked by
comparing those figures (rules below), so the report can and does say "do not distil".
"""
from __future__ import annotations

import math
from pathlib import Path

from .. import artifacts
from ..stages.report import _fmt, machine, paired

LABELS = {"teacher": "teacher", "student": "student, untouched", "alone": "student trained alone",
          "distilled": "student distilled"}
SIGNIFICANT = 0.05


def gap_recovered(teacher: float | None, alone: float | None, distilled: float | None) -> float | None:
    """(distilled - alone) / (teacher - alone); None when there is no gap to recover."""
    if None in (teacher, alone, distilled) or teacher <= alone:
        return None
    return (distilled - alone) / (teacher - alone)


def collect(run_dir: Path, cfg) -> dict:
    run_dir = Path(run_dir)
    rows = {m: artifacts.read_jsonl(run_dir / "evaluate" / f"{m}.jsonl") for m in ("teacher", "student", "alone", "distilled")}
    out = {"machine": machine(), "models": {}}
    teacher_data = artifacts.read_json(run_dir / "generate" / "manifest.json")["seconds"]  # generation only
    for m in rows:
        s = artifacts.read_json(run_dir / "evaluate" / f"{m}.json")
        train = artifacts.read_json(run_dir / m / "manifest.json") if m in ("alone", "distilled") else {}
        seconds_per_answer = (s["ms_per_token"] or 0) * s["mean_completion_tokens"] / 1000
        out["models"][m] = {**s, "ms_per_answer": round(1000 * seconds_per_answer, 1),
                            "train_seconds": train.get("train_seconds", 0.0),
                            "teacher_data_seconds": round(teacher_data, 1) if m == "distilled" else 0.0,
                            "cpu_hours_per_million": round(seconds_per_answer * 1e6 / 3600, 1)}
    acc = {m: out["models"][m]["accuracy"] for m in rows}
    out["gap_recovered"] = gap_recovered(acc["teacher"], acc["alone"], acc["distilled"])
    out["distilled_vs_alone"] = paired(rows["alone"], rows["distilled"])
    out["priority"], out["calls_per_day"] = cfg.distill.priority, cfg.distill.calls_per_day
    out["decision"] = decide(out, rows)
    return out


def decide(m: dict, rows: dict) -> list[str]:
    """Rules: distillation is worth it only if it beats training alone significantly on held-out
    prompts; the deployed model is then picked by the stated priority."""
    mods, dv = m["models"], m["distilled_vs_alone"]
    acc = {k: v["accuracy"] or 0.0 for k, v in mods.items()}
    lines = []
    helps = acc["distilled"] > acc["alone"] and dv["accuracy_p"] is not None and dv["accuracy_p"] < SIGNIFICANT
    if helps:
        lines.append(f"Distillation helped: the distilled student beats the one trained alone "
                     f"({acc['alone']:.0%} -> {acc['distilled']:.0%}, p = {dv['accuracy_p']:.3f}).")
    else:
        why = ("it did worse" if acc["distilled"] < acc["alone"] else "it did no better" if acc["distilled"] == acc["alone"]
               else f"its gain ({acc['alone']:.0%} -> {acc['distilled']:.0%}, {dv['fixed']} fixed, {dv['broken']} broken) "
                    f"is not significant (p = {dv['accuracy_p']:.2f})")
        lines.append(f"Do not distil on this evidence: against the student trained alone on the reference answers, {why}, "
                     f"and it cost {mods['distilled']['teacher_data_seconds']:.0f} s of teacher generation on top of training.")
    def not_worse(a: str, b: str) -> bool:
        """a is not significantly less accurate than b on the same held-out prompts."""
        t = paired(rows[a], rows[b])
        return not (acc[a] < acc[b] and t["accuracy_p"] is not None and t["accuracy_p"] < SIGNIFICANT)

    def train_cost(k: str) -> float:
        return mods[k]["train_seconds"] + mods[k]["teacher_data_seconds"]

    students = sorted(("student", "alone", "distilled"), key=train_cost)  # cheapest to make first
    best_student = max(students, key=lambda k: acc[k])
    priority = m["priority"]
    if priority == "accuracy":
        best = max(("teacher", *students), key=lambda k: acc[k])
        pick = next((k for k in students if not_worse(k, best)), "teacher")
        reason = (f"no student comes within noise of the {LABELS[best]}" if pick == "teacher" else
                  f"it is not significantly less accurate than the {LABELS[best]} and answers faster than the teacher")
    elif priority == "latency":
        pick = next(k for k in students if not_worse(k, best_student))
        reason = "the students answer fastest; this is the cheapest one not significantly less accurate than the best"
    else:
        everyone = sorted(("teacher", *students), key=lambda k: (train_cost(k), mods[k]["ms_per_answer"]))
        best = max(everyone, key=lambda k: acc[k])
        pick = next(k for k in everyone if not_worse(k, best))
        reason = "it needs the least training and is not significantly less accurate than any other option"
    chosen = mods[pick]
    per_day = m["calls_per_day"] * chosen["ms_per_answer"] / 1000
    lines.append(f"Priority {priority}: deploy the {LABELS[pick]} ({_fmt(chosen['accuracy'], '{:.0%}')} accuracy, "
                 f"{chosen['ms_per_answer']:.0f} ms per answer): {reason}.")
    lines.append(f"Compute on this machine: {chosen['cpu_hours_per_million']:,.1f} machine-hours per million answers; "
                 f"{m['calls_per_day']:,} calls a day need {per_day / 3600:,.1f} machine-hours a day "
                 f"({math.ceil(per_day / 86400) if per_day else 0} machine(s) like this one).")
    lines.append("Distillation is not worth doing when the teacher-student gap is small, when the student trained "
                 "alone already closes it, or when the gain does not survive a paired test on held-out prompts; "
                 + ("here it did survive." if helps else "here it did not."))
    return lines


ROWS = [("accuracy", "Accuracy", "{:.0%}"), ("mean_cdm", "Mean CDM", "{:.1f}"), ("deep_rate", "Deep rate", "{:.0%}"),
        ("mean_completion_tokens", "Mean answer tokens", "{:.1f}"), ("ms_per_answer", "ms per answer", "{:.0f}"),
        ("ms_per_token", "ms per token", "{:.1f}"), ("peak_memory_mb", "Peak memory (MB)", "{:.0f}"),
        ("params", "Parameters", "{:,}"), ("train_seconds", "Training seconds", "{:.0f}"),
        ("teacher_data_seconds", "Teacher generation seconds", "{:.0f}")]


def render(m: dict) -> str:
    names = list(m["models"])
    head = "| metric | " + " | ".join(LABELS[n] for n in names) + " |"
    table = [head, "|---" * (len(names) + 1) + "|"]
    for key, label, fmt in ROWS:
        table.append(f"| {label} | " + " | ".join(_fmt(m["models"][n].get(key), fmt) for n in names) + " |")
    g = m["gap_recovered"]
    gap = (f"Gap recovered: {g:.0%} = (distilled - alone) / (teacher - alone) on accuracy." if g is not None
           else "Gap recovered: undefined, the student trained alone is not behind the teacher.")
    return "\n".join(["# depthtune compare", "", f"Machine: {m['machine']}.", "", *table, "", gap, "",
                      "## Decision", "", *[f"- {line}" for line in m["decision"]], ""])


def write_report(run_dir: Path, cfg) -> dict:
    m = collect(run_dir, cfg)
    artifacts.write_json(Path(run_dir) / "compare.json", m)
    artifacts.write_text(Path(run_dir) / "compare.md", render(m))
    return m
