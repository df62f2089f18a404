"""The optimizer family against independent computations (docs/algorithms.md §1–§7).

Every family member runs through the same checks (the REGISTRY below). References are
written here with plain tensor math on a flat parameter vector and ``torch.func``; they
share no code with the package.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad

from forgetting_sam import ASAM, GSAM, OBF, SAM, OBFLoss, ProportionalRho, obf_loss, perturbed_step

DELTA = 1e-12


# ----------------------------------------------------------------------------- models


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(7, 4)]
    return nn.Sequential(*layers).double()


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).double()


def data(model_kind, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    if model_kind == "mlp":
        return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
    return torch.randn(n, 2, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


MODELS = {"mlp": mlp, "conv": convnet}


# ------------------------------------------------------------------------- references


def ref_obf(logits, y, gamma, lam, prob):
    """OBF objective written out from §5 (independent of the package)."""
    k = logits.shape[1]
    lam = 1.0 / k if lam is None else lam
    e = F.one_hot(y, k).to(logits.dtype)
    u = torch.full_like(logits, 1.0 / k)
    if prob == "sigmoid":
        p = torch.sigmoid(logits)
        ce = lambda t: -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).sum(1)  # noqa: E731
    else:
        p = torch.softmax(logits, 1)
        ce = lambda t: -(t * torch.log(p)).sum(1)  # noqa: E731
    py = (p * e).sum(1).detach()
    alpha = gamma * torch.ones_like(py) if lam == 0 else gamma * torch.clamp((1 - lam / py) / (1 - lam), min=0)
    return ((1 - alpha) * ce(e) - ce(u)).mean()


@dataclass
class Spec:
    """How a registry entry is built, and the same numbers for the reference."""

    build: callable
    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.0
    form: str = "original"
    alpha: float = 0.0
    obf: dict | None = field(default=None)


REGISTRY = {
    "sam": Spec(lambda p, **kw: SAM(p, torch.optim.SGD, rho=0.3, **kw), rho=0.3),
    "asam": Spec(lambda p, **kw: ASAM(p, torch.optim.SGD, rho=0.5, eta=0.01, **kw),
                 rho=0.5, adaptive=True, eta=0.01),
    "asam_before": Spec(lambda p, **kw: SAM(p, torch.optim.SGD, rho=0.4, adaptive=True,
                                            adaptive_form="before", **kw),
                        rho=0.4, adaptive=True, form="before"),
    "asam_after": Spec(lambda p, **kw: SAM(p, torch.optim.SGD, rho=0.4, adaptive=True,
                                           adaptive_form="after", **kw),
                       rho=0.4, adaptive=True, form="after"),
    "gsam": Spec(lambda p, **kw: GSAM(p, torch.optim.SGD, rho=0.2, alpha=0.4, **kw), rho=0.2, alpha=0.4),
    "obf": Spec(lambda p, **kw: OBF(p, torch.optim.SGD, rho=0.3, **kw), rho=0.3,
                obf=dict(gamma=1.0, lam=None, prob="sigmoid")),
    "obf_softmax": Spec(lambda p, **kw: OBF(p, torch.optim.SGD, rho=0.3, gamma=0.5, lam=0.1,
                                            prob="softmax", **kw),
                        rho=0.3, obf=dict(gamma=0.5, lam=0.1, prob="softmax")),
    "gsam_obf": Spec(lambda p, **kw: GSAM(p, torch.optim.SGD, rho=0.2, alpha=1.0,
                                          ascent_loss=OBFLoss(gamma=1.0), **kw),
                     rho=0.2, alpha=1.0, obf=dict(gamma=1.0, lam=None, prob="sigmoid")),
    "asam_obf": Spec(lambda p, **kw: ASAM(p, torch.optim.SGD, rho=0.5, eta=0.0,
                                          ascent_loss=OBFLoss(gamma=1e-12), **kw),
                     rho=0.5, adaptive=True, obf=dict(gamma=1e-12, lam=None, prob="sigmoid")),
}
NAMES = list(REGISTRY)


class FlatModel:
    """A model seen as a function of one flat float64 parameter vector."""

    def __init__(self, model):
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}

    def vec(self):
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflat(self, v):
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = v[i:i + k].view(s)
            i += k
        return out

    def logits(self, v, x):
        # fresh buffer copies: train-mode BN normalizes with batch stats either way
        bufs = {n: b.clone() for n, b in self.buffers.items()}
        return functional_call(self.model, {**self.unflat(v), **bufs}, (x,))


def ref_descent_grad(fm, w, x, y, spec):
    """docs/algorithms.md §1 for one chunk: returns the (corrected) descent gradient."""
    ce = lambda v: F.cross_entropy(fm.logits(v, x), y)  # noqa: E731
    if spec.obf is None:
        asc = ce
    else:
        asc = lambda v: ref_obf(fm.logits(v, x), y, **spec.obf)  # noqa: E731
    h = grad(asc)(w)
    if spec.adaptive:
        t = w.abs() + spec.eta
        if spec.form == "original":
            d = t * t * h / ((t * h).norm() + DELTA)
        elif spec.form == "before":
            d = t * h / ((t * h).norm() + DELTA)
        else:
            d = t * h / (h.norm() + DELTA)
    else:
        d = h / (h.norm() + DELTA)
    gp = grad(ce)(w + spec.rho * d)
    if spec.alpha:
        ghat = gp / (gp.norm() + DELTA)
        gp = gp - spec.alpha * (h - (h @ ghat) * ghat)
    return gp


def two_step(model, opt, x, y):
    (opt.ascent_loss or F.cross_entropy)(model(x), y).backward()
    opt.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_over_steps(name, kind):
    """1 and 3 steps of SGD with momentum, two-step API, float64, vs the flat reference."""
    spec = REGISTRY[name]
    model = MODELS[kind]()
    x, y = data(kind)
    fm = FlatModel(model)
    opt = spec.build(model.parameters(), lr=0.1, momentum=0.9)
    w, buf = fm.vec(), None
    for step in range(3):
        gp = ref_descent_grad(fm, w, x, y, spec)
        buf = gp if buf is None else 0.9 * buf + gp
        w = w - 0.1 * buf
        two_step(model, opt, x, y)
        assert torch.allclose(fm.vec(), w, rtol=1e-10, atol=1e-12), f"{name} differs at step {step + 1}"


@pytest.mark.parametrize("name", NAMES)
def test_rho_zero_is_the_base_optimizer_bit_for_bit(name):
    spec = REGISTRY[name]
    model, x, y = convnet(), *data("conv")
    plain = copy.deepcopy(model)
    opt = spec.build(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for g in opt.param_groups:
        g["rho"], g["alpha"] = 0.0, 0.0
    base = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        perturbed_step(model, opt, x, y, F.cross_entropy)
        base.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        base.step()
    for a, b in zip(model.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.buffers(), plain.buffers()):
        assert torch.equal(a, b)


def test_gsam_correction_on_and_off_against_the_reference():
    """At ρ > 0 the correction is non-zero: α = 0.5 and α = 0 each match their reference,
    and differ from each other (at ρ = 0, h = g_p and the correction vanishes)."""
    x, y = data("mlp")
    after = {}
    for alpha in (0.5, 0.0):
        model = mlp()
        fm = FlatModel(model)
        opt = GSAM(model.parameters(), torch.optim.SGD, rho=0.2, alpha=alpha, lr=0.1)
        expected = fm.vec() - 0.1 * ref_descent_grad(fm, fm.vec(), x, y, Spec(None, rho=0.2, alpha=alpha))
        two_step(model, opt, x, y)
        assert torch.allclose(fm.vec(), expected, rtol=1e-12, atol=1e-14)
        after[alpha] = fm.vec()
    assert (after[0.5] - after[0.0]).abs().max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_closure_and_perturbed_step_equal_two_step(name):
    spec = REGISTRY[name]
    x, y = data("conv")
    models = [convnet() for _ in range(3)]
    opts = [spec.build(m.parameters(), lr=0.05, momentum=0.9) for m in models]

    def closure(ascent_loss=None):
        opts[1].zero_grad()
        logits = models[1](x)
        loss = F.cross_entropy(logits, y)
        (ascent_loss(logits, y) if ascent_loss else loss).backward()
        return loss

    for _ in range(2):
        two_step(models[0], opts[0], x, y)
        loss = opts[1].step(closure)
        res = perturbed_step(models[2], opts[2], x, y, F.cross_entropy)
        assert torch.equal(loss.detach(), res.loss)
    for m in models[1:]:
        for a, b in zip(models[0].parameters(), m.parameters()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_micro_batches_with_a_ragged_last_chunk(name):
    """m-sharpness (§6): chunks 5, 5, 2 of 12, each its own ε, size-weighted mean."""
    spec = REGISTRY[name]
    model, (x, y) = mlp(), data("mlp", n=12)
    fm = FlatModel(model)
    w = fm.vec()
    g = sum(len(c) * ref_descent_grad(fm, w, xc, yc, spec)
            for xc, yc, c in [(x[a:a + 5], y[a:a + 5], range(a, min(a + 5, 12))) for a in (0, 5, 10)])
    expected = w - 0.1 * g / 12
    opt = spec.build(model.parameters(), lr=0.1)
    res = perturbed_step(model, opt, x, y, F.cross_entropy, micro_batch_size=5)
    assert torch.allclose(fm.vec(), expected, rtol=1e-10, atol=1e-12)
    chunk_losses = [F.cross_entropy(fm.logits(w, x[a:a + 5]), y[a:a + 5]) * len(y[a:a + 5]) for a in (0, 5, 10)]
    assert torch.allclose(res.loss, sum(chunk_losses) / 12)
    assert torch.allclose(res.logits, fm.logits(w, x))


def test_plain_optimizer_with_micro_batches_equals_whole_batch():
    model, (x, y) = mlp(), data("mlp")
    other = copy.deepcopy(model)
    perturbed_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, F.cross_entropy,
                   micro_batch_size=5)
    res = perturbed_step(other, torch.optim.SGD(other.parameters(), lr=0.1), x, y, F.cross_entropy)
    assert res.perturbed_logits is None
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_accumulation_over_calls_equals_one_call(name):
    spec = REGISTRY[name]
    model, (x, y) = mlp(), data("mlp", n=12)
    other = copy.deepcopy(model)
    opt_a = spec.build(model.parameters(), lr=0.1, momentum=0.9)
    opt_b = spec.build(other.parameters(), lr=0.1, momentum=0.9)
    r1 = perturbed_step(model, opt_a, x[:6], y[:6], F.cross_entropy, update=False)
    assert not r1.updated
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    perturbed_step(model, opt_a, x[6:], y[6:], F.cross_entropy, update=True)
    perturbed_step(other, opt_b, x, y, F.cross_entropy, micro_batch_size=6)
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_batchnorm_statistics_come_from_the_unperturbed_pass_only():
    model, (x, y) = convnet(), data("conv", n=12)
    probe = copy.deepcopy(model)
    for a in (0, 6):
        probe(x[a:a + 6])  # what the unperturbed forwards alone do to the statistics
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    perturbed_step(model, opt, x, y, F.cross_entropy, micro_batch_size=6)
    for (name, a), b in zip(model.named_buffers(), probe.buffers()):
        assert torch.equal(a, b), name
    assert model[1].num_batches_tracked.item() == 2


@pytest.mark.parametrize("replay", [True, False])
def test_dropout_replay_gives_identical_masks(replay):
    model, (x, y) = mlp(dropout=0.5), data("mlp")
    masks = []
    model[2].register_forward_hook(lambda m, i, o: masks.append(o.detach() == 0))
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    perturbed_step(model, opt, x, y, F.cross_entropy, replay_dropout=replay)
    assert len(masks) == 2
    assert torch.equal(masks[0], masks[1]) == replay


def _inject_inf(model, on_call):
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        return output * math.inf if len(calls) == on_call else output

    return model[-1].register_forward_hook(hook)


@pytest.mark.parametrize("on_call", [1, 2], ids=["ascent-pass", "descent-pass"])
@pytest.mark.parametrize("name", ["sam", "gsam", "obf"])
def test_fp16_overflow_skips_the_step_and_restores(name, on_call):
    """float16 autocast on CPU with a GradScaler: the forwards run in float16."""
    model, (x, y) = mlp(), data("mlp")
    model.float()
    x = x.float()
    opt = REGISTRY[name].build(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = params_of(model)
    handle = _inject_inf(model, on_call)
    dtypes = []
    dtype_hook = model[-1].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.float16):
        warnings.simplefilter("error")
        res = perturbed_step(model, opt, x, y, F.cross_entropy, scaler=scaler)
    handle.remove()
    assert dtypes and set(dtypes) == {torch.float16}
    assert res.skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9
    assert len(opt.state) == 0  # no momentum buffer: the base step never ran
    with torch.autocast("cpu", dtype=torch.float16):
        res = perturbed_step(model, opt, x, y, F.cross_entropy, scaler=scaler)
    dtype_hook.remove()
    assert not res.skipped
    assert len(opt.state) > 0  # the momentum buffers of a step that ran
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_grad_scaler_step_equals_unscaled_step():
    x, y = data("mlp")
    m1, m2 = mlp().float(), mlp().float()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    perturbed_step(m1, o1, x.float(), y, F.cross_entropy, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    perturbed_step(m2, o2, x.float(), y, F.cross_entropy)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_autocast_sees_the_perturbed_weights():
    """Autocast caches weight casts per region; the perturbed pass must not reuse w's."""
    model, (x, y) = mlp(), data("mlp")
    model.float()
    x = x.float()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=2.0, lr=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = perturbed_step(model, opt, x, y, F.cross_entropy)
    assert not torch.allclose(res.logits.float(), res.perturbed_logits.float())
    # the same step with each forward in its own autocast region (nothing cached across)
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.first_step(zero_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
    opt.restore()
    assert torch.equal(res.perturbed_logits, expected.detach())


@pytest.mark.parametrize("base, kwargs", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
])
@pytest.mark.parametrize("name", ["sam", "gsam", "obf"])
def test_state_dict_round_trip_resumes_bit_identically(name, base, kwargs, tmp_path):
    spec = REGISTRY[name]
    build = {"sam": SAM, "gsam": GSAM, "obf": OBF}[name]
    x, y = data("conv")
    model = convnet()
    opt = build(model.parameters(), base, rho=spec.rho, **kwargs)
    for _ in range(2):
        perturbed_step(model, opt, x, y, F.cross_entropy)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    for _ in range(2):
        perturbed_step(model, opt, x, y, F.cross_entropy)

    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = convnet(seed=5)
    resumed.load_state_dict(ckpt["model"])
    opt2 = build(resumed.parameters(), base, rho=0.9, lr=123.0)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["rho"] == spec.rho and opt2.param_groups[0]["lr"] == kwargs["lr"]
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert len(opt2.base_optimizer.state) > 0
    for _ in range(2):
        perturbed_step(resumed, opt2, x, y, F.cross_entropy)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_lr_scheduler_on_the_wrapper_drives_the_base_lr_without_warnings():
    model, (x, y) = mlp(), data("mlp")
    opt = SAM(model.parameters(), torch.optim.SGD, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            two_step(model, opt, x, y)
            sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.25
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_per_group_rho_with_global_norm():
    model, (x, y) = mlp(), data("mlp")
    fm = FlatModel(model)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SAM([{"params": first, "rho": 0.3}, {"params": second, "rho": 0.1}], torch.optim.SGD, lr=0.1)
    w = fm.vec()
    h = grad(lambda v: F.cross_entropy(fm.logits(v, x), y))(w)
    n1 = sum(p.numel() for p in first)
    rho = torch.cat([torch.full((n1,), 0.3, dtype=w.dtype), torch.full((w.numel() - n1,), 0.1, dtype=w.dtype)])
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert torch.allclose(fm.vec(), w + rho * h / (h.norm() + DELTA), rtol=1e-12, atol=1e-14)
    opt.restore()
    assert torch.equal(fm.vec(), w)


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
def test_proportional_rho_follows_the_lr():
    model = mlp()
    opt = GSAM(model.parameters(), torch.optim.SGD, lr=1.0)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=4)
    rho = ProportionalRho(opt, rho_max=0.6, rho_min=0.1, lr_min=0.1)
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        assert opt.param_groups[0]["rho"] == pytest.approx(0.1 + 0.5 * (lr - 0.1) / 0.9)
        sched.step()
        rho.step()
    assert opt.param_groups[0]["rho"] == pytest.approx(0.1)
    assert ProportionalRho(opt, 0.6, rho_min=0.0, lr_max=1.0, lr_min=0.5).get_last_rho() == [0.0]


