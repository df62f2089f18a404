"""perturbed_step(model, opt, batch, compute_loss=fn): dict batches, labels inside the batch,
ModelOutput-like results, against the (inputs, targets, loss_fn) form."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from optim_cases import MEMBERS, batches, build, mlp, same_weights

from forgetting_sam import AscentLoss, perturbed_step


@dataclass
class Output:
    """What a transformers model returns, reduced to the fields used here."""
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class DictModel(nn.Module):
    """``model(input_ids=..., labels=...) -> Output``, the Hugging Face calling convention."""

    def __init__(self, seed=0):
        super().__init__()
        self.net = mlp(seed)

    def forward(self, input_ids, labels=None):
        logits = self.net(input_ids)
        return Output(logits, None if labels is None else F.cross_entropy(logits, labels))


CRITERION = AscentLoss(F.cross_entropy)


def hf_loss(model, batch):
    out = model(**batch)
    return CRITERION(out.logits, batch["labels"]), out.logits


@pytest.mark.parametrize("micro", [None, 3])
@pytest.mark.parametrize("name", list(MEMBERS))
def test_dict_batch_with_compute_loss_equals_the_xy_form(name, micro):
    m1, m2 = mlp(), DictModel()
    o1, o2 = build(name, m1), build(name, m2)
    for x, y in batches(3):
        r1 = perturbed_step(m1, o1, x, y, F.cross_entropy, micro_batch_size=micro)
        r2 = perturbed_step(m2, o2, {"input_ids": x, "labels": y}, compute_loss=hf_loss,
                            micro_batch_size=micro)
        assert torch.equal(r1.loss, r2.loss) and torch.equal(r1.logits, r2.logits)
        if r1.perturbed_logits is not None:
            assert torch.equal(r1.perturbed_loss, r2.perturbed_loss)
            assert torch.equal(r1.perturbed_logits, r2.perturbed_logits)
    assert same_weights(m1, m2.net)


def test_tuple_batch_and_a_loss_alone():
    m1, m2 = mlp(), mlp()
    o1, o2 = build("gsam", m1), build("gsam", m2)
    for x, y in batches(2):
        perturbed_step(m1, o1, x, y, F.cross_entropy)
        res = perturbed_step(m2, o2, (x, y), compute_loss=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
        assert res.logits is None and res.perturbed_logits is None
    assert same_weights(m1, m2)


def test_obf_without_ascent_loss_in_compute_loss_raises_and_restores():
    model = DictModel()
    opt = build("obf", model)
    x, y = batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="AscentLoss"):
        perturbed_step(model, opt, {"input_ids": x, "labels": y},
                       compute_loss=lambda m, b: m(**b).loss)
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(targets="y", loss_fn=F.cross_entropy, compute_loss=hf_loss), TypeError, "not both"),
    (dict(), TypeError, "needs targets and loss_fn"),
    (dict(targets="y"), TypeError, "needs targets and loss_fn"),
    (dict(compute_loss="hf_loss"), TypeError, "compute_loss must be a callable"),
    (dict(compute_loss=lambda m, b: m(**b)), TypeError, "must return the training loss"),
    (dict(compute_loss=lambda m, b: F.cross_entropy(m(**b).logits, b["labels"], reduction="none")),
     ValueError, "must be 0-d"),
    (dict(compute_loss=lambda m, b: (m(**b).loss, m(**b))), TypeError, "logits of type Output"),
])
def test_bad_forms_are_named(kwargs, error, match):
    model = DictModel()
    x, y = batches(1)[0]
    if kwargs.get("targets") == "y":
        kwargs["targets"] = y
    with pytest.raises(error, match=match):
        perturbed_step(model, build("sam", model), {"input_ids": x, "labels": y}, **kwargs)
