"""The evidence statistics against hand computations and known answers, and a smoke run of
each study script (experiments/, issue 7)."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.stats import (  # noqa: E402  (after the sys.path line above)
    format_mean_se,
    kendall_ci,
    kendall_difference,
    mean_se,
    paired_test,
)


def test_mean_se_by_hand():
    x = [0.90, 0.92, 0.91, 0.95]
    m = sum(x) / 4
    var = sum((v - m) ** 2 for v in x) / 3  # n − 1
    mu, se = mean_se(x)
    assert mu == pytest.approx(m, abs=1e-15)
    assert se == pytest.approx(math.sqrt(var / 4), rel=1e-12)
    assert mean_se([0.5])[0] == 0.5 and math.isnan(mean_se([0.5])[1])
    with pytest.raises(ValueError):
        mean_se([])


def test_format_mean_se():
    assert format_mean_se(0.91234, 0.00456) == "91.23 ± 0.46"
    assert format_mean_se(0.5, float("nan")) == "50.00 ± –"
    assert format_mean_se(0.0123, 0.0004, scale=1, digits=3) == "0.012 ± 0.000"


def test_paired_t_matches_hand_computation():
    a = [0.81, 0.84, 0.80, 0.86, 0.83]
    b = [0.80, 0.82, 0.81, 0.83, 0.80]
    d = [x - y for x, y in zip(a, b)]  # 0.01, 0.02, -0.01, 0.03, 0.03
    n = 5
    dbar = sum(d) / n
    sd = math.sqrt(sum((v - dbar) ** 2 for v in d) / (n - 1))
    t = dbar / (sd / math.sqrt(n))
    r = paired_test(a, b)
    assert r.n == 5 and r.df == 4
    assert r.mean_diff == pytest.approx(dbar)
    assert r.se_diff == pytest.approx(sd / math.sqrt(n))
    assert r.t == pytest.approx(t, rel=1e-9)
    # two-sided p from the t distribution with 4 degrees of freedom, by numerical integration
    # of its density (independent of scipy.stats.ttest_rel)
    def density(u, k=4):
        c = math.gamma((k + 1) / 2) / (math.sqrt(k * math.pi) * math.gamma(k / 2))
        return c * (1 + u * u / k) ** (-(k + 1) / 2)
    grid = np.linspace(abs(t), 300, 100_001)
    tail = np.trapezoid(density(grid), grid) if hasattr(np, "trapezoid") else np.trapz(density(grid), grid)
    assert r.p_t == pytest.approx(2 * tail, rel=1e-3)
    # 95 % interval: t quantile for 4 df is 2.7764451
    half = 2.7764451052 * sd / math.sqrt(n)
    assert r.ci == pytest.approx((dbar - half, dbar + half), rel=1e-6)
    assert (r.wins, r.losses) == (4, 1)
    # Wilcoxon exact, by enumerating the 2^5 equally likely sign patterns of the ranks of |d|
    # (as floats the five |d| are distinct, so the ranks are 1..5 and the exact null applies).
    order = sorted(range(n), key=lambda i: abs(d[i]))
    rank = {i: k + 1 for k, i in enumerate(order)}
    w_minus = sum(rank[i] for i in range(n) if d[i] < 0)
    sums = [sum(rank[i] for i in range(n) if mask >> i & 1) for mask in range(2 ** n)]
    low = sum(s <= w_minus for s in sums) / 2 ** n
    assert r.p_wilcoxon == pytest.approx(min(1.0, 2 * low), rel=1e-12)


def test_paired_test_wilcoxon_exact_small_case():
    # every difference positive and distinct: W− = 0, exact two-sided p = 2 / 2^5 = 0.0625
    a = [1.1, 2.2, 3.3, 4.4, 5.5]
    b = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert paired_test(a, b).p_wilcoxon == pytest.approx(0.0625)


def test_paired_test_degenerate_and_errors():
    r = paired_test([0.5, 0.6], [0.5, 0.6])
    assert r.mean_diff == 0 and r.p_t == 1.0 and math.isnan(r.p_wilcoxon)
    r = paired_test([0.6, 0.7], [0.5, 0.6])  # constant difference: t infinite, p 0
    assert r.t == math.inf and r.p_t == 0.0
    with pytest.raises(ValueError):
        paired_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        paired_test([1], [2])


def test_kendall_bootstrap_ci_covers_true_tau():
    # bivariate normal with correlation r: population Kendall τ = (2/π)·arcsin(r)
    rng = np.random.default_rng(1)
    r = 0.6
    n = 1500
    z = rng.standard_normal((n, 2))
    x = z[:, 0]
    y = r * z[:, 0] + math.sqrt(1 - r * r) * z[:, 1]
    runs = [{"name": f"r{i}", "m": float(a), "acc": float(b)} for i, (a, b) in enumerate(zip(x, y))]
    true_tau = 2 / math.pi * math.asin(r)
    c = kendall_ci(runs, "m", "acc", bootstrap=200, seed=0)
    assert c.n == n
    assert c.ci[0] < true_tau < c.ci[1]
    assert c.ci[1] - c.ci[0] < 0.08  # and the interval is tight at this size
    assert c.tau == pytest.approx(true_tau, abs=0.04)


def test_kendall_hand_case():
    # x = 1..4, y = 1, 3, 2, 4: 5 concordant and 1 discordant pair → τ = 4/6
    runs = [{"m": float(a), "acc": float(b)} for a, b in zip([1, 2, 3, 4], [1, 3, 2, 4])]
    assert kendall_ci(runs, "m", "acc", bootstrap=0).tau == pytest.approx(4 / 6)


def test_kendall_difference():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.standard_normal(n)
    runs = [{"good": float(v + 0.3 * rng.standard_normal()), "anti": float(-v + 0.3 * rng.standard_normal()),
             "noise": float(rng.standard_normal()), "y": float(v)} for v in y]
    # a measure that tracks y beats pure noise, and the interval says so
    d = kendall_difference(runs, "good", "noise", "y", bootstrap=300)
    assert d.diff == pytest.approx(d.tau_a - d.tau_b)
    assert d.ci[0] > 0.3
    # signs: "anti" predicted negative is as good as "good" predicted positive (same noise level)
    d = kendall_difference(runs, "good", "anti", "y", sign_b=-1, bootstrap=300)
    assert d.ci[0] < 0 < d.ci[1]
    # a measure against itself: exactly zero, every resample
    d = kendall_difference(runs, "good", "good", "y", bootstrap=50)
    assert d.diff == 0 and d.ci == (0.0, 0.0)
    with pytest.raises(ValueError):
        kendall_difference(runs[:2], "good", "noise", "y")


@pytest.mark.parametrize("script", ["study1_optimizers", "study2_micro_batch", "study3_correlation"])
def test_study_smoke(script, tmp_path, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    mod = importlib.import_module(f"experiments.{script}")
    try:
        assert mod.main(["--smoke", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")]) == 0
    finally:
        torch.set_num_threads(threads)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    study = script.split("_")[0]
    assert f"{study}_table.md" in files
    assert any(f.endswith(".csv") for f in files) and any(f.endswith(".png") for f in files)
    # resumable: a second call finds every run finished and trains nothing
    from experiments import common

    calls = []
    monkeypatch.setattr(common, "train", lambda cfg: calls.append(cfg))
    assert mod.main(["--smoke", "--out", str(tmp_path / "out2"), "--runs-dir", str(tmp_path / "runs")]) == 0
    assert calls == []
