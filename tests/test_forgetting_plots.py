"""Plots draw what the data say: bar heights, tile titles, τ in the title, labelled axes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from forgetting_sam.forgetting import ForgettingTracker, OutputBiasRecorder, correlate
from forgetting_sam.forgetting.plots import (
    plot_correlation,
    plot_example_gallery,
    plot_forgetting_curve,
    plot_forgetting_histogram,
    plot_output_bias,
)


@pytest.fixture
def tracker():
    t = ForgettingTracker(6)
    seqs = [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 1, 1], [1, 0, 0, 1]]
    for s in range(4):
        t.update_correct(torch.arange(6), torch.tensor([q[s] for q in seqs], dtype=torch.bool))
    yield t
    plt.close("all")


def test_histogram_bars_and_never_learned(tracker):
    _fig, ax = plot_forgetting_histogram(tracker)
    heights = [p.get_height() for p in ax.patches]
    # learned examples' counts: [2, 0, -, 1, 0, 1] -> h = [2, 2, 1]; never learned: 1
    assert heights == [2, 2, 1, 1]
    assert ax.get_xlabel() and ax.get_ylabel() and "unforgettable" in ax.get_title()


def test_gallery_shows_most_forgotten_and_unforgettable(tracker):
    images = torch.arange(6 * 64, dtype=torch.float32).reshape(6, 64)  # 8x8 digits, flattened
    _fig, axes = plot_example_gallery(tracker, images, labels=torch.arange(6) % 3, k=3)
    assert axes.shape == (2, 3)
    top = [a.get_title().split("\n")[0] for a in axes[0]]
    assert top == ["#2 2", "#0 0", "#3 0"]  # never learned (4 presentations) first, then 2, 1, ...
    assert axes[0, 0].get_title().endswith("never learned") and axes[0, 1].get_title().endswith("forgot 2×")
    bottom = [a.get_title().split("\n")[0] for a in axes[1] if a.get_title()]
    assert bottom == ["#1 1", "#4 1"]  # unforgettable, earliest learned first
    assert axes[0, 0].get_images()[0].get_array().shape == (8, 8)
    with pytest.raises(ValueError, match="images holds 5 examples"):
        plot_example_gallery(tracker, images[:5])


def test_curves_and_output_bias(tracker):
    _, ax = plot_forgetting_curve(tracker)
    line = ax.get_lines()[0]
    # forget events: ex 0 and 5 at step 1, ex 3 at step 2, ex 0 at step 3
    assert np.allclose(line.get_ydata(), [0, 2 / 6, 1 / 6, 1 / 6])
    records = [{"epoch": e, "forgot_frac": 0.1 * e, "kl": 0.01} for e in range(5)]
    _, ax = plot_forgetting_curve(records, keys=("forgot_frac", "kl"), x="epoch")
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="no record carries"):
        plot_forgetting_curve(records, keys=("missing",))

    rec = OutputBiasRecorder(3)
    for s in range(4):
        rec.update(torch.tensor([[float(s), 0.0, 0.0]] * 2))
    _, ax = plot_output_bias(rec)
    assert len(ax.get_lines()) == 4  # three classes and the uniform level
    assert np.allclose(ax.get_lines()[0].get_ydata(), rec.history()["mean_prediction"][:, 0])
    for what in ("per_class_bias", "entropy"):
        _fig, ax = plot_output_bias(rec, what=what)
        assert ax.get_ylabel() and ax.get_title()
    with pytest.raises(ValueError, match="what"):
        plot_output_bias(rec, what="nope")


def test_correlation_scatter_title():
    runs = [{"name": f"r{i}", "m": x, "test_acc": y} for i, (x, y) in enumerate([(1, 1), (2, 3), (3, 2), (4, 4)])]
    res = correlate(runs, "m", bootstrap=20)
    _fig, ax = plot_correlation(res)
    assert f"τ = {res.tau:.3f}" in ax.get_title()
    assert "bootstrap CI" in ax.get_title()
    assert np.allclose(ax.collections[0].get_offsets(), np.c_[res.x, res.y])
    assert ax.get_xlabel() == "m" and ax.get_ylabel() == "test accuracy"
    plt.close("all")
