"""The `depthtune compare` report: the four models side by side, gap recovered, and a decision.

Every figure comes from the run's files; every sentence of the decision is picked by comparing those
figures with the rules below, so the report can and does say "do not distil".

Rules. Accuracy differences are paired over the held-out prompts with a bootstrap 95% interval.
- Distillation helped only when the interval of (distilled - alone) lies above zero.
- "As accurate as" means non-inferior: the interval of (a - b) lies above -margin (distill.margin,
  5 points by default). A difference that is merely not significant is not evidence of equivalence:
  with few prompts the interval is wide and nothing passes.
The deployed model is then the cheapest (by the stated priority) that is as accurate as the best.
"""
from __future__ import annotations

import math
from pathlib import Path

from .. import artifacts, htmlpage, stats
from ..reporting import answer_cell, describe, fmt, interval_bars, machine, paired, prompt_of

LABELS = {"teacher": "teacher", "student": "student, untouched", "alone": "student trained alone",
          "distilled": "student distilled"}
MODELS = ("teacher", "student", "alone", "distilled")


def correct_by_prompt(rows: dict[str, list[dict]]) -> tuple[list[str], dict[str, list[float]]]:
    """The prompts every model answered with a verdict, and each model's 0/1 there, in one order."""
    common = set.intersection(*[{r["prompt_id"] for r in rs if r.get("correct") is not None} for rs in rows.values()])
    order = sorted(common)
    return order, {m: [float({r["prompt_id"]: r["correct"] for r in rs}[p]) for p in order] for m, rs in rows.items()}


def accuracy_delta(scores: dict[str, list[float]], a: str, b: str) -> dict:
    """Accuracy of a minus accuracy of b, paired over prompts, with its 95% interval."""
    return stats.paired_delta(scores[b], scores[a])


def collect(run_dir: Path, cfg) -> dict:
    run_dir = Path(run_dir)
    rows = {m: artifacts.read_jsonl(run_dir / "evaluate" / f"{m}.jsonl") for m in MODELS}
    out = {"machine": machine(), "models": {}, "margin": cfg.distill.margin}
    teacher_data = artifacts.read_json(run_dir / "generate" / "manifest.json")["seconds"]  # generation only
    for m in rows:
        s = artifacts.read_json(run_dir / "evaluate" / f"{m}.json")
        train = artifacts.read_json(run_dir / m / "manifest.json") if m in ("alone", "distilled") else {}
        seconds_per_answer = (s["ms_per_token"] or 0) * s["mean_completion_tokens"] / 1000
        out["models"][m] = {**s, "ms_per_answer": round(1000 * seconds_per_answer, 1),
                            "train_seconds": train.get("train_seconds", 0.0),
                            "teacher_data_seconds": round(teacher_data, 1) if m == "distilled" else 0.0,
                            "cpu_hours_per_million": round(seconds_per_answer * 1e6 / 3600, 1)}
    _, scores = correct_by_prompt(rows)
    for m in rows:
        out["models"][m]["accuracy_ci95"] = stats.mean_ci(scores[m])["ci95"] if len(scores[m]) > 1 else None
    out["gap_recovered"] = stats.gap_recovered(scores["teacher"], scores["alone"], scores["distilled"])
    out["distilled_vs_alone"] = {**paired(rows["alone"], rows["distilled"]),
                                 "delta": accuracy_delta(scores, "distilled", "alone")}
    out["priority"], out["calls_per_day"] = cfg.distill.priority, cfg.distill.calls_per_day
    out["example"] = one_prompt(rows)
    gen = artifacts.read_json(run_dir / "generate" / "manifest.json")
    out["cache_note"] = cache_note(gen, cfg)
    out["decision"] = decide(out, scores)
    return out


def _span(d: dict) -> str:
    if d["ci95"] is None:
        return f"{100 * d['delta']:+.1f} points, interval not computable"
    return f"{100 * d['delta']:+.1f} points, 95% interval {100 * d['ci95'][0]:+.1f} to {100 * d['ci95'][1]:+.1f}"


