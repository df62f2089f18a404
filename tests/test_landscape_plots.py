"""Plots: (fig, axes) returned, labelled, shared scales, NaN gaps; the three-line headline."""

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from forgetting_sam.landscape import (
    loss_line,
    loss_surface,
    plot_contour,
    plot_density,
    plot_line,
    plot_surface_3d,
    plot_surfaces,
    random_direction,
    random_plane,
    spectral_density,
)


def models():
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        out.append(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    return out


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 4, generator=g), torch.randint(0, 3, (24,), generator=g)


def test_headline_three_lines_shared_plane(batch):
    model_a, *_ = ms = models()
    plane = random_plane(model_a, seed=0)
    surfaces = [loss_surface(m, plane, batch, F.cross_entropy, steps=5, progress=False) for m in ms]
    _, axes = plot_surfaces(surfaces, titles=["SGD", "SAM", "OBF"])
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["SGD", "SAM", "OBF"]
    # Same levels on every panel: one colour scale.
    lo = min(float(s.loss.min()) for s in surfaces)
    hi = max(float(s.loss.max()) for s in surfaces)
    for ax in axes:
        levels = ax.collections[0].levels  # the filled ContourSet
        assert math.isclose(levels[0], lo, rel_tol=1e-6) and math.isclose(levels[-1], hi, rel_tol=1e-6)
        assert ax.texts, "contour levels must be labelled"
        assert ax.get_xlabel().startswith("α")
    assert axes[0].get_ylabel().startswith("β")
    _, axes3 = plot_surfaces(surfaces, titles=["SGD", "SAM", "OBF"], kind="surface", metric="accuracy")
    assert axes3[0].get_zlabel().startswith("accuracy")
    matplotlib.pyplot.close("all")


def test_line_contour_surface_and_nan_gaps(batch):
    model = models()[0]
    line = loss_line(model, random_direction(model), batch, F.cross_entropy, steps=6, progress=False)
    line.loss[2] = math.nan  # a non-finite point: drawn as a gap
    fig, ax = plot_line([line, line], labels=["a", "b"], title="two")
    ydata = ax.lines[0].get_ydata()
    assert np.isnan(ydata[2]) and ax.get_title() == "two" and ax.get_ylabel() == "loss"
    surf = loss_surface(model, random_plane(model), batch, F.cross_entropy, steps=4, progress=False)
    surf.loss[1, 1] = math.nan
    fig, ax = plot_contour(surf)
    assert ax.get_title() and fig.axes[-1].get_ylabel() == "loss"  # colour bar with units
    fig, ax = plot_surface_3d(surf)
    assert ax.name == "3d"
    with pytest.raises(ValueError, match="needs a 2-D landscape"):
        plot_contour(line)
    with pytest.raises(ValueError, match="needs a 1-D landscape"):
        plot_line(surf)
    with pytest.raises(ValueError, match="titles has 1 entries for 2 surfaces"):
        plot_surfaces([surf, surf], titles=["x"])
    with pytest.raises(ValueError, match="Invalid metric"):
        plot_contour(surf, metric="f1")
    matplotlib.pyplot.close("all")


def test_density_plot(batch):
    model = models()[0]
    sd = spectral_density(model, batch, F.cross_entropy, steps=10, progress=False)
    _, ax = plot_density([sd, sd], labels=["a", "b"])
    assert ax.get_yscale() == "log" and "eigenvalue" in ax.get_xlabel() and len(ax.lines) == 2
    matplotlib.pyplot.close("all")
