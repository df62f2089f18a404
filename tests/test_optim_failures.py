"""Failure paths of the optimizers: non-finite descent gradients, interrupted closures,
accumulation state across zero_grad, overflow detection that does not read the scale,
non-finite hyperparameters and the public ``skipped`` flag."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from optim_cases import FAMILY, Overflows, batches, build, mlp, same_weights

from forgetting_sam import SAM, ProportionalRho, perturbed_step


def nan_on_call(k: int):
    """A cross-entropy that returns NaN on its ``k``-th call (1-based), finite otherwise."""
    calls = [0]

    def loss_fn(out, y):
        calls[0] += 1
        loss = F.cross_entropy(out, y)
        return loss * math.nan if calls[0] == k else loss
    return loss_fn


def two_step_nan_descent(model, opt, x, y):
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    (F.cross_entropy(model(x), y) * math.nan).backward()
    opt.second_step(zero_grad=True)


def closure_nan_descent(model, opt, x, y):
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        (loss * (math.nan if calls[0] == 2 else 1.0)).backward()
        return loss
    opt.step(closure)


def perturbed_step_nan_descent(model, opt, x, y):
    assert perturbed_step(model, opt, x, y, nan_on_call(2)).skipped


@pytest.mark.parametrize("run", [two_step_nan_descent, closure_nan_descent, perturbed_step_nan_descent],
                         ids=["two-step", "closure", "perturbed_step"])
@pytest.mark.parametrize("name", ["sam", "gsam", "asam"])
def test_non_finite_descent_gradient_skips_the_step(name, run):
    model = mlp()
    opt = build(name, model)
    (x, y), = batches(1)
    before = copy.deepcopy(model)
    with pytest.warns(RuntimeWarning, match="non-finite descent gradient"):
        run(model, opt, x, y)
    assert same_weights(model, before) and not opt.is_perturbed
    assert opt.skipped
    assert len(opt.state) == 0  # SGD with momentum: the base step never made its buffer
    perturbed_step(model, opt, x, y, F.cross_entropy)  # and the next good step runs
    assert not opt.skipped and not same_weights(model, before)


def test_plain_optimizer_non_finite_gradient_skips_the_step():
    model = mlp()
    opt = build("sgd", model)
    (x, y), = batches(1)
    before = copy.deepcopy(model)
    with pytest.warns(RuntimeWarning, match="non-finite descent gradient"):
        res = perturbed_step(model, opt, x, y, nan_on_call(1))
    assert res.skipped and same_weights(model, before) and len(opt.state) == 0


@pytest.mark.parametrize("name", ["sam", "gsam", "obf"])
def test_keyboard_interrupt_in_the_second_closure_call_restores_w(name):
    model = mlp()
    opt = build(name, model)
    (x, y), = batches(1)
    before = copy.deepcopy(model)
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        if calls[0] == 2:
            raise KeyboardInterrupt
        from forgetting_sam import AscentLoss
        loss = AscentLoss(F.cross_entropy)(model(x), y)
        loss.backward()
        return loss
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    assert not opt.is_perturbed
    assert same_weights(model, before)
    # and the optimizer is usable again
    perturbed_step(model, opt, x, y, F.cross_entropy)
    assert not same_weights(model, before)


def _zero_opt(model, opt):
    opt.zero_grad()


def _zero_opt_in_place(model, opt):
    opt.zero_grad(set_to_none=False)


def _zero_model(model, opt):
    model.zero_grad()


@pytest.mark.parametrize("zero", [_zero_opt, _zero_opt_in_place, _zero_model],
                         ids=["opt.zero_grad", "opt.zero_grad(set_to_none=False)", "model.zero_grad"])
@pytest.mark.parametrize("name", ["sgd", "sam", "gsam"])
def test_zero_grad_between_accumulate_and_update_drops_the_accumulation(name, zero):
    (x1, y1), (x2, y2) = batches(2)
    model, fresh = mlp(), mlp()
    opt, fresh_opt = build(name, model), build(name, fresh)
    res = perturbed_step(model, opt, x1, y1, F.cross_entropy, update=False)
    assert not res.updated
    zero(model, opt)
    perturbed_step(model, opt, x2, y2, F.cross_entropy)
    perturbed_step(fresh, fresh_opt, x2, y2, F.cross_entropy)  # the new batch alone
    assert same_weights(model, fresh)


@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_accumulation_without_zero_grad_still_counts_both_calls(name):
    (x1, y1), (x2, y2) = batches(2)
    model, whole = mlp(), mlp()
    opt, whole_opt = build(name, model), build(name, whole)
    perturbed_step(model, opt, x1, y1, F.cross_entropy, update=False)
    perturbed_step(model, opt, x2, y2, F.cross_entropy)
    perturbed_step(whole, whole_opt, torch.cat([x1, x2]), torch.cat([y1, y2]), F.cross_entropy,
                   micro_batch_size=len(x1))
    assert all(torch.allclose(p, q, rtol=1e-12, atol=1e-14) for p, q in zip(model.parameters(), whole.parameters()))


def test_pending_accumulation_is_in_the_state_dict():
    (x1, y1), _ = batches(2)
    model = mlp()
    opt = build("sam", model)
    assert "accumulation" not in opt.state_dict()
    perturbed_step(model, opt, x1, y1, F.cross_entropy, update=False)
    state = opt.state_dict()
    assert state["accumulation"] == {"examples": len(x1), "skipped": False}
    # a fresh process has no .grad to go with it: the count is dropped with a warning
    other = mlp(seed=3)
    other_opt = build("sam", other)
    other_opt.load_state_dict(state)
    with pytest.warns(RuntimeWarning, match="accumulated examples but no parameter has a .grad"):
        perturbed_step(other, other_opt, x1, y1, F.cross_entropy)


def test_a_skip_in_an_accumulate_call_skips_the_whole_update():
    (x1, y1), (x2, y2) = batches(2)
    model = mlp()
    opt = build("sam", model)
    before = copy.deepcopy(model)
    res = perturbed_step(model, opt, x1, y1, nan_on_call(1), update=False)  # ascent NaN
    assert res.skipped and not res.updated
    with pytest.warns(RuntimeWarning, match="non-finite ascent gradient"):
        res = perturbed_step(model, opt, x2, y2, F.cross_entropy)
    assert res.skipped and same_weights(model, before)


def _scaler_without_backoff():
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    sc.set_backoff_factor(1.0)  # the constructor refuses 1.0; the setter does not
    return sc


def _two_step_scaled(model, opt, sc, x, y):
    sc.scale(F.cross_entropy(model(x), y)).backward()
    opt.first_step(zero_grad=True, scaler=sc)
    sc.scale(F.cross_entropy(model(x), y)).backward()
    opt.second_step(zero_grad=True, scaler=sc)
    return opt.skipped


def _perturbed_step_scaled(model, opt, sc, x, y):
    res = perturbed_step(model, opt, x, y, F.cross_entropy, scaler=sc)
    assert res.skipped == opt.skipped
    return res.skipped


@pytest.mark.parametrize("one_step", [_two_step_scaled, _perturbed_step_scaled], ids=["two-step", "perturbed_step"])
@pytest.mark.parametrize("forward", [1, 2], ids=["ascent-overflow", "descent-overflow"])
def test_overflow_is_reported_even_when_the_scale_does_not_drop(one_step, forward):
    model = mlp(dtype=torch.float32)
    opt = build("sam", model)
    sc = _scaler_without_backoff()
    (x, y), = batches(1, dtype=torch.float32)
    before = copy.deepcopy(model)
    overflows = Overflows(model, {(0, forward)})
    overflows.next_step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        skipped = one_step(model, opt, sc, x, y)
    overflows.handle.remove()
    assert sc.get_scale() == 2.0**10  # nothing to read off the scale
    assert skipped and same_weights(model, before)
    assert not one_step(model, opt, sc, x, y) and not same_weights(model, before)


def test_plain_optimizer_with_scaler_reports_overflow_directly():
    model = mlp(dtype=torch.float32)
    opt = build("sgd", model)
    sc = _scaler_without_backoff()
    (x, y), = batches(1, dtype=torch.float32)
    overflows = Overflows(model, {(0, 1)})
    overflows.next_step()
    assert perturbed_step(model, opt, x, y, F.cross_entropy, scaler=sc).skipped
    overflows.handle.remove()
    assert not perturbed_step(model, opt, x, y, F.cross_entropy, scaler=sc).skipped


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("arg", ["rho", "eta", "alpha"])
def test_non_finite_family_hyperparameters_are_rejected(arg, bad):
    model = mlp()
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, **{arg: bad})
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        SAM([{"params": model.parameters(), arg: bad}], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("arg", ["rho_max", "rho_min", "lr_max", "lr_min"])
def test_non_finite_proportional_rho_arguments_are_rejected(arg, bad):
    opt = SAM(mlp().parameters(), torch.optim.SGD, lr=0.1)
    kwargs = {"rho_max": 0.1, **{arg: bad}}
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        ProportionalRho(opt, **kwargs)


@pytest.mark.parametrize("arg", ["lr", "momentum", "weight_decay"])
def test_non_finite_base_hyperparameters_are_rejected(arg):
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        SAM(mlp().parameters(), torch.optim.SGD, **{"lr": 0.1, arg: math.nan})
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        SAM([{"params": mlp().parameters(), arg: math.inf}], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("name", FAMILY)
def test_skipped_is_public_and_read_only(name):
    model = mlp()
    opt = build(name, model)
    (x, y), = batches(1)
    assert opt.skipped is False
    overflows = Overflows(model, {(0, 1)})  # Inf logits in the ascent pass
    overflows.next_step()
    with pytest.warns(RuntimeWarning, match="non-finite ascent gradient"):
        perturbed_step(model, opt, x, y, F.cross_entropy)
    overflows.handle.remove()
    assert opt.skipped is True
    with pytest.raises(AttributeError):
        opt.skipped = False
    perturbed_step(model, opt, x, y, F.cross_entropy)
    assert opt.skipped is False
