"""GradScaler in the two-step and closure APIs: the same weights, skips and scales as
``perturbed_step(scaler=)`` on the same batches, overflows in either pass included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from optim_cases import FAMILY, Overflows, batches, build, max_rel_diff, mlp, same_weights

from forgetting_sam import AscentLoss, perturbed_step

# (step, forward) calls that overflow: step 1's ascent pass and step 2's descent pass.
OVERFLOWS = {(1, 1), (2, 2)}
STEPS = 4


def scaler(init=2.0**10):
    return torch.amp.GradScaler("cpu", init_scale=init, growth_interval=2)


def run(name, one_step):
    """``STEPS`` steps with ``one_step(model, opt, scaler, x, y)``; the (skipped, scale) log."""
    model = mlp()
    opt, sc = build(name, model), scaler()
    overflows = Overflows(model, OVERFLOWS)
    log = []
    for x, y in batches(STEPS):
        overflows.next_step()
        before = sc.get_scale()
        one_step(model, opt, sc, x, y)
        log.append((sc.get_scale() < before, sc.get_scale()))
    overflows.handle.remove()
    return model, log


def with_perturbed_step(model, opt, sc, x, y):
    before = sc.get_scale()
    res = perturbed_step(model, opt, x, y, F.cross_entropy, scaler=sc)
    assert res.skipped == (sc.get_scale() < before)  # its own report agrees with the scale


def with_two_step(model, opt, sc, x, y):
    sc.scale((opt.ascent_loss or F.cross_entropy)(model(x), y)).backward()
    opt.first_step(zero_grad=True, scaler=sc)
    sc.scale(F.cross_entropy(model(x), y)).backward()
    opt.second_step(zero_grad=True, scaler=sc)


def with_closure(model, opt, sc, x, y):
    criterion = AscentLoss(F.cross_entropy)

    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        sc.scale(loss).backward()
        return loss

    opt.step(closure, scaler=sc)
    opt.zero_grad()


@pytest.mark.parametrize("api", [with_two_step, with_closure], ids=["two-step", "closure"])
@pytest.mark.parametrize("name", FAMILY)
def test_scaler_paths_equal_perturbed_step(name, api):
    ref, ref_log = run(name, with_perturbed_step)
    model, log = run(name, api)
    assert [s for s, _ in ref_log] == [False, True, True, False]  # both passes overflowed once
    assert log == ref_log
    # GSAM's correction runs in scaled units in perturbed_step and in true units here: equal
    # up to the δ of its normalization.
    assert max_rel_diff(model, ref) < 1e-12
    if name in ("sam", "asam", "obf", "asam_obf"):
        assert same_weights(model, ref)


def test_scaled_two_step_equals_the_unscaled_one_without_overflow():
    m1, m2 = mlp(), mlp()
    o1, o2, sc = build("gsam", m1), build("gsam", m2), scaler(2.0**12)
    for x, y in batches(2):
        sc.scale(F.cross_entropy(m1(x), y)).backward()
        o1.first_step(zero_grad=True, scaler=sc)
        sc.scale(F.cross_entropy(m1(x), y)).backward()
        o1.second_step(zero_grad=True, scaler=sc)
        F.cross_entropy(m2(x), y).backward()
        o2.first_step(zero_grad=True)
        F.cross_entropy(m2(x), y).backward()
        o2.second_step(zero_grad=True)
    assert max_rel_diff(m1, m2) < 1e-12


def test_clipping_after_unscale_equals_perturbed_step_clip():
    """The popular SAM's AMP-plus-clipping loop, ported: unscale the base, clip, second_step."""
    m1, m2 = mlp(), mlp()
    o1, o2 = build("sam", m1), build("sam", m2)
    s1, s2 = scaler(), scaler()
    for x, y in batches(3):
        s1.scale(F.cross_entropy(m1(x), y)).backward()
        o1.first_step(zero_grad=True, scaler=s1)
        s1.scale(F.cross_entropy(m1(x), y)).backward()
        s1.unscale_(o1.base_optimizer)
        torch.nn.utils.clip_grad_norm_(m1.parameters(), 0.05)
        o1.second_step(zero_grad=True, scaler=s1)
        perturbed_step(m2, o2, x, y, F.cross_entropy, scaler=s2, clip_grad_norm=0.05)
    assert same_weights(m1, m2)
    assert s1.get_scale() == s2.get_scale()


def test_unscale_on_the_wrapper_is_refused_before_it_unscales_twice():
    model = mlp()
    opt, sc = build("sam", model), scaler()
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    sc.scale(F.cross_entropy(model(x), y)).backward()
    opt.first_step(zero_grad=True, scaler=sc)
    sc.scale(F.cross_entropy(model(x), y)).backward()
    sc.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"scaler.unscale_\(opt.base_optimizer\)"):
        opt.second_step(scaler=sc)
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
