"""Curvature: HVPs, eigenvalues, trace and density against exact Hessians and closed forms."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from forgetting_sam.landscape import hessian as hessian_module
from forgetting_sam.landscape import (
    Direction,
    eigen_directions,
    hessian_eigenvalues,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    lanczos,
    spectral_density,
)


def tiny(bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(5, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.Tanh(), nn.Linear(12, 3)]
    return nn.Sequential(*layers).double()  # 111 parameters (+24 with BN)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)


def exact_hessian(model, x, y, train=False):
    m = copy.deepcopy(model).train(train)
    names = [n for n, p in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(v):
        ps, o = [], 0
        for s in shapes:
            ps.append(v[o:o + s.numel()].view(s))
            o += s.numel()
        return F.cross_entropy(functional_call(m, dict(zip(names, ps)), (x,)), y)

    return torch.autograd.functional.hessian(f, flat)


class Quadratic(nn.Module):
    """L(w) = ½ wᵀ A w + bᵀ w through a loss on the output w (inputs ignored)."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, n, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], -1)


def quad_loss(A, b):
    return lambda out, _y: 0.5 * out[0] @ A @ out[0] + b @ out[0]


@pytest.mark.parametrize("method,hvp_kind", [("lanczos", "autograd"), ("lanczos", "func"), ("power", "autograd")])
def test_top_eigenvalues_match_eigvalsh(batch, method, hvp_kind):
    x, y = batch
    model = tiny()
    exact = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    H = exact_hessian(model, x, y)
    eig = hessian_eigenvalues(model, (x, y), F.cross_entropy, k=3, method=method, hvp=hvp_kind, tol=1e-8,
                              max_iter=111 if method == "lanczos" else 400, progress=False)
    torch.testing.assert_close(eig.values, exact.flip(0)[:3], rtol=1e-6, atol=1e-8)
    assert eig.converged and eig.hvp_count > 0
    for lam, vec in zip(eig.values, eig.vectors):
        v = torch.cat([vec[n].reshape(-1) for n in vec])
        assert math.isclose(float(v.norm()), 1.0, rel_tol=1e-9)
        torch.testing.assert_close(H @ v, lam * v, atol=1e-4, rtol=1e-4)


def test_lanczos_default_tolerance_is_cheap_and_accurate(batch):
    x, y = batch
    model = tiny()
    exact = float(torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1])
    eig = hessian_eigenvalues(model, (x, y), F.cross_entropy, progress=False)
    assert abs(float(eig.values[0]) - exact) <= 1e-3 * exact
    assert eig.hvp_count <= 40
    assert math.isclose(hessian_top_eigenvalue(model, [(x, y)], F.cross_entropy), float(eig.values[0]))
    # A budget of products (the trainer's hessian_iters) caps the work.
    hessian_top_eigenvalue(model, (x, y), F.cross_entropy, iters=5)
    with pytest.raises(ValueError, match="iters must be a positive int"):
        hessian_top_eigenvalue(model, (x, y), F.cross_entropy, iters=0)


def test_lanczos_top_eigenvalue_within_tolerance_on_every_seed(batch):
    # A float32 model: the basis stays float32 and the default tolerance still holds against
    # the float64 dense Hessian, whatever the start vector.
    x, y = batch
    model = tiny()
    exact = float(torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1])
    model32, x32 = copy.deepcopy(model).float(), x.float()
    for seed in range(12):
        eig = hessian_eigenvalues(model32, (x32, y), F.cross_entropy, seed=seed, progress=False)
        assert eig.converged and abs(float(eig.values[0]) - exact) <= 1e-3 * exact, (seed, eig)
    v0 = torch.ones(111) / 111**0.5
    assert lanczos(lambda v: v * 2, 111, v0=v0, max_iter=3, tol=0.0, restart=False)[2].dtype == torch.float32


