"""Landscape evaluation: values vs direct evaluation, both methods, state restored, bad input."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from forgetting_sam.landscape import (
    Plane,
    interpolate,
    loss_line,
    loss_surface,
    random_direction,
    random_plane,
)


def bn_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 3)).double()
    with torch.no_grad():  # non-trivial running statistics
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g)


def direct(model, directions, coeffs, x, y, train=False):
    """Independent evaluation: a fresh copy with w + Σ c_k d_k written in, one forward."""
    m = copy.deepcopy(model)
    m.train(train)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name not in directions[0]:
                continue
            p.copy_(p + sum(c * d[name] for c, d in zip(coeffs, directions)))
        out = m(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def assert_same_state(model, snap):
    state, rg, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [p.requires_grad for p in model.parameters()] == rg
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("method", ["sequential", "vmap", "measure"])
def test_surface_equals_direct_evaluation(batch, method):
    x, y = batch
    model = bn_mlp().train()  # train flag on: the default mode is eval, and the flag must survive
    model[0].bias.requires_grad_(False)  # frozen tensors are not part of the directions
    snap = snapshot(model)
    plane = random_plane(model, seed=4, include_1d=True)
    assert "0.bias" not in plane.x
    s = loss_surface(model, plane, (x, y), F.cross_entropy, span=(-1.0, 2.0), steps=7, span_y=(-0.5, 0.5),
                     steps_y=5, method=method, memory_budget=20_000, progress=False)
    assert s.loss.shape == (5, 7) and s.accuracy.shape == (5, 7)
    assert s.method in ("sequential", "vmap") and s.reason
    if method != "sequential":
        assert s.method == "vmap" or "measured" in s.reason
    for j, i in [(0, 0), (4, 6), (2, 3), (1, 5), (3, 0)]:
        loss, acc = direct(model, list(plane), [float(s.alphas[i]), float(s.betas[j])], x, y)
        assert math.isclose(float(s.loss[j, i]), loss, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(float(s.accuracy[j, i]), acc, abs_tol=1e-12)
    assert_same_state(model, snap)


def test_vmap_chunks_follow_memory_budget(batch):
    x, y = batch
    model = bn_mlp()
    plane = random_plane(model, seed=0)
    small = loss_surface(model, plane, (x, y), F.cross_entropy, steps=4, method="vmap", memory_budget=5_000,
                         progress=False)
    big = loss_surface(model, plane, (x, y), F.cross_entropy, steps=4, method="vmap", memory_budget=10**9,
                       progress=False)
    assert small.chunk_size < big.chunk_size == 16
    torch.testing.assert_close(small.loss, big.loss)


def test_dataloader_is_size_weighted_and_train_mode_uses_batch_stats(batch):
    x, y = batch
    model = bn_mlp().eval()
    snap = snapshot(model)
    d = random_direction(model, seed=2)
    loader = [(x[:12], y[:12]), (x[12:], y[12:])]
    for method in ("sequential", "vmap"):
        line = loss_line(model, d, loader, F.cross_entropy, span=(-1, 1), steps=3, mode="train", method=method,
                         progress=False)
        for i, a in enumerate(line.alphas.tolist()):
            l1, a1 = direct(model, [d], [a], x[:12], y[:12], train=True)
            l2, a2 = direct(model, [d], [a], x[12:], y[12:], train=True)
            assert math.isclose(float(line.loss[i]), (12 * l1 + 8 * l2) / 20, rel_tol=1e-9)
            assert math.isclose(float(line.accuracy[i]), (12 * a1 + 8 * a2) / 20, abs_tol=1e-12)
    assert_same_state(model, snap)  # running statistics untouched by train mode


def test_auto_on_cpu_is_sequential_by_pinned_rule(batch):
    x, y = batch
    model = bn_mlp()
    s = loss_surface(model, random_plane(model), (x, y), F.cross_entropy, steps=3, progress=False)
    assert s.method == "sequential" and "pinned rule" in s.reason


class NotVmappable(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3).double()

    def forward(self, x):
        out = self.lin(x)
        if out.sum().item() > 1e9:  # data-dependent Python control flow: vmap cannot trace it
            return out * 0
        return out


def test_unvmappable_module_falls_back_and_reports(batch):
    x, y = batch
    model = NotVmappable()
    d = random_direction(model, seed=0, include_1d=True)
    with pytest.warns(RuntimeWarning, match="vmap failed"):
        line = loss_line(model, d, (x, y), F.cross_entropy, steps=4, method="vmap", progress=False)
    assert line.method == "sequential" and "fell back" in line.reason
    for i, a in enumerate(line.alphas.tolist()):
        assert math.isclose(float(line.loss[i]), direct(model, [d], [a], x, y)[0], rel_tol=1e-9)
    measured = loss_line(model, d, (x, y), F.cross_entropy, steps=8, method="measure", progress=False)
    assert measured.method == "sequential" and "vmap failed" in measured.reason
    torch.testing.assert_close(measured.loss[:4], loss_line(model, d, (x, y), F.cross_entropy, steps=8,
                                                            method="sequential", progress=False).loss[:4])


@pytest.mark.parametrize("method", ["sequential", "vmap"])
def test_non_finite_loss_is_nan_and_run_continues(batch, method):
    x, y = batch
    model = nn.Sequential(nn.Linear(6, 3))  # float32, so 1e38-sized weights overflow
    d = random_direction(model, seed=0, norm=None)
    huge = type(d)({k: torch.full_like(v, 3e38) for k, v in d.items()})
    line = loss_line(model, huge, (x.float(), y), F.cross_entropy, span=(-1, 1), steps=5, method=method,
                     progress=False)
    assert torch.isnan(line.loss[[0, 4]]).all() and torch.isnan(line.accuracy[[0, 4]]).all()
    assert torch.isfinite(line.loss[2]) and torch.isfinite(line.accuracy[2])


def test_interpolation_endpoints_are_the_two_models(batch):
    x, y = batch
    a, b = bn_mlp(), bn_mlp()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.5)
    b[1].load_state_dict(a[1].state_dict())
    line = interpolate(a, b, (x, y), F.cross_entropy, span=(0, 1), steps=3, progress=False)
    with torch.no_grad():
        la, lb = float(F.cross_entropy(a.eval()(x), y)), float(F.cross_entropy(b.eval()(x), y))
    assert math.isclose(float(line.loss[0]), la, rel_tol=1e-9)
    assert math.isclose(float(line.loss[2]), lb, rel_tol=1e-9)


def test_bad_input_messages(batch):
    x, y = batch
    model = bn_mlp()
    plane = random_plane(model)
    f = F.cross_entropy
    with pytest.raises(ValueError, match="steps must be at least 2"):
        loss_surface(model, plane, (x, y), f, steps=1)
    with pytest.raises(ValueError, match="y-steps must be at least 2"):
        loss_surface(model, plane, (x, y), f, steps_y=1)
    with pytest.raises(ValueError, match=r"span\[1\] must be finite"):
        loss_line(model, plane.x, (x, y), f, span=(0, float("inf")))
    with pytest.raises(ValueError, match=r"span\[0\] must be finite"):
        loss_line(model, plane.x, (x, y), f, span=(float("nan"), 1))
    with pytest.raises(ValueError, match="two different ends"):
        loss_line(model, plane.x, (x, y), f, span=(1, 1))
    with pytest.raises(ValueError, match="Invalid method"):
        loss_line(model, plane.x, (x, y), f, method="fast")
    with pytest.raises(ValueError, match="Invalid mode"):
        loss_line(model, plane.x, (x, y), f, mode="test")
    with pytest.raises(TypeError, match="plane must be a Plane"):
        loss_surface(model, plane.x, (x, y), f)
    with pytest.raises(TypeError, match="data must be a batch"):
        loss_line(model, plane.x, x, f)
    with pytest.raises(ValueError, match="no batches"):
        loss_line(model, plane.x, [], f)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        loss_line(model, plane.x, (x, y), lambda o, t: F.cross_entropy(o, t, reduction="none"))
    frozen = bn_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        loss_line(frozen, plane.x, (x, y), f)
    other = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.0), nn.Linear(8, 4)).double()
    with pytest.raises(ValueError, match=r"'4\.weight' has shape \(3, 8\)"):
        loss_surface(other, Plane(*plane), (x, y), f)
