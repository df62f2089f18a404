"""Code written for the popular PyTorch SAM or pytorch-optimizer: what works, what says why."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from optim_cases import batches, build, mlp, same_weights

from forgetting_sam import GSAM, OBF, SAM, PerturbedOptimizer


def test_adaptive_is_positional_after_rho():
    model = mlp()
    for opt in (SAM(model.parameters(), torch.optim.SGD, 0.5, True, lr=0.1),
                PerturbedOptimizer(model.parameters(), torch.optim.SGD, 0.5, True, lr=0.1)):
        assert opt.param_groups[0]["rho"] == 0.5 and opt.param_groups[0]["adaptive"] is True


@pytest.mark.parametrize("cls, kwarg, hint", [
    (SAM, {"perturb_eps": 1e-12}, "δ"),
    (SAM, {"use_gc": True}, "gradient centralization"),
    (GSAM, {"rho_scheduler": object()}, "ProportionalRho"),
    (OBF, {"lr_typo": 0.1}, "spelling"),
])
def test_a_peer_keyword_names_our_wrapper_and_the_argument(cls, kwarg, hint):
    name = next(iter(kwarg))
    with pytest.raises(TypeError) as err:
        cls(mlp().parameters(), torch.optim.SGD, lr=0.1, **kwarg)
    text = str(err.value)
    assert text.startswith(f"{cls.__name__} got an unexpected keyword argument {name!r}")
    assert hint in text and "SGD" in text


def test_other_base_optimizer_errors_pass_through():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        SAM(mlp().parameters(), torch.optim.SGD, lr=-1.0)


def peer_style_step(model, opt, x, y, zero=True):
    """The popular SAM's closure style: a backward at w *before* step(closure)."""
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step(closure)


def test_a_backward_before_step_closure_warns_once():
    model, (x, y) = mlp(), batches(1)[0]
    opt = build("gsam", model)
    with pytest.warns(UserWarning, match="step\\(\\) evaluates the closure at w itself") as record:
        peer_style_step(model, opt, x, y)
    assert "Migrating from the popular PyTorch SAM" in str(record[0].message)
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peer_style_step(model, opt, x, y)  # once per optimizer


def test_the_warning_is_about_a_real_change_of_the_step():
    """Peer style with GSAM doubles the ascent gradient: the weights do change."""
    m1, m2 = mlp(), mlp()
    o1, o2 = build("gsam", m1), build("gsam", m2)
    x, y = batches(1)[0]
    with pytest.warns(UserWarning):
        peer_style_step(m1, o1, x, y)

    def closure():
        o2.zero_grad()
        loss = F.cross_entropy(m2(x), y)
        loss.backward()
        return loss
    o2.step(closure)
    assert not same_weights(m1, m2)


def test_torch_contract_closures_never_warn():
    model = mlp()
    opt = build("gsam", model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for set_to_none in (True, False, True):
            for x, y in batches(2):
                def closure():  # called within this iteration
                    opt.zero_grad(set_to_none=set_to_none)  # noqa: B023
                    loss = F.cross_entropy(model(x), y)  # noqa: B023
                    loss.backward()
                    return loss
                opt.step(closure)  # the previous step's gradients are still in .grad
            opt.zero_grad(set_to_none=set_to_none)


def peer_checkpoint(model, lr=0.1, momentum=0.9, rho=0.05):
    """A state_dict in the popular SAM's format: the wrapper's own Optimizer.state_dict,
    per-parameter ``old_p`` weight copies, no momentum, groups without our keys."""
    wrapper = torch.optim.Optimizer(model.parameters(), dict(
        rho=rho, adaptive=False, lr=lr, momentum=momentum, dampening=0, weight_decay=0,
        nesterov=False))
    for p in model.parameters():
        wrapper.state[p]["old_p"] = p.detach().clone()
    return wrapper.state_dict()


def test_a_checkpoint_of_the_popular_sam_loads_with_a_warning_that_says_what_is_missing():
    m1, m2 = mlp(), mlp()
    saved = peer_checkpoint(m1, lr=0.05, rho=0.2)
    o1 = SAM(m1.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="no momentum") as record:
        o1.load_state_dict(saved)
    assert "old_p" in str(record[0].message)
    assert len(o1.state) == 0  # the weight copies are not carried along
    # It resumes as a fresh optimizer with the file's hyperparameters.
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.2, lr=0.05, momentum=0.9)
    assert o1.param_groups[0]["alpha"] == 0.0 and o1.param_groups[0]["adaptive_form"] == "original"
    for x, y in batches(2):
        for model, opt in ((m1, o1), (m2, o2)):
            F.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
    assert same_weights(m1, m2)


def test_our_own_checkpoint_loads_silently():
    model = mlp()
    opt = build("sam", model)
    x, y = batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("sam", mlp()).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("use_scaler", [False, True], ids=["fp32", "scaler"])
def test_a_skipped_step_leaves_nothing_that_looks_like_a_backward(use_scaler):
    """After a skip (non-finite ascent gradient) the next torch-contract step does not warn."""
    model = mlp()
    opt = build("sam", model)
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**8) if use_scaler else None
    backwards = []

    def inf_on_first_backward(g):  # an Inf (not NaN) in one gradient, the others finite
        backwards.append(1)
        return g * math.inf if len(backwards) == 1 else g

    handle = model[-1].weight.register_hook(inf_on_first_backward)
    for x, y in batches(2):
        def closure():  # called within this iteration
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)  # noqa: B023
            (sc.scale(loss) if sc else loss).backward()
            return loss

        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # the skip's own report
            opt.step(closure, scaler=sc)
    handle.remove()
    assert len(backwards) == 3  # the first step skipped after its ascent pass
