"""correlate(): scipy agreement, hand-computed τ, run directories, skipping, bad input."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from forgetting_sam.forgetting import correlate, correlate_all, run_numbers


def runs_from(xs, ys, key="forgot_frac"):
    return [{"name": f"r{i}", key: x, "test_acc": y} for i, (x, y) in enumerate(zip(xs, ys))]


def test_hand_computed_kendall_tau():
    # pairs: (1,2) C, (1,3) C, (1,4) C, (2,3) D, (2,4) C, (3,4) C -> (5 - 1) / 6
    r = correlate(runs_from([1, 2, 3, 4], [1, 3, 2, 4]), "forgot_frac")
    assert r.tau == pytest.approx(4 / 6)
    assert r.n == 4 and r.skipped == [] and r.ci is None
    assert r.runs == ["r0", "r1", "r2", "r3"]


def test_matches_scipy_on_known_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    y = 0.5 * x + rng.normal(size=15)
    y[3] = y[4]  # ties: τ-b
    runs = runs_from(x, y)
    r = correlate(runs, "forgot_frac", "test_acc")
    ref = stats.kendalltau(x, y)
    assert r.tau == pytest.approx(ref.statistic, abs=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    s = correlate(runs, "forgot_frac", method="spearman")
    ref = stats.spearmanr(x, y)
    assert s.tau == pytest.approx(ref.statistic) and s.p_value == pytest.approx(ref.pvalue)


def test_gap_target_and_nested_keys():
    runs = [{"name": f"r{i}", "train_acc": tr, "test_acc": te, "forgetting": {"count": c}}
            for i, (tr, te, c) in enumerate([(1.0, 0.9, 3), (0.99, 0.8, 1), (0.95, 0.9, 2), (1.0, 0.7, 0)])]
    r = correlate(runs, "forgetting.count", "gap")
    gaps = [0.1, 0.19, 0.05, 0.3]
    assert np.allclose(r.y, gaps)
    assert r.tau == pytest.approx(stats.kendalltau([3, 1, 2, 0], gaps).statistic)
    # an explicit gap key wins over train_acc - test_acc
    runs[0]["train_test_gap"] = 5.0
    assert correlate(runs, "forgetting.count", "gap").y[0] == 5.0


def test_runs_without_the_measure_are_skipped_and_warned():
    runs = runs_from([1, 2, 3, 4], [2, 1, 4, 3])
    del runs[1]["forgot_frac"]
    runs[2]["forgot_frac"] = float("nan")
    runs.append({"name": "late", "forgot_frac": 0.5, "test_acc": 3, })
    runs.append({"name": "no_target", "forgot_frac": 9})
    with pytest.warns(UserWarning, match=r"skipped 3 run\(s\): r1 .*r2 .*no_target"):
        r = correlate(runs, "forgot_frac")
    assert r.skipped == ["r1", "r2", "no_target"]
    assert r.runs == ["r0", "r3", "late"]
    assert r.tau == pytest.approx(stats.kendalltau([1, 4, 0.5], [2, 3, 3]).statistic)


def test_fewer_than_three_runs_is_an_error():
    with pytest.raises(ValueError, match="at least 3 runs .* got 2"):
        correlate(runs_from([1, 2], [1, 2]), "forgot_frac")
    runs = runs_from([1, 2, 3], [1, 2, 3])
    del runs[0]["forgot_frac"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="got 2 .*skipped: r0"):
            correlate(runs, "forgot_frac")


def test_bootstrap_is_seeded_and_matches_a_direct_resample():
    rng = np.random.default_rng(3)
    x = rng.normal(size=8)
    y = x + rng.normal(size=8)
    runs = runs_from(x, y)
    a = correlate(runs, "forgot_frac", bootstrap=50, seed=7)
    b = correlate(runs, "forgot_frac", bootstrap=50, seed=7)
    assert a.ci == b.ci and a.ci[0] <= a.ci[1]
    gen = np.random.default_rng(7)
    taus = []
    for _ in range(50):
        i = gen.integers(0, 8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = stats.kendalltau(x[i], y[i]).statistic
        if not math.isnan(t):
            taus.append(t)
    assert a.ci == pytest.approx(tuple(np.quantile(taus, [0.025, 0.975])))
    assert correlate(runs, "forgot_frac", bootstrap=50, seed=8).ci != a.ci


def write_run(d, summary, records):
    d.mkdir()
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_run_directories(tmp_path):
    specs = [(0.9, [0.1, 0.3]), (0.8, [0.0, 0.1]), (0.95, [0.4, 0.4]), (0.7, [0.05, 0.05])]
    dirs = []
    for i, (acc, ff) in enumerate(specs):
        d = tmp_path / f"run{i}"
        write_run(d, {"final_test_acc": acc, "final_train_acc": 1.0, "epochs_done": 2, "rho": 0.05,
                      "num_parameters": 100, "best_test_acc": acc, "final_test_loss": 1.0 - acc,
                      "forgetting": {"unforgettable_frac": i / 10, "num_examples": 50, "updates": 9}},
                  [{"epoch": e, "forgot_frac": f, "test_acc": 0.5 + e / 10, "lr": 0.1} for e, f in enumerate(ff)])
        dirs.append(d)
    run = run_numbers(dirs[0])
    assert run["name"] == "run0"
    assert run["forgot_frac"] == pytest.approx(0.2) and run["forgot_frac.last"] == 0.3
    assert run["test_acc"] == 0.9  # the summary's final_test_acc wins over the records
    assert run["train_acc"] == 1.0
    assert run["test_acc.mean"] == pytest.approx(0.55)
    assert run["forgetting.unforgettable_frac"] == 0.0
    assert run_numbers(dirs[0], reduce="last")["forgot_frac"] == 0.3
    r = correlate([str(d) for d in dirs], "forgot_frac", "test_acc")
    assert r.tau == pytest.approx(stats.kendalltau([0.2, 0.05, 0.4, 0.05], [0.9, 0.8, 0.95, 0.7]).statistic)
    results = correlate_all(dirs, target="test_acc")
    names = [res.measure for res in results]
    assert "forgot_frac" in names and "forgetting.unforgettable_frac" in names
    assert sorted(names) == ["forgetting.unforgettable_frac", "forgot_frac"]  # no epochs, lr, rho, accs
    gap = correlate(dirs, "forgot_frac", "gap")
    assert np.allclose(gap.y, [0.1, 0.2, 0.05, 0.3])
    # without a summary, the last record's accuracy is the target, not the mean over epochs
    (dirs[0] / "summary.json").unlink()
    assert run_numbers(dirs[0])["test_acc"] == pytest.approx(0.6)


def test_bad_input(tmp_path):
    runs = runs_from([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="method"):
        correlate(runs, "forgot_frac", method="pearson")
    with pytest.raises(ValueError, match="bootstrap"):
        correlate(runs, "forgot_frac", bootstrap=-1)
    with pytest.raises(TypeError, match="not a single run"):
        correlate(runs[0], "forgot_frac")
    with pytest.raises(TypeError, match=r"runs\[1\]"):
        correlate([runs[0], 3, runs[2]], "forgot_frac")
    with pytest.raises(FileNotFoundError, match="neither summary.json nor metrics.jsonl"):
        correlate([tmp_path, tmp_path, tmp_path], "forgot_frac")
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl:1 is not valid JSON"):
        run_numbers(tmp_path)
