"""Statistics every report uses: paired bootstrap intervals, exact binomial tests, AUROC (pooled and
within prompt). Pure functions of lists; numpy for the resampling.

Intervals are percentile bootstraps over prompts (the unit that was sampled), paired: each resample
draws prompts with replacement and takes the statistic on both sides for the same prompts. The seed is
fixed, so a report is reproducible to the digit.
"""
from __future__ import annotations

from math import comb

import numpy as np

RESAMPLES = 4000
SEED = 0


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (sign test, exact McNemar)."""
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _resample_index(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(draws: np.ndarray) -> list[float] | None:
    """The 2.5 and 97.5 percentiles of finite bootstrap draws (None when fewer than 95% are finite)."""
    ok = draws[np.isfinite(draws)]
    if ok.size < 0.95 * draws.size or ok.size == 0:
        return None
    return [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))]


def paired_delta(before: list[float], after: list[float]) -> dict:
    """Mean of after - before over the same units, with its paired bootstrap 95% interval."""
    b, a = np.asarray(before, float), np.asarray(after, float)
    if b.size == 0:
        return {"before": None, "after": None, "delta": None, "ci95": None, "n": 0}
    diff = a - b
    draws = diff[_resample_index(diff.size)].mean(1)
    return {"before": float(b.mean()), "after": float(a.mean()), "delta": float(diff.mean()),
            "ci95": interval(draws), "n": int(diff.size)}


def paired_ratio_delta(num_before, den_before, num_after, den_after) -> dict:
    """Change in a ratio of sums (say, seconds per token) over the same units, with its bootstrap interval."""
    arrays = [np.asarray(x, float) for x in (num_before, den_before, num_after, den_after)]
    n = arrays[0].size
    if n == 0:
        return {"before": None, "after": None, "delta": None, "ci95": None, "n": 0}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = lambda num, den: num.sum(-1) / den.sum(-1)  # noqa: E731
        idx = _resample_index(n)
        before, after = ratio(arrays[0], arrays[1]), ratio(arrays[2], arrays[3])
        draws = ratio(arrays[2][idx], arrays[3][idx]) - ratio(arrays[0][idx], arrays[1][idx])
    return {"before": float(before), "after": float(after), "delta": float(after - before), "ci95": interval(draws),
            "n": n}


def gap_recovered(teacher: list[float], alone: list[float], distilled: list[float]) -> dict:
    """(distilled - alone) / (teacher - alone) on per-prompt scores, with a paired bootstrap interval.
    None where the teacher is not ahead of the student trained alone (no gap to recover); resamples
    without a gap count as undefined, and too many of them leave the interval undefined too."""
    t, a, d = (np.asarray(x, float) for x in (teacher, alone, distilled))
    if t.size == 0 or t.mean() <= a.mean():
        return {"value": None, "ci95": None, "n": int(t.size)}
    idx = _resample_index(t.size)
    gap = t[idx].mean(1) - a[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(gap > 0, (d[idx].mean(1) - a[idx].mean(1)) / gap, np.nan)
    return {"value": float((d.mean() - a.mean()) / (t.mean() - a.mean())), "ci95": interval(draws), "n": int(t.size)}


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """P(score of a random correct sample > that of a random wrong one), ties count half."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def within_prompt_auroc(scores: list[float], labels: list[bool], groups: list[str]) -> dict:
    """AUROC over pairs of one prompt's samples only (a correct and a wrong answer to the same prompt):
    whether the score ranks one prompt's samples right, which is what selection needs, free of prompt
    difficulty. With a bootstrap interval over prompts. -> {value, ci95, prompts, pairs}."""
    by: dict[str, list[tuple[float, bool]]] = {}
    for s, y, g in zip(scores, labels, groups):
        by.setdefault(g, []).append((s, bool(y)))
    wins, pairs = [], []
    for items in by.values():
        pos = np.array([s for s, y in items if y])
        neg = np.array([s for s, y in items if not y])
        if pos.size and neg.size:
            wins.append((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
            pairs.append(pos.size * neg.size)
    if not pairs:
        return {"value": None, "ci95": None, "prompts": 0, "pairs": 0}
    w, p = np.asarray(wins, float), np.asarray(pairs, float)
    idx = _resample_index(w.size)
    return {"value": float(w.sum() / p.sum()), "ci95": interval(w[idx].sum(1) / p[idx].sum(1)),
            "prompts": int(w.size), "pairs": int(p.sum())}


def mean_ci(values: list[float]) -> dict:
    """Mean with a bootstrap 95% interval (for a set of runs, e.g. seeds)."""
    v = np.asarray(values, float)
    if v.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    if v.size == 1:
        return {"mean": float(v[0]), "ci95": None, "n": 1}
    return {"mean": float(v.mean()), "ci95": interval(v[_resample_index(v.size)].mean(1)), "n": int(v.size)}
