"""The sweep's report: every cell (mean and spread over seeds), findings computed from them, plots.

Writes <sweep>/sweep.json (every cell's numbers), sweep_report.md, sweep_report.html (the
same tables with the plots embedded) and plots/*.png.

Findings compare cells that differ in one axis only (same everything else, same seed), so
a difference is the axis' effect on matched cells, not a mix of settings. Its 95% interval is a
paired bootstrap over the battery's prompts (each prompt's difference averaged over the matched
pairs); a difference counts as clear only when that interval excludes zero, otherwise it is noise.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .. import artifacts, htmlpage, stats
from ..reporting import machine
from .battery import CATEGORIES, battery_of, transfer
from .matched import cell_accuracy, label, rest_key

QUESTIONS = (("size", "dataset size"), ("diversity", "diversity"), ("student", "student"),
             ("method", "method"), ("targets", "answers vs reasoning traces"), ("teachers", "one vs several teachers"))


def mean_sd(values: list) -> tuple:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None)


def fmt(m, sd=None, digits=1) -> str:
    if m is None:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _part(r: dict, part: str, key: str):
    a = r["battery"][part].get(key, {}).get("accuracy")
    return None if a is None else 100 * a


def collect(folder: Path, plan) -> dict:
    done, failed, pending = [], [], []
    for cp in plan.cells:
        d = Path(folder) / "cells" / cp.dir_name
        if (d / "result.json").exists():
            r = artifacts.read_json(d / "result.json")
            r["size_n"], r["group"] = len(cp.prompts), cp.cell.group
            r["answers"] = {a["prompt_id"]: (float(a["correct"]), a.get("category"))
                            for a in artifacts.read_jsonl(d / "evaluate" / "battery.jsonl") if a.get("correct") is not None}
            done.append(r)
        elif (d / "error.json").exists():
            failed.append({"group": cp.cell.group, "seed": cp.cell.settings["seed"], **artifacts.read_json(d / "error.json")})
        else:
            pending.append(cp.cell.group)
    groups: dict[str, list[dict]] = {}
    for r in done:
        groups.setdefault(r["group"], []).append(r)
    shown = [cp.cell.group.split(", ") for cp in plan.cells]
    fixed = set.intersection(*[set(g) for g in shown]) if shown else set()
    table = []
    for g, rs in groups.items():
        row = {"group": ", ".join(p for p in g.split(", ") if p not in fixed) or "(every cell)", "seeds": len(rs), "settings": rs[0]["settings"], "size_n": rs[0]["size_n"],
               "examples": mean_sd([r["examples"] for r in rs])[0]}
        row["accuracy"] = mean_sd([cell_accuracy(r) for r in rs])
        row["teacher"] = mean_sd([cell_accuracy({"battery": r["teacher"]}) for r in rs])[0]
        row["untrained"] = mean_sd([cell_accuracy({"battery": r["untrained"]}) for r in rs])[0]
        for c in CATEGORIES:
            row[c] = mean_sd([cell_accuracy(r, c) for r in rs])
            row[f"transfer_{c}"] = mean_sd([r["transfer"].get(c) for r in rs])
        row["train_seconds"] = mean_sd([r["train_seconds"] for r in rs])
        row["detail"] = {f"{part}:{k}": mean_sd([_part(r, part, k) for r in rs])[0]
                         for part in ("suite", "level") for k in rs[0]["battery"][part]}
        table.append(row)
    references = {}
    for key in plan.jobs:
        if (Path(folder) / "teachers" / key / "evaluate" / "battery.jsonl").exists():
            references[f"teacher {key.rsplit('-', 1)[0]}"] = battery_of(Path(folder) / "teachers" / key)
    for d in sorted((Path(folder) / "students").glob("*")):
        if (d / "evaluate" / "battery.jsonl").exists():
            references[f"untrained student {artifacts.read_json(d / 'student.json')['student']}"] = battery_of(d)
    n_eval = len(plan.battery)
    return {"references": references, "timings": timings(Path(folder)),"name": plan.sweep.name, "machine": machine(), "cells": len(plan.cells), "done": done, "failed": failed,
            "pending": pending, "table": table, "fixed": sorted(fixed), "battery_size": n_eval, "findings": findings(done, n_eval)}


def timings(folder: Path) -> dict:
    """Wall seconds of the work each run of the command did: shared (teacher work, model loads
    included) and cells; an interrupted phase's seconds are not counted."""
    rows = artifacts.read_jsonl(folder / "timings.jsonl", tolerate_torn_tail=True) \
        if (folder / "timings.jsonl").exists() else []
    cells = [r["seconds"] for r in rows if r["phase"] == "cell"]
    return {"runs": sum(r["phase"] == "shared" for r in rows),
            "shared_s": round(sum(r["seconds"] for r in rows if r["phase"] == "shared"), 1),
            "cells_s": round(sum(cells), 1), "cells_timed": len(cells),
            "per_phase": {p: round(sum(r["seconds"] for r in rows if r["phase"] == p), 1)
                          for p in ("teacher", "ensemble", "student")}}