def decide(m: dict, scores: dict[str, list[float]]) -> list[str]:
    mods, margin = m["models"], m["margin"]
    acc = {k: v["accuracy"] or 0.0 for k, v in mods.items()}
    dv = accuracy_delta(scores, "distilled", "alone")
    helps = dv["ci95"] is not None and dv["ci95"][0] > 0
    teacher_s = mods["distilled"]["teacher_data_seconds"]
    if helps:
        lines = [f"Distillation helped: the distilled student beats the one trained alone ({acc['alone']:.0%} -> "
                 f"{acc['distilled']:.0%}; {_span(dv)})."]
    else:
        lines = [f"Do not distil on this evidence: against the student trained alone on the reference answers, the "
                 f"distilled student's accuracy changed {_span(dv)}, an interval that includes no gain; it cost "
                 f"{teacher_s:.0f} s of teacher generation on top of training."]

    def as_accurate(a: str, b: str) -> bool:
        """Non-inferior: a's accuracy minus b's has its 95% interval above -margin."""
        if a == b:
            return True
        d = accuracy_delta(scores, a, b)
        return d["ci95"] is not None and d["ci95"][0] > -margin

    def train_cost(k: str) -> float:
        return mods[k]["train_seconds"] + mods[k]["teacher_data_seconds"]

    students = sorted(("student", "alone", "distilled"), key=train_cost)  # cheapest to make first
    priority, within = m["priority"], f"within the {100 * margin:.0f}-point non-inferiority margin"
    if priority == "accuracy":
        best = max(("teacher", *students), key=lambda k: acc[k])
        pick = next((k for k in students if as_accurate(k, best)), "teacher")
        if pick == "teacher":
            reason = f"no student is shown as accurate as the {LABELS[best]} ({within})"
        else:
            reason = ("it is the most accurate of the four" if pick == best else
                      f"it is as accurate as the {LABELS[best]} ({within})")
            faster = mods[pick]["ms_per_answer"] < mods["teacher"]["ms_per_answer"]
            reason += (", has fewer parameters than the teacher, and answered faster than it here" if faster else
                       ", has fewer parameters than the teacher, though it answered no faster than it here")
    elif priority == "latency":
        best = max(students, key=lambda k: acc[k])
        pick = next(k for k in students if as_accurate(k, best))
        reason = f"the students answer fastest; this is the cheapest one as accurate as the best student ({within})"
    else:
        everyone = sorted(("teacher", *students), key=lambda k: (train_cost(k), mods[k]["ms_per_answer"]))
        best = max(everyone, key=lambda k: acc[k])
        pick = next(k for k in everyone if as_accurate(k, best))
        reason = f"it needs the least training and is as accurate as the most accurate option ({within})"
    chosen = mods[pick]
    per_day = m["calls_per_day"] * chosen["ms_per_answer"] / 1000
    lines.append(f"Priority {priority}: deploy the {LABELS[pick]} ({fmt(chosen['accuracy'], '{:.0%}')} accuracy, "
                 f"{chosen['ms_per_answer']:.0f} ms per answer): {reason}.")
    lines.append(f"Compute on this machine: {chosen['cpu_hours_per_million']:,.1f} machine-hours per million answers; "
                 f"{m['calls_per_day']:,} calls a day need {per_day / 3600:,.1f} machine-hours a day "
                 f"({math.ceil(per_day / 86400) if per_day else 0} machine(s) like this one).")
    lines.append("Distillation is not worth doing when the teacher-student gap is small, when the student trained "
                 "alone already closes it, or when the gain's interval over held-out prompts includes zero; "
                 + ("here the gain's interval lies above zero." if helps else "here it includes zero, so it is not worth doing."))
    return lines


ROWS = [("accuracy", "Accuracy", "{:.0%}"), ("mean_cdm", "Mean CDM", "{:.1f}"), ("deep_rate", "Deep rate", "{:.0%}"),
        ("mean_completion_tokens", "Mean answer tokens", "{:.1f}"), ("ms_per_answer", "ms per answer", "{:.0f}"),
        ("ms_per_token", "ms per token", "{:.1f}"), ("peak_memory_mb", "Peak memory (MB)", "{:.0f}"),
        ("params", "Parameters", "{:,}"), ("train_seconds", "Training seconds", "{:.0f}"),
        ("teacher_data_seconds", "Teacher generation seconds", "{:.0f}")]


def one_prompt(rows: dict[str, list[dict]]) -> dict | None:
    """One held-out prompt with every model's answer: one the models disagree on where there is one."""
    by = {m: {r["prompt_id"]: r for r in rs} for m, rs in rows.items()}
    common = [p for p in by["teacher"] if all(p in b for b in by.values())]
    if not common:
        return None
    split = [p for p in common if len({by[m][p].get("correct") for m in by}) > 1]
    pick = (split or common)[0]
    first = by["teacher"][pick]
    return {"prompt": prompt_of(first), "reference": first.get("answer"),
            "answers": {m: {"completion": by[m][pick]["completion"], "correct": by[m][pick].get("correct")} for m in by}}


