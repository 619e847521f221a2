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


def fieller_ratio(num: list[float], den: list[float], z: float = 1.96) -> dict:
    """Ratio of two paired means, mean(num) / mean(den), with Fieller's 95% interval.

    Per unit (prompt) i: num_i and den_i (say distilled_i - alone_i and teacher_i - alone_i). With means a,
    b, variances of the means v11, v22 and covariance v12, the interval is the set of r with
    (a - r b)^2 <= z^2 (v11 - 2 r v12 + r^2 v22): a bounded interval exactly when the denominator's own
    interval excludes zero (b^2 > z^2 v22). Otherwise the ratio is not reported ("value": None): a
    teacher 1 point ahead made the old point estimate read 1000 %.
    """
    x, y = np.asarray(num, float), np.asarray(den, float)
    n = x.size
    if n < 2:
        return {"value": None, "ci95": None, "n": int(n), "reason": "too few prompts"}
    a, b = x.mean(), y.mean()
    cov = np.cov(np.stack([x, y]), ddof=1) / n
    v11, v22, v12 = cov[0, 0], cov[1, 1], cov[0, 1]
    qa = b * b - z * z * v22
    if qa <= 0:
        return {"value": None, "ci95": None, "n": int(n), "reason": "the denominator's interval includes zero"}
    qb = a * b - z * z * v12
    qc = a * a - z * z * v11
    disc = max(0.0, qb * qb - qa * qc)
    lo, hi = (qb - disc ** 0.5) / qa, (qb + disc ** 0.5) / qa
    return {"value": float(a / b), "ci95": [float(lo), float(hi)], "n": int(n), "reason": None}


def gap_recovered(teacher: list[float], alone: list[float], distilled: list[float]) -> dict:
    """(distilled - alone) / (teacher - alone) on per-prompt scores, with Fieller's interval (fieller_ratio),
    and the two differences it is made of, each with its paired bootstrap interval. The ratio is None
    unless the teacher's lead over the student trained alone has an interval that excludes zero."""
    t, a, d = (np.asarray(v, float) for v in (teacher, alone, distilled))
    ratio = fieller_ratio(list(d - a), list(t - a))
    if t.size and t.mean() <= a.mean():
        ratio = {**ratio, "value": None, "ci95": None, "reason": "the teacher is not ahead of the student trained alone"}
    return {**ratio, "distilled_minus_alone": paired_delta(list(a), list(d)),
            "teacher_minus_alone": paired_delta(list(a), list(t))}


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
