"""The sweep's plots (matplotlib, PNG): one per question, drawn only when the sweep varies it.

Each plot uses the matched cells of its question: cells that another finished cell equals in
every setting but that question's axis (the same comparison the findings make). A point or bar
averages those cells (over seeds and the other settings); error bars are their standard deviation.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .. import reporting
from .battery import CATEGORIES
from .matched import cell_accuracy, label, rest_key


def _ms(values):
    v = [x for x in values if x is not None]
    return (statistics.fmean(v) if v else float("nan")), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _bars(ax, groups: dict[str, list[dict]], title: str, value) -> None:
    """Grouped bars: one group per setting, one bar per category (value(cell, category))."""
    names, width = list(groups), 0.8 / len(CATEGORIES)
    for j, cat in enumerate(CATEGORIES):
        stats = [_ms([value(r, cat) for r in groups[n]]) for n in names]
        ax.bar([i + j * width for i in range(len(names))], [s[0] for s in stats], width,
               yerr=[s[1] for s in stats], capsize=3, label=cat)
    ax.set_xticks([i + width * (len(CATEGORIES) - 1) / 2 for i in range(len(names))], names, rotation=15)
    ax.set_title(title)
    ax.legend()


def matched(done: list[dict], axis: str) -> list[dict]:
    """Cells that have a partner differing only in `axis` (for method, rank goes with it)."""
    values: dict[str, set] = {}
    for r in done:
        values.setdefault(rest_key(r, axis), set()).add(label(r["settings"], axis))
    return [r for r in done if len(values[rest_key(r, axis)]) > 1]


def _by(done: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in done:
        out.setdefault(label(r["settings"], key), []).append(r)
    return out


def draw_all(done: list[dict], folder: Path) -> dict[str, str]:
    """-> {file name: title} of the plots written to folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}

    def save(fig, name: str, title: str) -> None:
        reporting.save(fig, folder / name)
        written[name] = title

    sized = matched(done, "size")
    if sized:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, rs in sorted(_by(sized, "method").items()):
            sizes = sorted({r["size_n"] for r in rs})
            stats = [_ms([cell_accuracy(r) for r in rs if r["size_n"] == n]) for n in sizes]
            ax.errorbar(sizes, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=method)
        ax.set(xlabel="training prompts", ylabel="held-out accuracy (%)", title="Accuracy against dataset size")
        ax.legend()
        save(fig, "accuracy_vs_size.png", "Accuracy against dataset size, per method")
    methods = matched(done, "method") or done
    if methods:
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, _by(methods, "method"), "Transfer (student / teacher) per method", lambda r, c: r["transfer"].get(c))
        ax.axhline(1.0, color="grey", lw=0.8)
        save(fig, "transfer_by_method.png", "Knowledge vs reasoning transfer, per method")
    for key, name, title in (("targets", "targets.png", "Answers only vs reasoning traces"),
                             ("teachers", "teachers.png", "One vs several teachers")):
        groups = _by(matched(done, key), key)
        if len(groups) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            _bars(ax, groups, title + ": accuracy (%) per category", cell_accuracy)
            save(fig, name, title)
    if done:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, rs in sorted(_by(done, "method").items()):
            ax.scatter([r["train_seconds"] for r in rs], [cell_accuracy(r) for r in rs], label=method)
        ax.set(xlabel="training seconds", ylabel="held-out accuracy (%)", title="Cost against accuracy (every cell)")
        ax.legend()
        save(fig, "cost_vs_accuracy.png", "Cost (training seconds) against accuracy")
    return written
