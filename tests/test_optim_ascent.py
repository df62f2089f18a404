"""AscentLoss: one closure for SGD and every family member, OBF's objective included."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
import torch.nn.functional as F
from optim_cases import MEMBERS, batches, build, mlp, same_weights

from forgetting_sam import AscentLoss, obf_loss
from forgetting_sam.optim import ascent_pass


def two_step(model, opt, x, y):
    if not hasattr(opt, "first_step"):  # SGD
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        return
    (opt.ascent_loss or F.cross_entropy)(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


def training_step(model, opt, criterion, x, y):
    """The one training step a user writes, whatever ``opt`` is."""
    def closure():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        return loss
    return opt.step(closure)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_one_closure_serves_sgd_and_every_member_like_the_two_step_api(name):
    m1, m2 = mlp(), mlp()
    o1, o2 = build(name, m1), build(name, m2)
    criterion = AscentLoss(F.cross_entropy)
    for x, y in batches(3):
        expected = F.cross_entropy(m2(x), y)
        two_step(m1, o1, x, y)
        loss = training_step(m2, o2, criterion, x, y)
        # The closure's loss is the training loss, also while OBF ascends its objective.
        assert torch.equal(loss.detach(), expected.detach())
    assert same_weights(m1, m2)


@pytest.mark.parametrize("name", ["obf", "gsam_obf", "asam_obf"])
def test_closure_without_ascent_loss_raises_for_an_ascent_objective(name):
    model = mlp()
    opt = build(name, model)
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="forgetting_sam.AscentLoss"):
        training_step(model, opt, F.cross_entropy, x, y)
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_ascent_loss_is_the_training_loss_outside_an_ascent_pass():
    model = mlp()
    x, y = batches(1)[0]
    criterion = AscentLoss(F.cross_entropy)
    assert torch.equal(criterion(model(x), y), F.cross_entropy(model(x), y))
    with ascent_pass(torch.optim.SGD(model.parameters(), lr=0.1)):  # no ascent objective
        assert torch.equal(criterion(model(x), y), F.cross_entropy(model(x), y))


def test_inside_the_pass_value_of_the_loss_gradient_of_the_objective():
    opt = build("obf", mlp())
    x, y = batches(1)[0]
    logits = mlp(seed=3)(x).detach().requires_grad_()
    with ascent_pass(opt):
        out = AscentLoss(F.cross_entropy)(logits, y)
    (g,) = torch.autograd.grad(out, logits)
    (expected,) = torch.autograd.grad(obf_loss(logits, y), logits)
    assert torch.equal(out.detach(), F.cross_entropy(logits, y).detach())
    assert torch.equal(g, expected)


def test_the_pass_is_per_thread():
    opt = build("obf", mlp())
    x, y = batches(1)[0]
    logits = mlp(seed=3)(x).detach().requires_grad_()
    criterion = AscentLoss(F.cross_entropy)
    seen = {}

    def other_thread():
        (seen["g"],) = torch.autograd.grad(criterion(logits, y), logits)

    with ascent_pass(opt):
        criterion(logits, y)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    assert torch.equal(seen["g"], expected)


def test_an_error_inside_the_pass_is_not_masked():
    opt = build("obf", mlp())
    with pytest.raises(KeyError, match="boom"):
        with ascent_pass(opt):
            raise KeyError("boom")


def test_the_older_ascent_loss_argument_still_works():
    m1, m2 = mlp(), mlp()
    o1, o2 = build("obf", m1), build("obf", m2)
    for x, y in batches(2):
        def closure(ascent_loss=None):  # called within this iteration: x and y are current
            o2.zero_grad()
            logits = m2(x)  # noqa: B023
            loss = F.cross_entropy(logits, y)  # noqa: B023
            (ascent_loss(logits, y) if ascent_loss else loss).backward()  # noqa: B023
            return loss
        two_step(m1, o1, x, y)
        o2.step(closure)
    assert same_weights(m1, m2)


def test_ascent_loss_rejects_a_non_callable():
    with pytest.raises(TypeError, match="loss_fn must be a callable"):
        AscentLoss("cross_entropy")



def test_the_pass_is_per_asyncio_task():
    opt = build("obf", mlp())
    x, y = batches(1)[0]
    logits = mlp(seed=3)(x).detach().requires_grad_()
    criterion = AscentLoss(F.cross_entropy)
    order, grads = [], {}

    async def ascending():
        with ascent_pass(opt):
            order.append("enter")
            await asyncio.sleep(0.01)  # the other task runs while this pass is open
            criterion(logits, y)

    async def training():
        await asyncio.sleep(0)
        order.append("train")
        (grads["train"],) = torch.autograd.grad(criterion(logits, y), logits)

    async def main():
        await asyncio.gather(ascending(), training())

    asyncio.run(main())
    (expected,) = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    assert order == ["enter", "train"]
    assert torch.equal(grads["train"], expected)
