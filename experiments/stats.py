"""The statistics of the evidence studies: mean ± standard error, a paired test across seeds,
and Kendall τ with a bootstrap confidence interval over runs.

Kendall τ reuses :func:`forgetting_sam.forgetting.correlate` (scipy's τ-b plus a percentile
bootstrap over runs); this module adds only what the package does not have.

Example:
    >>> mean_se([0.9, 0.92, 0.91])
    (0.91, 0.0057735...)
    >>> paired_test([0.91, 0.92, 0.93], [0.90, 0.90, 0.92]).p_t
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgetting_sam.forgetting import CorrelationResult, correlate

__all__ = ["PairedTest", "TauDifference", "format_mean_se", "kendall_ci", "kendall_difference", "mean_se",
           "paired_test"]


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Sample mean and standard error of the mean, ``s / √n`` with ``s`` the ``n − 1`` standard
    deviation. One value gives SE NaN; no value raises ValueError."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_se needs at least one value")
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))


def format_mean_se(mean: float, se: float, *, scale: float = 100.0, digits: int = 2) -> str:
    """``"91.23 ± 0.45"`` (``scale=100`` turns accuracies into percent); SE NaN prints ``± –``."""
    m = f"{mean * scale:.{digits}f}"
    return f"{m} ± –" if not math.isfinite(se) else f"{m} ± {se * scale:.{digits}f}"


@dataclass
class PairedTest:
    """A paired comparison of ``a`` against ``b`` (the same seeds in the same order).

    Attributes:
        n: pairs.
        mean_diff: mean of ``a − b``.
        se_diff: standard error of that mean.
        ci: 95 % t interval of the mean difference.
        t, df, p_t: paired t statistic, its degrees of freedom, two-sided p-value.
        p_wilcoxon: two-sided exact Wilcoxon signed-rank p-value (NaN when every
            difference is zero); with 5 pairs its smallest possible value is 0.0625.
        wins: pairs with ``a > b``; ``losses``: pairs with ``a < b``.
    """

    n: int
    mean_diff: float
    se_diff: float
    ci: tuple[float, float]
    t: float
    df: int
    p_t: float
    p_wilcoxon: float
    wins: int
    losses: int


def paired_test(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> PairedTest:
    """Paired t-test (``scipy.stats.ttest_rel``) and Wilcoxon signed-rank test of ``a`` vs ``b``.

    Raises:
        ValueError: lengths differ or fewer than 2 pairs.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_test needs two 1-D sequences of equal length, got {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError("paired_test needs at least 2 pairs")
    d = a - b
    mean, se = mean_se(d)
    n = d.size
    if se > 0:
        r = stats.ttest_rel(a, b)
        t, p = float(r.statistic), float(r.pvalue)
    else:  # every difference equal: t is ±∞ (or undefined when they are all zero)
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
        p = 0.0 if mean != 0 else 1.0
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se if se > 0 else 0.0
    if np.any(d != 0):
        p_w = float(stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        p_w = math.nan
    return PairedTest(n=n, mean_diff=mean, se_diff=se, ci=(mean - half, mean + half), t=t, df=n - 1,
                      p_t=p, p_wilcoxon=p_w, wins=int((d > 0).sum()), losses=int((d < 0).sum()))


def kendall_ci(runs: Iterable[Mapping[str, Any]], measure: str, target: str = "test_acc", *,
               bootstrap: int = 2000, seed: int = 0, confidence: float = 0.95) -> CorrelationResult:
    """Kendall τ-b of ``measure`` against ``target`` across runs, with a percentile bootstrap
    interval over runs: :func:`forgetting_sam.forgetting.correlate`, named for this use."""
    return correlate(list(runs), measure, target, method="kendall", bootstrap=bootstrap, seed=seed,
                     confidence=confidence)


@dataclass
class TauDifference:
    """``sign_a·τ_a − sign_b·τ_b`` over the same runs, with a paired bootstrap interval.

    With each sign the direction a hypothesis predicts, a positive value means measure ``a``
    supports its hypothesis more strongly than ``b`` does; the interval resamples runs once for
    both measures, so it accounts for their dependence.
    """

    diff: float
    ci: tuple[float, float]
    tau_a: float
    tau_b: float
    n: int


def kendall_difference(runs: Iterable[Mapping[str, Any]], measure_a: str, measure_b: str,
                       target: str = "test_acc", *, sign_a: int = 1, sign_b: int = 1, bootstrap: int = 2000,
                       seed: int = 0, confidence: float = 0.95) -> TauDifference:
    """Is ``measure_a`` more strongly (signed) rank-correlated with ``target`` than ``measure_b``?

    Uses the runs that carry all three numbers. Raises ValueError under 3 such runs.
    """
    from scipy import stats

    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    rows = [r for r in runs if ok(r.get(measure_a)) and ok(r.get(measure_b)) and ok(r.get(target))]
    if len(rows) < 3:
        raise ValueError(f"kendall_difference needs at least 3 runs with {measure_a}, {measure_b} and {target}")
    a = np.array([r[measure_a] for r in rows], dtype=float)
    b = np.array([r[measure_b] for r in rows], dtype=float)
    y = np.array([r[target] for r in rows], dtype=float)

    def taus(i):
        return float(stats.kendalltau(a[i], y[i]).statistic), float(stats.kendalltau(b[i], y[i]).statistic)

    ta, tb = taus(np.arange(len(y)))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(bootstrap):
        i = rng.integers(0, len(y), len(y))
        da, db = taus(i)
        if math.isfinite(da) and math.isfinite(db):
            diffs.append(sign_a * da - sign_b * db)
    q = (1 - confidence) / 2
    ci = tuple(float(v) for v in np.quantile(diffs, [q, 1 - q])) if diffs else (math.nan, math.nan)
    return TauDifference(diff=sign_a * ta - sign_b * tb, ci=ci, tau_a=ta, tau_b=tb, n=len(y))