def _blocks(done: list[dict], axis: str, cat: str | None = None) -> dict:
    """Cells grouped by every setting except `axis` -> {value label: accuracy (of one category)}."""
    blocks: dict[str, dict] = {}
    for r in done:
        if cell_accuracy(r, cat) is not None:
            blocks.setdefault(rest_key(r, axis), {})[label(r["settings"], axis)] = cell_accuracy(r, cat)
    return blocks


def _blocks_of_cells(done: list[dict], axis: str) -> list[dict]:
    """Matched cells: {value label: cell} per group of cells equal in every setting but `axis`."""
    blocks: dict[str, dict] = {}
    for r in done:
        blocks.setdefault(rest_key(r, axis), {})[label(r["settings"], axis)] = r
    return [b for b in blocks.values() if len(b) > 1]


def paired_interval(done: list[dict], axis: str, best: str, second: str, cat: str | None) -> dict:
    """best - second in accuracy, per held-out prompt averaged over the matched pairs, with a paired
    bootstrap 95% interval over prompts (the prompts, not the few cell pairs, are the many units)."""
    per: dict[str, list[float]] = {}
    for b in _blocks_of_cells(done, axis):
        if best in b and second in b:
            x, y = b[best]["answers"], b[second]["answers"]
            for pid, (v, c) in x.items():
                if pid in y and (cat is None or c == cat):
                    per.setdefault(pid, []).append(v - y[pid][0])
    diffs = [sum(v) / len(v) for v in per.values()]
    return stats.paired_delta([0.0] * len(diffs), diffs)


def compare_axis(done: list[dict], axis: str, n_eval: int, cat: str | None = None) -> dict | None:
    """Winner of one axis over matched cells, its margin over the runner-up with a 95% interval over the
    battery's prompts, and whether it is clear: the interval excludes zero (n_eval: the questions behind
    the accuracy, which sets what one question is worth)."""
    blocks = [b for b in _blocks(done, axis, cat).values() if len(b) > 1]
    values = sorted({v for b in blocks for v in b})
    if len(values) < 2:
        return None
    means = {v: statistics.fmean([b[v] for b in blocks if v in b]) for v in values}
    ranked = sorted(values, key=lambda v: -means[v])
    best, second = ranked[0], ranked[1]
    diffs = [b[best] - b[second] for b in blocks if best in b and second in b]
    margin = statistics.fmean(diffs) if diffs else means[best] - means[second]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    ci = paired_interval(done, axis, best, second, cat)["ci95"] if all("answers" in r for r in done) else None
    ci = [round(100 * x, 2) for x in ci] if ci else None
    clear = ci[0] > 0 if ci else abs(margin) > 2 * 100 / n_eval and se is not None and abs(margin) > 2 * se
    return {"axis": axis, "best": best, "runner_up": second, "margin": round(margin, 2),
            "se": None if se is None else round(se, 2), "ci95": ci, "pairs": len(diffs), "clear": clear,
            "means": {v: round(m, 2) for v, m in means.items()}}


def _signed(x: float) -> str:
    return f"{x + 0.0:+.2f}" if round(x, 2) != 0 else "0.00"


