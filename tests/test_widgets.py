"""The notebook widgets' logic, without a browser (forgetting_sam/widgets.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

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