# ----------------------------------------------------------------------------- OBF grad


@pytest.mark.parametrize("prob", ["sigmoid", "softmax"])
@pytest.mark.parametrize("gamma", [1e-12, 0.3, 1.0])
@pytest.mark.parametrize("lam", [None, 0.0, 0.2, 0.6])
def test_obf_logit_gradient(prob, gamma, lam):
    torch.manual_seed(0)
    z = (3 * torch.randn(16, 5, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 5, (16,))
    obf_loss(z, y, gamma=gamma, lam=lam, prob=prob).backward()
    p = torch.sigmoid(z) if prob == "sigmoid" else torch.softmax(z, 1)
    p = p.detach()
    lam_ = 1 / 5 if lam is None else lam
    py = p[torch.arange(16), y]
    alpha = torch.full_like(py, gamma) if lam_ == 0 else gamma * torch.clamp((1 - lam_ / py) / (1 - lam_), min=0)
    e = F.one_hot(y, 5).double()
    expected = (1 / 5 - alpha[:, None] * p - (1 - alpha[:, None]) * e) / 16
    assert torch.allclose(z.grad, expected, rtol=1e-10, atol=1e-13)


def test_obf_alpha_is_clipped_at_zero_below_lambda():
    from forgetting_sam.optim import obf_alpha

    p_true = torch.tensor([0.05, 0.2, 0.5, 1.0, 0.0])
    got = obf_alpha(p_true, gamma=0.8, lam=0.2)
    expected = torch.tensor([0.0, 0.0, 0.8 * (1 - 0.4) / 0.8, 0.8, 0.0])
    assert torch.allclose(got, expected)
    assert torch.equal(obf_alpha(p_true, gamma=0.8, lam=0.0), torch.full((5,), 0.8))


def test_obf_loss_value_matches_the_written_out_objective():
    torch.manual_seed(1)
    z, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    for prob in ("sigmoid", "softmax"):
        got = obf_loss(z, y, gamma=0.7, lam=0.3, prob=prob)
        assert torch.allclose(got, ref_obf(z, y, 0.7, 0.3, prob))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls, kwargs, arg", [
    (SAM, dict(rho=-0.1), "rho"),
    (SAM, dict(eta=-1.0), "eta"),
    (ASAM, dict(eta=-0.5), "eta"),
    (GSAM, dict(alpha=-0.1), "alpha"),
    (OBF, dict(gamma=1.5), "gamma"),
    (OBF, dict(gamma=-0.1), "gamma"),
    (OBF, dict(lam=1.0), "lam"),
    (OBF, dict(lam=-0.1), "lam"),
    (OBF, dict(prob="tanh"), "prob"),
    (SAM, dict(adaptive=True, adaptive_form="middle"), "adaptive_form"),
])
def test_bad_hyperparameters_name_the_argument(cls, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        cls(mlp().parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_bad_group_hyperparameter_and_base_class():
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": mlp().parameters(), "rho": -1.0}], torch.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="class"):
        SAM(mlp().parameters(), torch.optim.SGD(mlp().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="lam"):
        obf_loss(torch.zeros(2, 3), torch.tensor([0, 1]), lam=2.0)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_grad_are_skipped(name):
    model, (x, y) = mlp(), data("mlp")
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = REGISTRY[name].build(model.parameters(), lr=0.1)
    res = perturbed_step(model, opt, x, y, F.cross_entropy)
    assert torch.isfinite(res.loss) and torch.equal(frozen, before)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_gives_zero_perturbation(name):
    model = mlp()
    opt = REGISTRY[name].build(model.parameters(), lr=0.1)
    before = params_of(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.first_step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.restore()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_ascent_gradient_leaves_the_weights_unchanged(name, bad):
    model, (x, y) = mlp(), data("mlp")
    opt = REGISTRY[name].build(model.parameters(), lr=0.1, momentum=0.9)
    before = params_of(model)
    (opt.ascent_loss or F.cross_entropy)(model(x), y).backward()
    model[0].weight.grad[0, 0] = bad
    opt.first_step(zero_grad=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    F.cross_entropy(model(x), y).backward()
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.second_step(zero_grad=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_perturbed_step_rejects_bad_batches():
    model, (x, y) = mlp(), data("mlp")
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="batch size"):
        perturbed_step(model, opt, x, y[:-1], F.cross_entropy)
    for m in (0, -3, 2.5):
        with pytest.raises(ValueError, match="micro_batch_size"):
            perturbed_step(model, opt, x, y, F.cross_entropy, micro_batch_size=m)


def test_step_without_closure_and_obf_closure_without_argument():
    model, (x, y) = mlp(), data("mlp")
    with pytest.raises(RuntimeError, match="closure"):
        SAM(model.parameters(), torch.optim.SGD, lr=0.1).step()
    opt = OBF(model.parameters(), torch.optim.SGD, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="AscentLoss"):
        opt.step(closure)


def test_nothing_held_between_steps_and_weights_restored_on_error():
    model, (x, y) = mlp(), data("mlp")
    opt = GSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    perturbed_step(model, opt, x, y, F.cross_entropy)
    assert not opt.is_perturbed and opt._ascent_grads is None and len(opt.state) == 0
    before = params_of(model)

    calls = []

    def failing_loss(out, target):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return F.cross_entropy(out, target)

    with pytest.raises(KeyboardInterrupt):
        perturbed_step(model, opt, x, y, failing_loss)
    assert not opt.is_perturbed
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ------------------------------------------------- base optimizers beyond plain SGD


def ref_sgd(lr, momentum, weight_decay, nesterov):
    """torch.optim.SGD's update written out on the flat vector."""
    state = {}

    def update(w, g):
        g = g + weight_decay * w
        buf = g if "buf" not in state else momentum * state["buf"] + g
        state["buf"] = buf
        return w - lr * (g + momentum * buf if nesterov else buf)
    return update


def ref_adamw(lr, betas, eps, weight_decay):
    """AdamW (decoupled weight decay, bias-corrected moments) on the flat vector."""
    state = {"t": 0}

    def update(w, g):
        b1, b2 = betas
        state["t"] += 1
        t = state["t"]
        m = (1 - b1) * g if t == 1 else b1 * state["m"] + (1 - b1) * g
        v = (1 - b2) * g * g if t == 1 else b2 * state["v"] + (1 - b2) * g * g
        state["m"], state["v"] = m, v
        w = w * (1 - lr * weight_decay)
        return w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return update


BASES = {
    "sgd_nesterov_wd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
                        lambda: ref_sgd(0.1, 0.9, 1e-2, True)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=5e-2),
              lambda: ref_adamw(1e-2, (0.9, 0.99), 1e-8, 5e-2)),
}
BASE_MEMBERS = {
    "sam": (lambda p, base, **kw: SAM(p, base, rho=0.3, **kw), Spec(None, rho=0.3)),
    "asam": (lambda p, base, **kw: ASAM(p, base, rho=0.5, eta=0.01, **kw),
             Spec(None, rho=0.5, adaptive=True, eta=0.01)),
    "gsam": (lambda p, base, **kw: GSAM(p, base, rho=0.2, alpha=0.4, **kw), Spec(None, rho=0.2, alpha=0.4)),
    "obf": (lambda p, base, **kw: OBF(p, base, rho=0.3, **kw),
            Spec(None, rho=0.3, obf=dict(gamma=1.0, lam=None, prob="sigmoid"))),
}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("name", list(BASE_MEMBERS))
def test_matches_reference_with_other_base_optimizers(name, base):
    """AdamW, and SGD with Nesterov momentum and weight decay, under each member, 3 steps."""
    cls, kwargs, make_ref = BASES[base]
    build, spec = BASE_MEMBERS[name]
    model, (x, y) = mlp(), data("mlp")
    fm = FlatModel(model)
    opt = build(model.parameters(), cls, **kwargs)
    ref, w = make_ref(), fm.vec()
    for step in range(3):
        w = ref(w, ref_descent_grad(fm, w, x, y, spec))
        perturbed_step(model, opt, x, y, F.cross_entropy)
        assert torch.allclose(fm.vec(), w, rtol=1e-10, atol=1e-12), f"{name}/{base} differs at step {step + 1}"


def test_asam_with_non_adaptive_groups_matches_the_reference():
    """The README's setup: weights adaptive, biases not (T = 1 there), one global norm."""
    model, (x, y) = mlp(), data("mlp")
    fm = FlatModel(model)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = ASAM([{"params": weights}, {"params": biases, "adaptive": False}], torch.optim.SGD,
               rho=0.5, eta=0.01, lr=0.1, momentum=0.9)
    adaptive = torch.cat([torch.full((p.numel(),), n.endswith("weight")) for n, p in model.named_parameters()])
    ce = lambda v: F.cross_entropy(fm.logits(v, x), y)  # noqa: E731
    w, buf = fm.vec(), None
    for step in range(3):
        h = grad(ce)(w)
        t = torch.where(adaptive, w.abs() + 0.01, torch.ones_like(w))
        gp = grad(ce)(w + 0.5 * t * t * h / ((t * h).norm() + DELTA))
        buf = gp if buf is None else 0.9 * buf + gp
        w = w - 0.1 * buf
        perturbed_step(model, opt, x, y, F.cross_entropy)
        assert torch.allclose(fm.vec(), w, rtol=1e-10, atol=1e-12), f"differs at step {step + 1}"
    # and it is neither all-adaptive nor all-plain
    for flag in (True, False):
        other = mlp()
        other_opt = ASAM(other.parameters(), torch.optim.SGD, rho=0.5, eta=0.01, adaptive=flag, lr=0.1, momentum=0.9)
        for _ in range(3):
            perturbed_step(other, other_opt, x, y, F.cross_entropy)
        assert not torch.allclose(FlatModel(other).vec(), w, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["sam", "gsam", "asam"])
def test_clip_grad_norm_clips_the_descent_gradient(name):
    """With clip c below the descent gradient's norm, the SGD step is lr · c · g_p / ‖g_p‖."""
    spec = REGISTRY[name]
    model, (x, y) = mlp(), data("mlp")
    fm = FlatModel(model)
    opt = spec.build(model.parameters(), lr=0.1)
    w = fm.vec()
    gp = ref_descent_grad(fm, w, x, y, spec)
    clip = 0.25 * gp.norm().item()
    perturbed_step(model, opt, x, y, F.cross_entropy, clip_grad_norm=clip)
    # clip_grad_norm_ divides by ‖g‖ + 1e-6: a relative error ~1e-6 on the update itself
    assert torch.allclose(fm.vec(), w - 0.1 * clip * gp / gp.norm(), rtol=0, atol=5e-8)
    # a bound above the norm changes nothing
    model2 = mlp()
    opt2 = spec.build(model2.parameters(), lr=0.1)
    perturbed_step(model2, opt2, x, y, F.cross_entropy, clip_grad_norm=10 * gp.norm().item())
    assert torch.allclose(FlatModel(model2).vec(), w - 0.1 * gp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sam", "asam", "gsam"])
def test_channels_last_model_matches_the_contiguous_one(name):
    """A channels_last convnet steps like the contiguous one, and stays channels_last."""
    spec = REGISTRY[name]
    x, y = data("conv")
    a, b = convnet(), convnet().to(memory_format=torch.channels_last)
    oa = spec.build(a.parameters(), lr=0.1, momentum=0.9)
    ob = spec.build(b.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        perturbed_step(a, oa, x, y, F.cross_entropy)
        perturbed_step(b, ob, x.to(memory_format=torch.channels_last), y, F.cross_entropy)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)
    for p in b.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
            assert not p.is_contiguous()
    for p, q in zip(a.buffers(), b.buffers()):
        assert torch.allclose(p.double(), q.double(), rtol=1e-10, atol=1e-12)