def cache_note(gen: dict, cfg) -> str | None:
    """A server's cached top-k is exact at tau = 1 only: said where it was used at another temperature."""
    if gen.get("topk") and gen.get("backend", "local") != "local" and cfg.distill.temperature != 1:
        return (f"The teacher's top-{gen['topk']} came from a server ({gen['backend']}), which gives no tail: the "
                f"cached target is exact at temperature 1 only, and at {cfg.distill.temperature:g} it tempers the "
                f"leftover mass as one bucket (docs/distillation.md).")
    return None


def gap_lines(g: dict) -> list[str]:
    """distilled - alone and teacher - alone with their intervals; their ratio only when it is defined."""
    dv, tv = g["distilled_minus_alone"], g["teacher_minus_alone"]
    lines = [f"- Distilled minus trained alone: {describe(dv, 100, ' points')}.",
             f"- Teacher minus trained alone (the gap there was to recover): {describe(tv, 100, ' points')}."]
    if g["value"] is None:
        lines.append(f"- Gap recovered, (distilled - alone) / (teacher - alone): not reported, {g['reason']} "
                     f"(a ratio over a gap that may be zero can read anything).")
    else:
        lo, hi = g["ci95"]
        lines.append(f"- Gap recovered: {g['value']:.0%} (Fieller 95% interval {lo:.0%} to {hi:.0%}, n = {g['n']}).")
    return lines


def example_lines(ex: dict | None) -> list[str]:
    if not ex:
        return []
    rows = [f"| {LABELS[name]} | {answer_cell(a['completion'])} | "
            f"{'n/a' if a['correct'] is None else 'yes' if a['correct'] else 'no'} |" for name, a in ex["answers"].items()]
    return ["## One held-out prompt, every model's answer", "", f"Prompt: {answer_cell(ex['prompt'])}"
            + (f" (reference: {answer_cell(ex['reference'])})" if ex.get("reference") else ""), "",
            "| model | answer | correct |", "|---|---|---|", *rows, ""]


def render(m: dict) -> str:
    names = list(m["models"])
    head = "| metric | " + " | ".join(LABELS[n] for n in names) + " |"
    table = [head, "|---" * (len(names) + 1) + "|"]
    for key, label, pattern in ROWS:
        table.append(f"| {label} | " + " | ".join(fmt(m["models"][n].get(key), pattern) for n in names) + " |")
    ci = [(f"{100 * c[0]:.0f}-{100 * c[1]:.0f}%" if (c := m["models"][n].get("accuracy_ci95")) else "–") for n in names]
    table.append("| Accuracy, 95% interval | " + " | ".join(ci) + " |")
    gap = gap_lines(m["gap_recovered"])
    return "\n".join(["# depthtune compare", "", f"Machine: {m['machine']}.", "", *table, "", *gap, "",
                      *([m["cache_note"], ""] if m.get("cache_note") else []),
                      "## Decision", "", *[f"- {line}" for line in m["decision"]], "", *example_lines(m.get("example")),
                      "![Held-out accuracy of the four models](models.png)", ""])


def plot(run_dir: Path, m: dict) -> None:
    """Accuracy of each model with its 95% interval."""
    names = list(m["models"])
    interval_bars(Path(run_dir) / "models.png", [LABELS[n].replace("student ", "student\n") for n in names],
                  [100 * (m["models"][n]["accuracy"] or 0) for n in names],
                  [m["models"][n].get("accuracy_ci95") for n in names], ylabel="held-out accuracy (%)",
                  title="Accuracy with 95% intervals", colors=["tab:gray", "tab:orange", "tab:green", "tab:blue"])


def write_report(run_dir: Path, cfg) -> dict:
    """compare.json, and report.md / report.html (plots inlined) like `depthtune run` writes."""
    m = collect(run_dir, cfg)
    plot(run_dir, m)
    md = render(m)
    artifacts.write_json(Path(run_dir) / "compare.json", m)
    artifacts.write_text(Path(run_dir) / "report.md", md)
    artifacts.write_text(Path(run_dir) / "report.html", htmlpage.render(md, Path(run_dir), "depthtune compare"))
    return m
