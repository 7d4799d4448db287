"""The project's one uncertainty convention: a 95% CI of a mean over n seeds with Student's t.

Every README number, results file and error bar of theory/, mnist_aux/ and llm_bridge/ uses
these functions. ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with the sample standard deviation
``s`` (ddof = 1). A normal 1.96 would be 13% too narrow at n = 10 and 4% at n = 25.

Nested designs (students within bases) report the CI over the *outer* unit: the mean of
each outer unit first, then :func:`mean_ci` over those means (:func:`nested_mean_ci`).

The summary schema (a JSON object) is the same everywhere::

    {"n": int, "mean": float, "std": float, "sem": float, "ci95": [lo, hi]}

with ``std``, ``sem`` and the CI's half-width ``nan`` for n = 1 (no interval from one value).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95


def t_quantile(n: int) -> float:
    """``t_{0.975, n-1}``: the multiplier of the standard error for a 95% CI from ``n`` values (nan for n < 2)."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) if n >= 2 else float("nan")


def mean_ci(values, keep_values: bool = False) -> dict:
    """Mean and 95% t-interval of ``values`` (any shape, flattened): the summary schema above.

    ``keep_values`` adds ``"values"`` (the flattened inputs, for figures that plot each seed).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_ci needs at least one value")
    n = int(v.size)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    sem = std / math.sqrt(n) if n > 1 else float("nan")
    half = t_quantile(n) * sem
    out = {"n": n, "mean": mean, "std": std, "sem": sem, "ci95": [mean - half, mean + half]}
    if keep_values:
        out["values"] = v.tolist()
    return out


def half_width(values, axis: int = 0) -> np.ndarray:
    """The CI's half-width ``t_{0.975, n-1} * s / sqrt(n)`` along ``axis`` (n = that axis' length): for error bars."""
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[axis]
    if n < 2:
        return np.full(np.delete(v.shape, axis), np.nan)
    return t_quantile(n) * v.std(axis=axis, ddof=1) / math.sqrt(n)


def nested_mean_ci(values) -> dict:
    """Mean and 95% CI over the outer unit of ``values [outer, inner]`` (e.g. ``[bases, students]``).

    Each outer unit is averaged over its inner replicates first, so the interval says how the
    mean would move with other outer units (other pretrained bases), not only other students
    of the same ones. Adds ``"per_outer"`` (the outer means) and ``"inner_n"``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"nested_mean_ci needs values [outer, inner], got shape {v.shape}")
    outer = v.mean(axis=1)
    return mean_ci(outer) | {"per_outer": outer.tolist(), "inner_n": int(v.shape[1])}


def caption(n: int, unit: str = "seeds") -> str:
    """The words every figure uses for its error bars."""
    return f"error bars: 95% CI of the mean over {n} {unit} (Student's t, {n - 1} dof)"


def p_value(values) -> float:
    """Two-sided p-value of Student's one-sample t-test that the mean of ``values`` is 0 (the test behind
    :func:`mean_ci`'s interval: p < 0.05 exactly when the 95% CI excludes 0); nan for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size < 2:
        return float("nan")
    sem = v.std(ddof=1) / math.sqrt(v.size)
    if sem == 0:
        return 0.0 if v.mean() != 0 else 1.0
    return float(2 * stats.t.sf(abs(v.mean() / sem), v.size - 1))


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (as statsmodels' ``multipletests(method="holm")``):
    the i-th smallest is multiplied by ``m - i`` (i from 0), kept non-decreasing and at most 1; adjusted
    p < alpha rejects with family-wise error at most alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float | None = None) -> float:
    """The smallest true mean a two-sided level-``alpha`` (5 %) one-sample t-test on ``n`` units of standard
    deviation ``sd`` detects with probability ``power`` (the usual approximation
    ``(t_{1 - alpha/2} + t_{power}) sd / sqrt(n)``, n - 1 degrees of freedom)."""
    if n < 2:
        return float("nan")
    quantile = 0.5 + LEVEL / 2 if alpha is None else 1 - alpha / 2
    return float((stats.t.ppf(quantile, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))
