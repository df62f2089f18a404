"""Sharpness on a quadratic (least squares) against the closed form; state restored; bad input."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from forgetting_sam.landscape import sharpness


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    return model, x, y


def closed_form(model, x, y, rho, adaptive=False, eta=0.0):
    """L(w) = mean((X̃w − y)²) with X̃ = [X, 1]: gradient g = 2X̃ᵀr/N, Hessian A = 2X̃ᵀX̃/N, and
    L(w + ε) − L(w) = εᵀg + ½ εᵀAε exactly."""
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    r = xt @ w - y[:, 0]
    g = 2 * xt.T @ r / len(x)
    A = 2 * xt.T @ xt / len(x)
    if adaptive:
        t = w.abs() + eta
        eps = rho * t * t * g / torch.linalg.vector_norm(t * g)
    else:
        eps = rho * g / torch.linalg.vector_norm(g)
    return float(eps @ g + 0.5 * eps @ A @ eps), float((r**2).mean())


def test_one_step_sharpness_matches_closed_form(problem):
    model, x, y = problem
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = sharpness(model, (x, y), F.mse_loss, rho=0.3, progress=False)
    expect, loss = closed_form(model, x, y, 0.3)
    assert math.isclose(s.value, expect, rel_tol=1e-9)
    assert math.isclose(s.loss, loss, rel_tol=1e-12)
    assert math.isclose(s.perturbed_loss - s.loss, s.value, rel_tol=1e-12) and s.chunks == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(p.grad is None for p in model.parameters())


def test_m_sharpness_is_the_size_weighted_chunk_mean(problem):
    model, x, y = problem
    s = sharpness(model, (x, y), F.mse_loss, rho=0.2, micro_batch_size=8, progress=False)
    chunks = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 30, 8)]  # 8, 8, 8, 6
    expect = sum(len(xc) * closed_form(model, xc, yc, 0.2)[0] for xc, yc in chunks) / 30
    assert s.chunks == 4 and math.isclose(s.value, expect, rel_tol=1e-9)
    # A loader of the same chunks gives the same number.
    s2 = sharpness(model, chunks, F.mse_loss, rho=0.2, progress=False)
    assert math.isclose(s2.value, expect, rel_tol=1e-9)


def test_adaptive_sharpness_matches_closed_form(problem):
    model, x, y = problem
    s = sharpness(model, (x, y), F.mse_loss, rho=0.5, adaptive=True, eta=0.01, progress=False)
    assert math.isclose(s.value, closed_form(model, x, y, 0.5, adaptive=True, eta=0.01)[0], rel_tol=1e-9)
    assert s.adaptive and s.eta == 0.01


def test_rho_zero_gives_zero_and_train_mode_keeps_batchnorm_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert sharpness(model, (x, y), F.cross_entropy, rho=0.0, mode="train", progress=False).value == 0.0
    s = sharpness(model, (x, y), F.cross_entropy, rho=0.1, mode="train", progress=False)
    assert s.value > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert model.training


def test_bad_input(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match="Invalid rho"):
        sharpness(model, (x, y), F.mse_loss, rho=-0.1)
    with pytest.raises(ValueError, match="rho must be finite"):
        sharpness(model, (x, y), F.mse_loss, rho=float("inf"))
    with pytest.raises(ValueError, match="Invalid eta"):
        sharpness(model, (x, y), F.mse_loss, adaptive=True, eta=-1)
    with pytest.raises(ValueError, match="micro_batch_size must be a positive int"):
        sharpness(model, (x, y), F.mse_loss, micro_batch_size=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        sharpness(model.requires_grad_(False), (x, y), F.mse_loss)
