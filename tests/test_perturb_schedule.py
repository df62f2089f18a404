"""Cheaper SAM (docs/algorithms.md §9): perturb every k steps, or only from step s on.

The reference is written here on a flat float64 parameter vector with ``torch.func``:
SGD with momentum whose gradient is SAM's ``∇L(w + ρ h/‖h‖)`` on the steps the schedule
picks and the plain ``∇L(w)`` on the others.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad

from forgetting_sam import OBF, SAM, AscentLoss, perturbed_step

LR, MOMENTUM, RHO = 0.1, 0.9, 0.3


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()


def batch(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def reference(model, x, y, steps, every, start):
    """SGD+momentum on a flat vector; SAM's gradient on the scheduled steps."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(v):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = v[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    w, buf = flat(model), None
    for t in range(steps):
        g = grad(loss)(w)
        if t >= start and (t - start) % every == 0:
            g = grad(loss)(w + RHO * g / (g.norm() + 1e-12))
        buf = g if buf is None else MOMENTUM * buf + g
        w = w - LR * buf
    return w


def sam(model, **kw):
    return SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM, **kw)


def two_step(model, opt, x, y):
    if opt.should_perturb():
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        F.cross_entropy(model(x), y).backward()
        opt.base_step(zero_grad=True)


def closure_step(model, opt, x, y):
    criterion = AscentLoss(F.cross_entropy)

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)


APIS = {
    "perturbed_step": lambda m, o, x, y: perturbed_step(m, o, x, y, F.cross_entropy),
    "two_step": two_step,
    "closure": closure_step,
}


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("every,start", [(1, 0), (3, 0), (2, 3), (1, 4)])
def test_schedule_matches_flat_reference(api, every, start):
    model, (x, y) = mlp(), batch()
    expected = reference(copy.deepcopy(model), x, y, 7, every, start)
    opt = sam(model, perturb_every=every, perturb_from=start)
    for _ in range(7):
        APIS[api](model, opt, x, y)
    assert opt.steps_taken == 7
    assert torch.allclose(flat(model), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("api", list(APIS))
def test_every_one_is_sam_bit_for_bit(api):
    x, y = batch()
    a, b = mlp(), mlp()
    oa, ob = sam(a), sam(b, perturb_every=1, perturb_from=0)
    for _ in range(4):
        APIS[api](a, oa, x, y)
        APIS[api](b, ob, x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("api", list(APIS))
def test_off_steps_are_the_base_optimizer_bit_for_bit(api):
    """Before perturb_from, even an OBF optimizer is plain SGD on the training loss."""
    x, y = batch()
    model, plain = mlp(), mlp()
    opt = OBF(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM, perturb_from=100)
    base = torch.optim.SGD(plain.parameters(), lr=LR, momentum=MOMENTUM)
    for _ in range(3):
        APIS[api](model, opt, x, y)
        base.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        base.step()
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.equal(p, q)


def test_perturbed_step_reports_no_perturbed_loss_on_off_steps():
    model, (x, y) = mlp(), batch()
    opt = sam(model, perturb_every=2)
    on = perturbed_step(model, opt, x, y, F.cross_entropy)
    off = perturbed_step(model, opt, x, y, F.cross_entropy)
    assert on.perturbed_loss is not None and off.perturbed_loss is None and off.updated


def test_accumulating_calls_share_one_decision_and_count_once():
    model, (x, y) = mlp(), batch()
    opt = sam(model, perturb_every=2)
    perturbed_step(model, opt, x[:6], y[:6], F.cross_entropy, update=False)
    assert opt.steps_taken == 0 and opt.should_perturb()
    perturbed_step(model, opt, x[6:], y[6:], F.cross_entropy)
    assert opt.steps_taken == 1 and not opt.should_perturb()


def test_state_dict_resumes_the_schedule():
    x, y = batch()
    straight = mlp()
    opt = sam(straight, perturb_every=3, perturb_from=1)
    for _ in range(8):
        perturbed_step(straight, opt, x, y, F.cross_entropy)

    first = mlp()
    o1 = sam(first, perturb_every=3, perturb_from=1)
    for _ in range(4):
        perturbed_step(first, o1, x, y, F.cross_entropy)
    saved = copy.deepcopy((first.state_dict(), o1.state_dict()))
    assert saved[1]["perturb_schedule"] == {"step": 4}
    resumed = mlp(seed=5)
    resumed.load_state_dict(saved[0])
    o2 = sam(resumed, perturb_every=3, perturb_from=1)
    o2.load_state_dict(saved[1])
    assert o2.steps_taken == 4
    for _ in range(4):
        perturbed_step(resumed, o2, x, y, F.cross_entropy)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_state_dict_without_counter_starts_at_zero():
    model = mlp()
    opt = sam(model, perturb_every=2)
    sd = opt.state_dict()
    del sd["perturb_schedule"]
    opt._steps_taken = 5
    opt.load_state_dict(sd)
    assert opt.steps_taken == 0


@pytest.mark.parametrize("kw,match", [
    (dict(perturb_every=0), "perturb_every"), (dict(perturb_every=1.5), "perturb_every"),
    (dict(perturb_from=-1), "perturb_from"), (dict(perturb_every=True), "perturb_every"),
])
def test_bad_schedule_is_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        sam(mlp(), **kw)


def test_base_step_refuses_while_perturbed():
    model, (x, y) = mlp(), batch()
    opt = sam(model)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="base_step"):
        opt.base_step()


# ----------------------------------------------------------------------------- engine

def test_engine_builds_the_schedule_and_checkpoints_it(tmp_path):
    from forgetting_sam.engine import ConfigError, build_optimizer, make_config, train

    cfg = make_config(overrides=dict(wrapper="gsam", perturb_every=4, perturb_from=2))
    opt = build_optimizer(cfg, mlp().parameters())
    assert (opt.perturb_every, opt.perturb_from) == (4, 2)
    with pytest.raises(ConfigError, match="perturb_every"):
        make_config(overrides=dict(wrapper="sam", perturb_every=0))
    with pytest.raises(ConfigError, match="wrapper"):
        make_config(overrides=dict(wrapper="none", perturb_from=3))

    out = tmp_path / "run"
    result = train(make_config(overrides=dict(
        dataset="digits", subset=96, model="mlp", model_options={"hidden_sizes": [16]}, batch_size=32,
        epochs=1, wrapper="sam", perturb_every=2, quiet=True, seed=0, out_dir=str(out))))
    assert result.summary["steps"] == 3
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert saved["optimizer"]["perturb_schedule"] == {"step": 3}