def test_train_mode_hessian_uses_batch_stats_and_leaves_model_alone(batch):
    x, y = batch
    model = tiny(bn=True).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    exact_train = torch.linalg.eigvalsh(exact_hessian(model, x, y, train=True))[-1]
    exact_eval = torch.linalg.eigvalsh(exact_hessian(model, x, y, train=False))[-1]
    assert not math.isclose(float(exact_train), float(exact_eval), rel_tol=1e-3)
    for kind in ("autograd", "func"):
        tr = hessian_eigenvalues(model, (x, y), F.cross_entropy, mode="train", hvp=kind, tol=1e-8, progress=False)
        torch.testing.assert_close(tr.values[0], exact_train, rtol=1e-6, atol=1e-8)
    ev = hessian_eigenvalues(model, (x, y), F.cross_entropy, tol=1e-8, progress=False)
    torch.testing.assert_close(ev.values[0], exact_eval, rtol=1e-6, atol=1e-8)
    assert not model.training and not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_hvp_matches_exact_and_dataloader_is_size_weighted(batch):
    x, y = batch
    model = tiny()
    H = exact_hessian(model, x, y)
    g = torch.Generator().manual_seed(0)
    v = Direction({n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()})
    flat_v = torch.cat([t.reshape(-1) for t in v.values()])
    loader = [(x[:25], y[:25]), (x[25:], y[25:])]
    for data in ((x, y), loader):
        for kind in ("autograd", "func"):
            hv = hvp(model, data, F.cross_entropy, v, method=kind)
            torch.testing.assert_close(torch.cat([t.reshape(-1) for t in hv.values()]), H @ flat_v)
    assert all(p.grad is None for p in model.parameters())


