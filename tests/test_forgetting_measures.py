"""Perturbed-forgetting measures: direct computations, standalone vs zero-overhead path."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from forgetting_sam.forgetting import measure_perturbed_forgetting, perturbed_forgetting
from forgetting_sam.optim import GSAM, OBF, SAM, perturbed_step


def mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 4)]
    return nn.Sequential(*layers).double()


def data(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def slow_measures(z0, z1, y, marginal=None):
    """Per-example Python in float64, straight from the definitions."""
    n, k = z0.shape
    z0, z1 = z0.tolist(), z1.tolist()

    def softmax(z):
        m = max(z)
        e = [math.exp(v - m) for v in z]
        return [v / sum(e) for v in e]

    forgot, ce0, ce1, kl = 0, 0.0, 0.0, 0.0
    mean0, mean1 = [0.0] * k, [0.0] * k
    for a, b, t in zip(z0, z1, y.tolist()):
        p, q = softmax(a), softmax(b)
        if a.index(max(a)) == t and b.index(max(b)) != t:
            forgot += 1
        ce0 -= math.log(p[t]) / n
        ce1 -= math.log(q[t]) / n
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / n
        mean0 = [m + pi / n for m, pi in zip(mean0, p)]
        mean1 = [m + qi / n for m, qi in zip(mean1, q)]
    out = {
        "forgot_frac": forgot / n,
        "loss_increase": ce1 - ce0,
        "kl": kl,
        "bias_uniform": 0.5 * sum(abs(m - 1 / k) for m in mean0),
        "bias_uniform_perturbed": 0.5 * sum(abs(m - 1 / k) for m in mean1),
    }
    out["bias_forgotten"] = out["bias_uniform"] - out["bias_uniform_perturbed"]
    if marginal is not None:
        q = [v / sum(marginal) for v in marginal]
        out["bias_marginal"] = 0.5 * sum(abs(m - qi) for m, qi in zip(mean0, q))
        out["bias_marginal_perturbed"] = 0.5 * sum(abs(m - qi) for m, qi in zip(mean1, q))
        out["bias_marginal_forgotten"] = out["bias_marginal"] - out["bias_marginal_perturbed"]
    return out


def test_measures_equal_direct_computation_from_two_forward_passes():
    model, x_y = mlp(), data(12)
    x, y = x_y
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.6 * torch.randn_like(p))
    z0, z1 = model(x).detach(), moved(x).detach()
    marginal = [3.0, 1.0, 4.0, 2.0]  # counts: normalized inside
    got = perturbed_forgetting(z0, z1, y, label_marginal=torch.tensor(marginal))
    want = slow_measures(z0, z1, y, marginal)
    assert set(got) == set(want)
    assert want["forgot_frac"] > 0 and want["kl"] > 0  # the check is not vacuous
    for k in want:
        assert got[k].dim() == 0
        assert float(got[k]) == pytest.approx(want[k], abs=1e-6), k


def test_hand_example_and_custom_loss():
    z0 = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    z1 = torch.tensor([[0.0, 3.0], [3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 0])
    # ex 0 correct -> wrong (forgotten); ex 1 stays correct; ex 2 correct -> wrong; ex 3 wrong
    m = perturbed_forgetting(z0, z1, y, loss_fn=lambda z, t: (z[:, 0] ** 2).mean())
    assert float(m["forgot_frac"]) == 0.5
    assert float(m["loss_increase"]) == pytest.approx((9 + 9) / 4 - (9 + 9) / 4 + 0.0)
    same = perturbed_forgetting(z0, z0, y)
    assert float(same["forgot_frac"]) == 0 and float(same["kl"]) == 0
    assert float(same["loss_increase"]) == 0 and float(same["bias_forgotten"]) == 0


def test_soft_targets_use_argmax_for_correctness():
    z0, z1 = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    soft = F.one_hot(y, 3).float() * 0.8 + 0.2 / 3
    a = perturbed_forgetting(z0, z1, y)
    b = perturbed_forgetting(z0, z1, soft)
    assert float(a["forgot_frac"]) == float(b["forgot_frac"])
    want = F.cross_entropy(z1, soft) - F.cross_entropy(z0, soft)
    assert float(b["loss_increase"]) == pytest.approx(float(want), abs=1e-6)


def independent_sam_logits(model, x, y, rho):
    """logits at w + rho g/‖g‖, from autograd and torch.func, not the optimizer."""
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    moved = {k: p.detach() + rho * g / (norm + 1e-12) for (k, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        return model(x).detach(), torch.func.functional_call(model, moved, (x,))


def test_standalone_equals_independent_sam_perturbation():
    model, (x, y) = mlp(), data()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1)
    got = measure_perturbed_forgetting(model, opt, (x, y), F.cross_entropy)
    z0, z1 = independent_sam_logits(model, x, y, 0.3)
    want = perturbed_forgetting(z0, z1, y)
    assert float(want["kl"]) > 0
    for k in want:
        assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("make_opt", [
    lambda ps: SAM(ps, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9),
    lambda ps: OBF(ps, torch.optim.SGD, rho=0.5, lr=0.1),
    lambda ps: GSAM(ps, torch.optim.SGD, rho=0.5, alpha=0.3, lr=0.1),
], ids=["sam", "obf", "gsam"])
@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
def test_zero_overhead_path_equals_standalone(make_opt, bn):
    model, (x, y) = mlp(bn=bn), data(10)
    model.train()
    opt = make_opt(model.parameters())
    marginal = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # the caller's own gradients must survive the measurement
    F.cross_entropy(model(x), y).backward()
    before = copy.deepcopy(model.state_dict())
    grads_before = [p.grad.clone() for p in model.parameters()]
    grad_objects = [p.grad for p in model.parameters()]

    standalone = measure_perturbed_forgetting(model, opt, (x, y), F.cross_entropy,
                                              micro_batch_size=4, label_marginal=marginal)
    after = model.state_dict()
    for k in before:  # weights bit-identical, BN running stats and counters untouched
        assert torch.equal(before[k], after[k]), k
    for p, g0, obj in zip(model.parameters(), grads_before, grad_objects):
        assert p.grad is obj and torch.equal(p.grad, g0)
    assert not opt.is_perturbed

    opt.zero_grad(set_to_none=True)
    res = perturbed_step(model, opt, x, y, F.cross_entropy, micro_batch_size=4)
    zero_overhead = perturbed_forgetting(res.logits, res.perturbed_logits, y, label_marginal=marginal)
    assert set(standalone) == set(zero_overhead)
    assert float(standalone["kl"]) > 0
    for k in standalone:
        assert torch.allclose(standalone[k], zero_overhead[k], rtol=1e-10, atol=1e-12), k
    # the chunks matter: per-chunk ε differs from one ε for the whole batch
    whole = measure_perturbed_forgetting(model, opt, (x, y), F.cross_entropy)
    assert not torch.allclose(whole["kl"], standalone["kl"])


def test_standalone_accepts_tuple_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)

        def forward(self, u, v):
            return self.a(u) + self.b(v)

    torch.manual_seed(0)
    model = Two()
    u, v, y = torch.randn(6, 3), torch.randn(6, 3), torch.randint(0, 4, (6,))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1)
    got = measure_perturbed_forgetting(model, opt, ((u, v), y), F.cross_entropy, micro_batch_size=3)
    res = perturbed_step(model, opt, (u, v), y, F.cross_entropy, micro_batch_size=3)
    want = perturbed_forgetting(res.logits, res.perturbed_logits, y)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k


def test_bad_input():
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="perturbed_logits shape"):
        perturbed_forgetting(z, torch.randn(5, 3), y)
    with pytest.raises(ValueError, match="perturbed_logits is None"):
        perturbed_forgetting(z, None, y)
    with pytest.raises(ValueError, match="logits must have shape"):
        perturbed_forgetting(torch.randn(4), torch.randn(4), y)
    with pytest.raises(ValueError, match="targets must be class indices"):
        perturbed_forgetting(z, z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        perturbed_forgetting(z, z, y.float())
    with pytest.raises(ValueError, match="label_marginal must have shape"):
        perturbed_forgetting(z, z, y, label_marginal=torch.ones(4))
    with pytest.raises(ValueError, match="empty batch"):
        perturbed_forgetting(z[:0], z[:0], y[:0])
    model, (x, t) = mlp(), data()
    with pytest.raises(TypeError, match="perturbed optimizer"):
        measure_perturbed_forgetting(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, t), F.cross_entropy)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    with pytest.raises(ValueError, match="micro_batch_size"):
        measure_perturbed_forgetting(model, opt, (x, t), F.cross_entropy, micro_batch_size=0)
    with pytest.raises(ValueError, match="batch size"):
        measure_perturbed_forgetting(model, opt, (x, t[:3]), F.cross_entropy)
    with pytest.raises(ValueError, match="pair"):
        measure_perturbed_forgetting(model, opt, x, F.cross_entropy)


def test_meter_is_the_example_weighted_mean_of_measured_steps():
    from types import SimpleNamespace

    from forgetting_sam.forgetting import PerturbedForgettingMeter

    torch.manual_seed(0)
    steps = []
    for n in (4, 6, 3, 5, 2):
        steps.append((SimpleNamespace(logits=torch.randn(n, 3), perturbed_logits=torch.randn(n, 3),
                                      skipped=False), torch.randint(0, 3, (n,))))
    plain = SimpleNamespace(logits=torch.randn(2, 3), perturbed_logits=None, skipped=False)
    skipped = SimpleNamespace(logits=torch.randn(2, 3), perturbed_logits=torch.randn(2, 3), skipped=True)

    meter = PerturbedForgettingMeter(every=2)  # measures calls 1, 3, 5, 7
    for i, (res, y) in enumerate(steps):
        meter.update(res, y)
        if i == 2:
            meter.update(plain, torch.zeros(2, dtype=torch.long))  # call 4: not measured anyway
            meter.update(skipped, torch.zeros(2, dtype=torch.long))  # call 5: measured, but skipped
    got = meter.compute()
    # calls: 1=s0, 2=s1, 3=s2, 4=plain, 5=skipped (not counted), 6=s3, 7=s4
    used = [steps[0], steps[2], steps[4]]
    total = sum(r.logits.shape[0] for r, _ in used)
    want = {}
    for r, y in used:
        for k, v in perturbed_forgetting(r.logits, r.perturbed_logits, y).items():
            want[k] = want.get(k, 0.0) + float(v) * r.logits.shape[0] / total
    assert meter.steps == 3 and meter.examples == total
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k
    meter.reset()
    assert meter.compute() == {}
    with pytest.raises(ValueError, match="every"):
        PerturbedForgettingMeter(every=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_per_step_on_cuda():
    from forgetting_sam.forgetting import ForgettingTracker

    dev = torch.device("cuda")
    z0, z1 = torch.randn(64, 10, device=dev), torch.randn(64, 10, device=dev)
    y = torch.randint(0, 10, (64,), device=dev)
    tracker = ForgettingTracker(100, device=dev)
    idx = torch.randperm(100)[:64]  # CPU indices, as a DataLoader returns them
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        m = perturbed_forgetting(z0, z1, y)
        tracker.update(idx, z0, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = perturbed_forgetting(z0.cpu(), z1.cpu(), y.cpu())
    for k in want:
        assert float(m[k]) == pytest.approx(float(want[k]), abs=1e-5), k
    assert int(tracker.presentations.sum()) == 64