def means_of(c: dict) -> str:
    """With more than two settings, every setting's mean accuracy over the matched cells."""
    if len(c["means"]) < 3:
        return ""
    return " Means: " + ", ".join(f"{v} {m:.1f}" for v, m in sorted(c["means"].items(), key=lambda x: -x[1])) + "."


def interval_text(c: dict) -> str:
    return f" (95% interval {c['ci95'][0]:+.1f} to {c['ci95'][1]:+.1f})" if c.get("ci95") else ""


def by_category(done: list[dict], axis: str) -> str:
    """' By category: knowledge X (+m, noise); reasoning Y (+m, clear).' for one axis."""
    parts = []
    for cat in CATEGORIES:
        n = max((r["battery"]["category"].get(cat, {}).get("n", 0) for r in done), default=0)
        c = compare_axis(done, axis, n, cat) if n else None
        if c is not None:
            parts.append(f"{cat}: {c['best']} ahead by {c['margin']:.1f}{interval_text(c)} "
                         f"({'clear' if c['clear'] else 'noise'}; one question = {100 / n:.1f})")
    return f" By category: {'; '.join(parts)}." if parts else ""


def findings(done: list[dict], n_eval: int) -> list[str]:
    if not done:
        return ["No cell has finished yet."]
    out = []
    for axis, question in QUESTIONS:
        c = compare_axis(done, axis, n_eval)
        if c is None:
            continue
        verdict = "a clear difference" if c["clear"] else "within noise"
        spread = f", standard error {c['se']:.1f}" if c["se"] is not None else ""
        if c["margin"] == 0:
            out.append(f"**{question}**: no difference between {c['best']} and {c['runner_up']} on {c['pairs']} "
                       f"matched cell pair(s).{by_category(done, axis)}")
            continue
        out.append(f"**{question}**: {c['best']} won, {c['margin']:+.1f} points of held-out accuracy over "
                   f"{c['runner_up']} on {c['pairs']} matched cell pair(s){spread}{interval_text(c)}: {verdict} "
                   f"(one question = {100 / n_eval:.1f} points).{means_of(c)}{by_category(done, axis)}")
    pairs = [(r["transfer"].get("knowledge"), r["transfer"].get("reasoning")) for r in done]
    pairs = [(k, r) for k, r in pairs if k is not None and r is not None]
    if pairs:
        k_mean, r_mean = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
        more = sum(k > r for k, r in pairs)
        before = [transfer(r["untrained"], r["teacher"]) for r in done if r.get("untrained")]
        base = [(b["knowledge"], b["reasoning"]) for b in before if None not in (b.get("knowledge"), b.get("reasoning"))]
        start = (f" Before training the same students stood at {statistics.fmean(b[0] for b in base):.2f} (knowledge) "
                 f"and {statistics.fmean(b[1] for b in base):.2f} (reasoning) of their teachers, so the change "
                 f"training made is {_signed(k_mean - statistics.fmean(b[0] for b in base))} and "
                 f"{_signed(r_mean - statistics.fmean(b[1] for b in base))}.") if base else ""
        out.append(f"**knowledge vs reasoning**: \"knowledge transfers more easily than reasoning\" is "
                   f"{'true' if k_mean > r_mean else 'false'} on this sweep: mean transfer (student/teacher) "
                   f"{k_mean:.2f} for knowledge vs {r_mean:.2f} for reasoning; knowledge higher in {more} of "
                   f"{len(pairs)} cells.{start}")
    else:
        out.append("**knowledge vs reasoning**: no cell has a transfer for both categories (a teacher scored 0).")
    best = max(done, key=lambda r: cell_accuracy(r) or 0)
    close = [r for r in done if (cell_accuracy(r) or 0) >= (cell_accuracy(best) or 0) - 2 * 100 / n_eval]
    cheap = min(close, key=lambda r: r["train_seconds"])
    out.append(f"**cost**: the best cell ({best['group']}, seed {best['settings']['seed']}) reached "
               f"{cell_accuracy(best):.1f}% in {best['train_seconds']:.1f} s of training; the cheapest within two questions of it "
               f"({cheap['group']}, seed {cheap['settings']['seed']}) took {cheap['train_seconds']:.1f} s.")
    return out