def test_quadratic_closed_forms():
    n = 8
    lam = torch.tensor([5.0, 3.0, 2.5, 1.0, 0.5, -0.25, -1.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    b = torch.randn(n, generator=g, dtype=torch.float64)
    data = (torch.zeros(1, 1), torch.zeros(1))
    # Rotated: eigenvalues are λ; eigenvectors are Q's columns.
    A = Q @ torch.diag(lam) @ Q.T
    eig = hessian_eigenvalues(Quadratic(n), data, quad_loss(A, b), k=3, tol=1e-10, progress=False)
    torch.testing.assert_close(eig.values, torch.tensor([5.0, 3.0, 2.5], dtype=torch.float64))
    v0 = eig.vectors[0]["w"]
    assert math.isclose(abs(float(v0 @ Q[:, 0])), 1.0, rel_tol=1e-8)
    # Diagonal: Hutchinson with Rademacher vectors is exact (vᵀ D v = Σ λ_i since v_i² = 1).
    tr = hessian_trace(Quadratic(n), data, quad_loss(torch.diag(lam), b), n_samples=3, progress=False)
    assert math.isclose(tr.value, float(lam.sum()), abs_tol=1e-12) and tr.std_error < 1e-12
    # Full Krylov space: the quadrature nodes are the eigenvalues and the weights sum to 1.
    sd = spectral_density(Quadratic(n), data, quad_loss(A, b), steps=n, n_vectors=2, progress=False)
    for row_nodes, row_w in zip(sd.nodes, sd.weights):
        torch.testing.assert_close(row_nodes.sort().values, lam.sort().values, atol=1e-9, rtol=0)
        assert math.isclose(float(row_w.sum()), 1.0, rel_tol=1e-9)
    dx = float(sd.grid[1] - sd.grid[0])
    assert math.isclose(float(sd.density.sum()) * dx, 1.0, rel_tol=1e-3)


def test_lanczos_quadrature_is_exact_for_low_moments():
    # Gauss quadrature with m nodes integrates polynomials of degree ≤ 2m − 1 exactly:
    # Σ_j w_j θ_j^p = v₀ᵀ Aᵖ v₀.
    n, m = 30, 4
    g = torch.Generator().manual_seed(5)
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = (M + M.T) / 4
    v0 = torch.randn(n, generator=g, dtype=torch.float64)
    v0 = v0 / v0.norm()
    alphas, betas, Q, _ = lanczos(lambda v: A @ v, n, tol=0.0, max_iter=m, v0=v0, restart=False)
    T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    theta, S = torch.linalg.eigh(T)
    w = S[0] ** 2
    for p in range(2 * m):
        exact = float(v0 @ torch.linalg.matrix_power(A, p) @ v0)
        assert math.isclose(float((w * theta**p).sum()), exact, rel_tol=1e-8, abs_tol=1e-10)
    torch.testing.assert_close(Q @ Q.T, torch.eye(m, dtype=torch.float64), atol=1e-12, rtol=0)


def hidden_top(n, eps, seed):
    """A symmetric matrix (λ₁ = 4.383, λ₂ = 3.95, the rest in [0, 1]) and a unit start vector with
    weight ``eps`` on the top eigenvector: the digits-CNN case where Lanczos once stopped on λ₂."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.cat([torch.tensor([4.383, 3.95], dtype=torch.float64), torch.rand(n - 2, generator=g, dtype=torch.float64)])
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    c = torch.randn(n, generator=g, dtype=torch.float64)
    c[1:] *= math.sqrt(1 - eps**2) / c[1:].norm()
    c[0] = eps
    return Q @ torch.diag(lam) @ Q.T, Q @ c, lam


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 3e-3])
def test_lanczos_does_not_stop_on_the_second_eigenvalue(eps):
    # A start vector nearly orthogonal to the top eigenvector makes λ₂'s Ritz value settle
    # first; only a stopping rule that bounds the error (the residual) keeps iterating.
    n = 200
    for seed in range(8):
        A, v0, _ = hidden_top(n, eps, seed)
        alphas, betas, Q, converged = lanczos(lambda v, A=A: A @ v, n, k=1, tol=1e-3, max_iter=100, v0=v0)
        T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
        top = float(torch.linalg.eigvalsh(T)[-1])
        assert converged and abs(top - 4.383) <= 1e-3 * 4.383, (seed, top, len(alphas))


def test_trace_and_density_on_small_model(batch, monkeypatch):
    x, y = batch
    model = tiny()
    H = exact_hessian(model, x, y)
    tr = hessian_trace(model, (x, y), F.cross_entropy, n_samples=200, progress=False)
    assert abs(tr.value - float(H.trace())) < 4 * tr.std_error
    exact, U = torch.linalg.eigh(H)
    # Start vectors the test knows, so the density has an exact reference: with the full Krylov
    # space the quadrature of vector v puts weight (u_i · v)² on eigenvalue λ_i.
    g = torch.Generator().manual_seed(11)
    starts = [v / v.norm() for v in torch.randn(8, len(exact), generator=g, dtype=torch.float64)]
    handed = iter(starts)
    monkeypatch.setattr(hessian_module, "_random_unit", lambda n, gen, device, rademacher=False: next(handed))
    sd = spectral_density(model, (x, y), F.cross_entropy, steps=111, n_vectors=8, progress=False)
    nodes = sd.nodes[torch.isfinite(sd.nodes)]
    # Every node of a (near-)full Krylov run sits on an exact eigenvalue.
    assert float((nodes[:, None] - exact[None, :]).abs().min(dim=1).values.max()) < 1e-6
    weights = torch.stack([(U.T @ v) ** 2 for v in starts]).mean(0)  # [n], sums to 1
    exact_density = (weights[None, :] * torch.exp(-0.5 * ((sd.grid[:, None] - exact[None, :]) / sd.sigma) ** 2)).sum(1) / (
        sd.sigma * math.sqrt(2 * math.pi))
    dx = float(sd.grid[1] - sd.grid[0])
    assert float((sd.density - exact_density).abs().sum() * dx) < 1e-6  # the L1 distance's maximum is 2
    # The density's mean is the mean Rayleigh quotient of the start vectors.
    mean = float((sd.grid * sd.density).sum() * dx)
    assert math.isclose(mean, float(sum(v @ H @ v for v in starts)) / len(starts), rel_tol=1e-6)


def test_eigen_directions_are_unit_eigenvectors(batch):
    x, y = batch
    model = tiny()
    d1, d2 = eigen_directions(model, (x, y), F.cross_entropy, k=2, tol=1e-8, progress=False)
    assert math.isclose(float(d1.norm()), 1.0, rel_tol=1e-9) and abs(float(d1.dot(d2))) < 1e-6


def test_bad_input(batch):
    x, y = batch
    model = tiny()
    with pytest.raises(ValueError, match=r"k=112 exceeds the number of trainable parameters \(111\)"):
        hessian_eigenvalues(model, (x, y), F.cross_entropy, k=112)
    with pytest.raises(ValueError, match="k must be a positive int"):
        hessian_eigenvalues(model, (x, y), F.cross_entropy, k=0)
    with pytest.raises(ValueError, match="Invalid method"):
        hessian_eigenvalues(model, (x, y), F.cross_entropy, method="arnoldi")
    with pytest.raises(ValueError, match="Invalid hvp"):
        hessian_trace(model, (x, y), F.cross_entropy, hvp="fd")
    with pytest.raises(ValueError, match="tol must be"):
        hessian_eigenvalues(model, (x, y), F.cross_entropy, tol=float("nan"))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        hessian_trace(model, (x, y), F.cross_entropy, n_samples=0)
    with pytest.raises(ValueError, match="sigma must be"):
        spectral_density(model, (x, y), F.cross_entropy, sigma=-1.0)
    with pytest.raises(ValueError, match="Invalid mode"):
        hessian_trace(model, (x, y), F.cross_entropy, mode="inference")
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigenvalues(tiny().requires_grad_(False), (x, y), F.cross_entropy)
    bad = Direction({"0.weight": torch.zeros(12, 5)})
    with pytest.raises(ValueError, match="vector must be a Direction"):
        hvp(model, (x, y), F.cross_entropy, bad)
