"""WSAM, F-SAM, Fisher SAM and LookSAM (docs/algorithms.md §10) against flat-vector references.

Each reference is written from its paper's equations on one flat float64 parameter vector
with ``torch.func`` (SGD with momentum on top), sharing no code with the package.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from forgetting_sam import GSAM, OBFLoss, perturbed_step
from forgetting_sam.optim import WSAM, FisherSAM, FriendlySAM, LookSAM, PerturbedOptimizer
from forgetting_sam.optim.rules import FisherDirection, FriendlyDirection, LookSAMReuse, WeightedSharpness
from test_optim import FlatModel, data, mlp, ref_obf
from test_perturb_schedule import closure_step

LR, MOM, D = 0.1, 0.9, 1e-12


def ce_of(fm, x, y):
    return lambda v: F.cross_entropy(fm.logits(v, x), y)  # noqa: E731


class Ref:
    """Descent gradients per step, with the member's own state (F-SAM's EMA)."""

    def __init__(self, kind, obf=False, **hp):
        self.kind, self.obf, self.hp, self.m = kind, obf, hp, None

    def __call__(self, fm, w, x, y):
        ce = ce_of(fm, x, y)
        asc = (lambda v: ref_obf(fm.logits(v, x), y, 1.0, None, "sigmoid")) if self.obf else ce  # noqa: E731
        h = grad(asc)(w)
        rho = self.hp["rho"]
        if self.kind == "wsam":  # Yue et al.: ∇[L + γ/(1−γ)(L(w+ε) − L)]
            a = self.hp["gamma"] / (1 - self.hp["gamma"])
            return a * grad(ce)(w + rho * h / (h.norm() + D)) + (1 - a) * h
        if self.kind == "looksam":  # Liu et al. Alg. 1: SAM every k steps, g_v reused between
            self.t = getattr(self, "t", -1) + 1
            if self.t % self.hp["k"] == 0:
                gs = grad(ce)(w + rho * h / (h.norm() + D))
                self.gv = gs - (h @ gs) / (h @ h) * h
                return gs
            return h + self.hp["alpha"] * h.norm() / self.gv.norm() * self.gv
        if self.kind == "fsam":  # Li et al. Alg. 1: m = λm + (1−λ)g, d = g − σm
            lam, sigma = self.hp["lmbda"], self.hp["sigma"]
            self.m = (1 - lam) * h if self.m is None else lam * self.m + (1 - lam) * h
            d = h - sigma * self.m
            gp = grad(ce)(w + rho * d / (d.norm() + D))
            if self.hp.get("alpha"):
                ghat = gp / (gp.norm() + D)
                gp = gp - self.hp["alpha"] * (h - (h @ ghat) * ghat)
            return gp
        # Kim et al.: ε = ρ f⁻¹∇ / sqrt(∇ᵀ f⁻¹ ∇), f = 1 + η ∇²
        finv_h = h / (1 + self.hp["eta"] * h * h)
        return grad(ce)(w + rho * finv_h / ((h @ finv_h).sqrt() + D))


CASES = {
    "wsam": (lambda p: WSAM(p, torch.optim.SGD, rho=0.3, gamma=0.8, lr=LR, momentum=MOM),
             lambda: Ref("wsam", rho=0.3, gamma=0.8)),
    "fsam": (lambda p: FriendlySAM(p, torch.optim.SGD, rho=0.3, sigma=0.7, lmbda=0.6, lr=LR, momentum=MOM),
             lambda: Ref("fsam", rho=0.3, sigma=0.7, lmbda=0.6)),
    "fsam_gsam_obf": (lambda p: FriendlySAM(p, torch.optim.SGD, rho=0.3, sigma=0.7, lmbda=0.6, alpha=0.5,
                                            ascent_loss=OBFLoss(), lr=LR, momentum=MOM),
                      lambda: Ref("fsam", obf=True, rho=0.3, sigma=0.7, lmbda=0.6, alpha=0.5)),
    "looksam": (lambda p: LookSAM(p, torch.optim.SGD, rho=0.3, k=3, reuse_alpha=0.7, lr=LR, momentum=MOM),
                lambda: Ref("looksam", rho=0.3, k=3, alpha=0.7)),
    "fisher": (lambda p: FisherSAM(p, torch.optim.SGD, rho=0.3, fisher_eta=2.0, lr=LR, momentum=MOM),
               lambda: Ref("fisher", rho=0.3, eta=2.0)),
    "fisher_obf": (lambda p: FisherSAM(p, torch.optim.SGD, rho=0.3, fisher_eta=2.0, ascent_loss=OBFLoss(),
                                       lr=LR, momentum=MOM),
                   lambda: Ref("fisher", obf=True, rho=0.3, eta=2.0)),
}


def two_step(model, opt, x, y):
    if not opt.should_perturb():
        F.cross_entropy(model(x), y).backward()
        opt.base_step(zero_grad=True)
        return
    (opt.ascent_loss or F.cross_entropy)(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


APIS = {
    "two_step": two_step,
    "closure": closure_step,
    "perturbed_step": lambda m, o, x, y: perturbed_step(m, o, x, y, F.cross_entropy),
}


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_flat_reference(case, api):
    build, ref = CASES[case]
    model, (x, y) = mlp(), data("mlp")
    fm = FlatModel(model)
    opt, r = build(model.parameters()), ref()
    w, buf = fm.vec(), None
    for step in range(5):
        g = r(fm, w, x, y)
        buf = g if buf is None else MOM * buf + g
        w = w - LR * buf
        APIS[api](model, opt, x, y)
        assert torch.allclose(fm.vec(), w, rtol=1e-10, atol=1e-12), f"{case} via {api} differs at step {step + 1}"


def test_wsam_at_one_half_is_sam_and_refuses_obf():
    x, y = data("mlp")
    a, b = mlp(), mlp()
    oa = WSAM(a.parameters(), torch.optim.SGD, rho=0.3, gamma=0.5, lr=LR)
    ob = PerturbedOptimizer(b.parameters(), torch.optim.SGD, rho=0.3, lr=LR)
    for _ in range(2):
        two_step(a, oa, x, y)
        two_step(b, ob, x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="ascent_loss"):
        WSAM(mlp().parameters(), torch.optim.SGD, ascent_loss=OBFLoss(), lr=LR)


def test_looksam_gv_is_checkpointed_and_refuses_obf():
    x, y = data("mlp")
    build = CASES["looksam"][0]
    straight = mlp()
    o = build(straight.parameters())
    for _ in range(5):
        perturbed_step(straight, o, x, y, F.cross_entropy)
    first = mlp()
    o1 = build(first.parameters())
    for _ in range(2):  # one perturbed step (g_v saved), one reuse
        perturbed_step(first, o1, x, y, F.cross_entropy)
    saved = copy.deepcopy((first.state_dict(), o1.state_dict()))
    resumed = mlp(seed=4)
    resumed.load_state_dict(saved[0])
    o2 = build(resumed.parameters())
    o2.load_state_dict(saved[1])
    for _ in range(3):
        perturbed_step(resumed, o2, x, y, F.cross_entropy)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="ascent_loss"):
        LookSAM(mlp().parameters(), torch.optim.SGD, ascent_loss=OBFLoss(), lr=LR)


def test_fisher_refuses_adaptive_groups():
    model, (x, y) = mlp(), data("mlp")
    opt = FisherSAM(model.parameters(), torch.optim.SGD, adaptive=True, lr=LR)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="adaptive=False"):
        opt.first_step()


def test_fsam_ema_is_checkpointed_and_untouched_by_a_nonfinite_gradient():
    x, y = data("mlp")
    straight = mlp()
    o = CASES["fsam"][0](straight.parameters())
    for _ in range(4):
        perturbed_step(straight, o, x, y, F.cross_entropy)
    first = mlp()
    o1 = CASES["fsam"][0](first.parameters())
    for _ in range(2):
        perturbed_step(first, o1, x, y, F.cross_entropy)
    saved = copy.deepcopy((first.state_dict(), o1.state_dict()))
    before = [o1.state[p]["fsam_m"].clone() for p in first.parameters()]
    for p in first.parameters():  # a NaN ascent gradient skips the step and keeps m
        p.grad = torch.full_like(p, float("nan"))
    o1.first_step()
    assert o1._skip
    o1.restore()
    assert all(torch.equal(a, o1.state[p]["fsam_m"]) for a, p in zip(before, first.parameters()))
    resumed = mlp(seed=4)
    resumed.load_state_dict(saved[0])
    o2 = CASES["fsam"][0](resumed.parameters())
    o2.load_state_dict(saved[1])
    for _ in range(2):
        perturbed_step(resumed, o2, x, y, F.cross_entropy)
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bad_parts_are_refused_by_name():
    for make, match in [(lambda: WeightedSharpness(1.0), "gamma"), (lambda: FriendlyDirection(lmbda=1.0), "lmbda"),
                        (lambda: FriendlyDirection(sigma=-1), "sigma"), (lambda: FisherDirection(-0.1), "eta"),
                        (lambda: LookSAMReuse(-1.0), "alpha")]:
        with pytest.raises(ValueError, match=match):
            make()
    with pytest.raises(TypeError, match="direction"):
        GSAM(mlp().parameters(), torch.optim.SGD, direction="fisher", lr=LR)