def render_md(m: dict, plots: dict[str, str]) -> str:
    lines = [f"# Sweep report: {m['name']}", "",
             f"{len(m['done'])} of {m['cells']} cells finished, {len(m['failed'])} failed, {len(m['pending'])} not run. "
             f"Battery: {m['battery_size']} held-out prompts. Machine: {m['machine']}.", ""]
    t = m["timings"]
    if t["runs"]:
        lines += [f"Time: shared teacher work {t['shared_s'] / 60:.1f} min (teacher jobs {t['per_phase']['teacher']:.0f} s, "
                  f"ensembles {t['per_phase']['ensemble']:.0f} s, untrained students {t['per_phase']['student']:.0f} s, "
                  f"model loads included), {t['cells_timed']} cells {t['cells_s'] / 60:.1f} min "
                  f"({t['cells_s'] / max(1, t['cells_timed']):.0f} s each on average); work cut off by an "
                  f"interruption is not counted.", ""]
    lines += ["## Findings", ""]
    lines += [f"- {f}" for f in m["findings"]]
    lines += ["", "## Every cell (mean ± spread over seeds; accuracy in %, transfer = student / teacher)", "",
              f"Same in every cell: {', '.join(m['fixed']) or 'nothing'}. Teacher: the cell's teacher (the best "
              f"of several, per category) on the battery; untrained: the student before training.", "",
              "| cell | seeds | prompts | examples | accuracy | knowledge | reasoning | transfer K | transfer R "
              "| teacher | untrained | train s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in m["table"]:
        lines.append(f"| {r['group']} | {r['seeds']} | {r['size_n']} | {fmt(r['examples'], digits=0)} | "
                     f"{fmt(*r['accuracy'])} | {fmt(*r['knowledge'])} | {fmt(*r['reasoning'])} | "
                     f"{fmt(*r['transfer_knowledge'], digits=2)} | {fmt(*r['transfer_reasoning'], digits=2)} | "
                     f"{fmt(r['teacher'])} | {fmt(r['untrained'])} | {fmt(*r['train_seconds'], digits=0)} |")
    lines += detail_tables(m)
    if m["failed"]:
        lines += ["", "## Failed cells", ""] + [f"- {f['group']}, seed {f['seed']}: {f['error']}" for f in m["failed"]]
    if m["pending"]:
        lines += ["", f"## Not run yet: {len(m['pending'])} cells (rerun the sweep to continue)"]
    lines += ["", "## Plots", ""] + [f"![{t}](plots/{n})" for n, t in plots.items()]
    return "\n".join(lines) + "\n"


def detail_tables(m: dict) -> list[str]:
    """Accuracy per task and per (category, level): teachers and untrained students, then every cell."""
    cols = sorted({k for r in m["table"] for k in r.get("detail", {})}, key=lambda k: (k.startswith("level"), k))
    if not cols:
        return []
    names = [k.split(":", 1)[1] for k in cols]
    out = ["", "## Battery detail (accuracy in % per task and per category/level)", "",
           "| model | " + " | ".join(names) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, b in m["references"].items():
        vals = [b[k.split(":")[0]].get(k.split(":", 1)[1], {}).get("accuracy") for k in cols]
        out.append(f"| {name} | " + " | ".join(fmt(None if v is None else 100 * v) for v in vals) + " |")
    for r in m["table"]:
        out.append(f"| {r['group']} | " + " | ".join(fmt(r["detail"].get(k)) for k in cols) + " |")
    return out


def write_report(folder: Path, plan) -> dict:
    from .plots import draw_all

    folder = Path(folder)
    m = collect(folder, plan)
    plots = draw_all(m["done"], folder / "plots")
    m["plots"] = plots
    md = render_md(m, plots)
    artifacts.write_json(folder / "sweep.json", {k: v for k, v in m.items()})
    artifacts.write_text(folder / "sweep_report.md", md)
    artifacts.write_text(folder / "sweep_report.html", htmlpage.render(md, folder, title=f"Sweep report: {plan.sweep.name}"))
    return m
