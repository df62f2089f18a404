"""The notebook widgets' logic, without a browser (forgetting_sam/widgets.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import copy

import numpy as np
import pytest
import torch

from forgetting_sam.widgets import Explorer, explorer, perturbation, toy_losses, trajectory


def _grad(fn, w):
    w = torch.as_tensor(w, dtype=torch.float64).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(w), w)
    return g


@pytest.mark.parametrize("name", ["two_basins", "valley"])
def test_one_sam_step_matches_hand_computation(name):
    loss = toy_losses()[name]
    w0 = torch.tensor(loss.start, dtype=torch.float64)
    rho, lr = 0.3, 0.1
    h = _grad(loss, w0)
    eps = rho * h / (h.norm() + 1e-12)
    expected = w0 - lr * _grad(loss, w0 + eps)
    path = trajectory(name, "sam", rho=rho, lr=lr, steps=1)
    np.testing.assert_allclose(path[0], w0.numpy())
    np.testing.assert_allclose(path[1], expected.numpy(), rtol=0, atol=1e-12)


def test_gd_asam_gsam_steps_match_hand_computation():
    loss = toy_losses()["valley"]
    w0 = torch.tensor([-2.0, 0.7], dtype=torch.float64)
    rho, lr, eta, alpha = 0.4, 0.05, 0.01, 0.4
    g = _grad(loss, w0)
    gd = trajectory("valley", "gd", lr=lr, start=w0.tolist(), steps=1)[1]
    np.testing.assert_allclose(gd, (w0 - lr * g).numpy(), atol=1e-12)

    t = w0.abs() + eta
    eps = rho * t**2 * g / ((t * g).norm() + 1e-12)
    asam = trajectory("valley", "asam", rho=rho, lr=lr, start=w0.tolist(), steps=1, eta=eta)[1]
    np.testing.assert_allclose(asam, (w0 - lr * _grad(loss, w0 + eps)).numpy(), atol=1e-12)

    gp = _grad(loss, w0 + rho * g / (g.norm() + 1e-12))
    gp_hat = gp / (gp.norm() + 1e-12)
    corrected = gp - alpha * (g - (g @ gp_hat) * gp_hat)
    gsam = trajectory("valley", "gsam", rho=rho, lr=lr, start=w0.tolist(), steps=1, alpha=alpha)[1]
    np.testing.assert_allclose(gsam, (w0 - lr * corrected).numpy(), atol=1e-12)


def test_perturbation_is_rho_along_the_gradient():
    loss = toy_losses()["two_basins"]
    point = (-0.5, 0.4)
    eps = perturbation("two_basins", point, "sam", rho=0.5)
    g = _grad(loss, point).numpy()
    np.testing.assert_allclose(np.linalg.norm(eps), 0.5, rtol=1e-9)
    np.testing.assert_allclose(eps / 0.5, g / np.linalg.norm(g), atol=1e-9)


def test_unknown_names_and_obf_explain_themselves():
    with pytest.raises(ValueError, match="Unknown toy loss"):
        trajectory("nope", "sam")
    with pytest.raises(ValueError, match="logits"):
        trajectory("valley", "obf")


def test_explorer_builds_and_redraws_when_a_slider_moves():
    ex = explorer("valley", lr=0.05, steps=5)
    assert isinstance(ex, Explorer)
    assert set(ex.sliders) == {"rho", "lr", "x0", "y0", "steps"}
    before = ex.lines["sam"].get_xydata().copy()
    assert before.shape == (6, 2)
    ex.sliders["rho"].value = 1.0
    after = ex.lines["sam"].get_xydata()
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, trajectory("valley", "sam", rho=1.0, lr=0.05,
                                                  start=toy_losses()["valley"].start, steps=5))
    ex.sliders["steps"].value = 8
    assert ex.lines["gd"].get_xydata().shape == (9, 2)
    ex.sliders["x0"].value = 1.0
    assert ex.lines["gd"].get_xydata()[0, 0] == pytest.approx(1.0)
    assert "ρ = 1.00" in ex.ax.get_title()


# ------------------------------------------------------------------------------ direction explorer
def _small_net_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(16, 4)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def test_shifted_logits_equal_a_moved_copy_and_leave_the_model_alone():
    from forgetting_sam.landscape import random_direction
    from forgetting_sam.widgets import shifted_logits

    model, x, _ = _small_net_and_batch()
    before = [p.detach().clone() for p in model.parameters()]
    d = random_direction(model, seed=3)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for (name, p) in moved.named_parameters():
            p.add_(0.7 * d[name])
    torch.testing.assert_close(shifted_logits(model, d, x, 0.7), moved(x).detach())
    torch.testing.assert_close(shifted_logits(model, d, x, 0.0), model(x).detach())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert model.training  # the mode is restored


def test_direction_explorer_follows_the_slider():
    import torch.nn.functional as F

    from forgetting_sam.landscape import random_direction
    from forgetting_sam.widgets import DirectionExplorer, direction_explorer, shifted_logits

    model, x, y = _small_net_and_batch()
    d = random_direction(model, seed=1)
    ex = direction_explorer(model, d, (x, y), F.cross_entropy, span=(-1.0, 1.0), steps=11, n_show=4)
    assert isinstance(ex, DirectionExplorer)
    model.eval()
    assert ex.state["alpha"] == 0.0
    with torch.no_grad():
        assert ex.state["loss"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)
    # the precomputed line agrees with the pure function at its grid points
    for i in (0, 5, 10):
        a = float(ex.line.alphas[i])
        assert float(ex.line.loss[i]) == pytest.approx(float(F.cross_entropy(shifted_logits(model, d, x, a), y)),
                                                       rel=1e-5)
    ex.slider.value = 0.6
    z = shifted_logits(model, d, x, 0.6)
    assert ex.state["alpha"] == pytest.approx(0.6)
    assert ex.state["loss"] == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-6)
    assert ex.state["accuracy"] == pytest.approx(float((z.argmax(1) == y).float().mean()))
    np.testing.assert_allclose(ex.marker.get_xydata()[0], [0.6, ex.state["loss"]], rtol=1e-6)
    probs = torch.softmax(z, -1)
    np.testing.assert_allclose(ex.state["label_prob"], probs[torch.arange(4), y[:4]].numpy(), rtol=1e-6)
    assert [b.get_height() for b in ex.bars] == pytest.approx(list(ex.state["label_prob"]))
    assert "α = +0.60" in ex.axes[1].get_title()


def test_contour_levels_log_when_positive_linear_otherwise():
    from matplotlib.colors import LogNorm

    from forgetting_sam.widgets import contour_levels

    kw = contour_levels(np.array([[0.05, 0.2], [1.0, 0.5]]), n=5)
    assert isinstance(kw["norm"], LogNorm)
    np.testing.assert_allclose(kw["levels"], [0.05, 0.05 * 20**0.25, 0.05 * 20**0.5, 0.05 * 20**0.75, 1.0])
    assert contour_levels(np.array([[-0.1, 0.2]]), n=7) == {"levels": 7}


def test_log_colorbar_ticks_are_one_two_five_inside_the_range():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forgetting_sam.widgets import contour_levels, log_colorbar

    Z = np.geomspace(0.03, 0.8, 16).reshape(4, 4)
    fig, ax = plt.subplots()
    cs = ax.contourf(Z, **contour_levels(Z))
    cb = log_colorbar(fig, cs, ax, "loss")
    np.testing.assert_allclose(cb.get_ticks(), [0.05, 0.1, 0.2, 0.5])
    plt.close(fig)


def test_two_basins_gd_ends_sharp_sam_ends_flat_from_the_suggested_start():
    # The lesson of notebook 01 depends on this geometry; keep it from drifting silently.
    gd = trajectory("two_basins", "gd", lr=0.1, steps=300)[-1]
    sam = trajectory("two_basins", "sam", rho=0.2, lr=0.1, steps=300)[-1]
    assert np.hypot(gd[0] + 0.6, gd[1] - 0.7) < 0.15
    assert np.hypot(sam[0] - 1.0, sam[1]) < 0.15
