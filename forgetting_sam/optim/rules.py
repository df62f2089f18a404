"""Direction and correction parts for the perturb-then-descend mechanism (docs/algorithms.md §10).

A *direction* part replaces SAM's/ASAM's ``D(h, w)``: its ``perturbed_weights(opt, params,
grads)`` returns ``w + ε`` per group (new tensors), or None when ``ε`` is not finite (the
step is then skipped, as for SAM). A *correction* part edits the descent gradient ``g_p``
in place after the restore, with the saved ascent gradient ``h``: ``correct_(opt, descent,
ascent)``. :class:`~forgetting_sam.optim.PerturbedOptimizer` takes one of each
(``direction=``, ``correction=``); every API (two-step, closure, ``perturbed_step``) then
runs them, because they sit inside ``first_step`` and ``unperturb``.

This module depends on :mod:`.functional` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .functional import DELTA, _accumulation_dtype, perturbed_weights


def _check_number(name: str, value, low: float, high: float | None = None, open_high: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value < high if open_high else value <= high
    if not ok:
        bound = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be a number {bound})")


class WeightedSharpness:
    """WSAM's correction (Yue et al. 2023, arXiv 2305.15817): ``g ← a g_p + (1 − a) h``.

    WSAM minimizes ``L(w) + γ/(1 − γ) · (L(w + ε) − L(w))``; its gradient is
    ``a g_p + (1 − a) ∇L(w)`` with ``a = γ/(1 − γ)``. ``γ = 1/2`` is SAM.

    ``h`` must be the gradient of the training loss at ``w``, so WSAM does not compose with
    an ascent objective such as OBF (the optimizer refuses the pair).

    Args:
        gamma: γ in [0, 1).
    """

    needs_training_h = True

    def __init__(self, gamma: float = 0.9):
        _check_number("gamma", gamma, 0.0, 1.0, open_high=True)
        self.gamma = float(gamma)

    def correct_(self, opt, descent: Sequence[Sequence[Tensor]], ascent: Sequence[Sequence[Tensor]]) -> None:
        """``g_p ← a g_p + (1 − a) h`` in place, per tensor."""
        a = self.gamma / (1.0 - self.gamma)
        g = [t for ts in descent for t in ts]
        h = [t for ts in ascent for t in ts]
        if g:
            torch._foreach_mul_(g, a)
            torch._foreach_add_(g, h, alpha=1.0 - a)


class FriendlyDirection:
    """F-SAM's direction (Li et al. CVPR 2024, arXiv 2403.12350).

    ``m ← λ m + (1 − λ) h`` (an EMA of the ascent gradients, the estimate of the full
    gradient), then SAM's or ASAM's direction of ``d = h − σ m`` instead of ``h``:
    ``ε = ρ D(d, w)``. ``m`` lives in the optimizer's ``state[p]["fsam_m"]`` (checkpointed
    with the base optimizer's state); a non-finite ``h`` leaves it untouched. Composes with
    ASAM's ``adaptive`` groups, GSAM's correction (which sees the raw ``h``) and OBF (the
    EMA then tracks the ascent objective's gradient).

    Args:
        sigma: σ ≥ 0, how much of the full-gradient estimate is removed (0: SAM).
        lmbda: λ in [0, 1), the EMA's decay.
    """

    def __init__(self, sigma: float = 1.0, lmbda: float = 0.9):
        _check_number("sigma", sigma, 0.0)
        _check_number("lmbda", lmbda, 0.0, 1.0, open_high=True)
        self.sigma, self.lmbda = float(sigma), float(lmbda)

    def perturbed_weights(self, opt, params, grads):
        """``w + ε`` per group (new tensors), or None for a non-finite ``h``."""
        moments, directions = [], []
        for ps, hs in zip(params, grads):
            ms, ds = [], []
            for p, h in zip(ps, hs):
                old = opt.state[p].get("fsam_m") if p in opt.state else None
                m = h.mul(1.0 - self.lmbda) if old is None else torch.add(old.mul(self.lmbda), h, alpha=1.0 - self.lmbda)
                ms.append(m)
                ds.append(torch.add(h, m, alpha=-self.sigma))
            moments.append(ms)
            directions.append(ds)
        groups = opt.param_groups
        weights, _ = perturbed_weights(
            params, directions,
            rho=[g["rho"] for g in groups], adaptive=[g["adaptive"] for g in groups],
            eta=[g["eta"] for g in groups], form=opt._form(),
            into_grads=True,  # d is ours: w + ε is written into it
        )
        if weights is not None:
            for ps, ms in zip(params, moments):
                for p, m in zip(ps, ms):
                    opt.state[p]["fsam_m"] = m
        return weights


class FisherDirection:
    """Fisher SAM's direction (Kim et al. ICML 2022, arXiv 2206.04920).

    The ε-ball is measured in the metric of the diagonal empirical Fisher
    ``f = 1 + η h²``: ``ε = ρ f⁻¹ h / √(hᵀ f⁻¹ h)`` (global over all groups; each group its
    own ρ). Composes with OBF (the Fisher is then the ascent objective's) and GSAM's
    correction, not with ASAM's ``adaptive`` groups (both set the metric; it raises).

    Args:
        eta: η ≥ 0 (0: SAM).
    """

    def __init__(self, eta: float = 1.0):
        _check_number("eta", eta, 0.0)
        self.eta = float(eta)

    def perturbed_weights(self, opt, params, grads):
        """``w + ε`` per group (new tensors), or None for a non-finite ``h``."""
        if any(g["adaptive"] for g in opt.param_groups):
            raise ValueError("FisherDirection replaces ASAM's metric: set adaptive=False on every group")
        flat_h = [h for hs in grads for h in hs]
        if not flat_h:
            return [[] for _ in params]
        dots = []
        nums = []
        for hs in grads:
            hs = list(hs)
            if not hs:
                nums.append([])
                continue
            f = torch._foreach_mul(hs, hs)
            torch._foreach_mul_(f, self.eta)
            torch._foreach_add_(f, 1.0)
            nums.append(torch._foreach_div(hs, f))
        for hs, ns in zip(grads, nums):
            dots += [torch.vdot(h.reshape(-1), n.reshape(-1)) for h, n in zip(hs, ns)]
        dtype = _accumulation_dtype(flat_h)
        denom = float(torch.sqrt(torch.stack([d.to(dtype) for d in dots]).sum()))
        if not math.isfinite(denom):
            return None
        out = []
        for ps, ns, g in zip(params, nums, opt.param_groups):
            if ns:
                torch._foreach_mul_(ns, g["rho"] / (denom + DELTA))
                torch._foreach_add_(ns, list(ps))
            out.append(ns)
        return out


def check_parts(direction, correction, ascent_loss):
    """Validate a direction and a correction part for :class:`PerturbedOptimizer`."""
    if direction is not None and not callable(getattr(direction, "perturbed_weights", None)):
        raise TypeError(f"direction must be None or a direction part with perturbed_weights(opt, params, grads) "
                        f"(e.g. FriendlyDirection()), got {direction!r}")
    if correction is not None and not callable(getattr(correction, "correct_", None)):
        raise TypeError(f"correction must be None or a correction part with correct_(opt, descent, ascent) "
                        f"(e.g. WeightedSharpness()), got {correction!r}")
    if correction is not None and getattr(correction, "needs_training_h", False) and ascent_loss is not None:
        raise ValueError(f"{type(correction).__name__} combines g_p with the training gradient at w, but an "
                         "ascent_loss makes h another objective's gradient: drop ascent_loss or the correction")
    return direction, correction


class LookSAMReuse:
    """LookSAM's reuse rule (Liu et al. CVPR 2022, arXiv 2203.02714), a correction part.

    On a perturbed step it keeps the part of ``g_s = g_p`` orthogonal to ``g = h``,
    ``g_v = g_s − (⟨g, g_s⟩ / ‖g‖²) g``, in ``state[p]["looksam_gv"]`` (checkpointed), and
    steps on ``g_s`` unchanged. On a plain step of the §9 schedule it steps on
    ``g + α (‖g‖ / ‖g_v‖) g_v`` instead of ``g``. Pair it with ``perturb_every=k``
    (:class:`~forgetting_sam.optim.LookSAM` does). ``h`` must be the training gradient at
    ``w``, so it does not compose with an ascent objective (OBF). With ``micro_batch_size``
    the kept ``g_v`` is the last micro-batch's.

    Args:
        alpha: α ≥ 0, the weight of the reused component (0: plain steps are the base step).
    """

    needs_training_h = True

    def __init__(self, alpha: float = 0.7):
        _check_number("alpha", alpha, 0.0)
        self.alpha = float(alpha)

    def correct_(self, opt, descent, ascent) -> None:
        """Save ``g_v`` from ``g_p`` (``descent``) and ``h`` (``ascent``); ``g_p`` is left as it is."""
        g_s = [t for ts in descent for t in ts]
        g = [t for ts in ascent for t in ts]
        if not g_s:
            return
        dtype = _accumulation_dtype(g)
        dot = torch.stack([torch.vdot(a.reshape(-1), b.reshape(-1)).to(dtype) for a, b in zip(g, g_s)]).sum()
        sq = torch.stack([torch.vdot(a.reshape(-1), a.reshape(-1)).to(dtype) for a in g]).sum()
        coef = dot / (sq + DELTA)
        params = [p for ts in descent for p in _owners(opt, ts)]
        for p, a, b in zip(params, g, g_s):
            opt.state[p]["looksam_gv"] = b - coef.to(b.dtype) * a

    def plain_step_(self, opt) -> None:
        """``.grad ← g + α (‖g‖/‖g_v‖) g_v`` on the parameters that have a saved ``g_v``."""
        pairs = [(p.grad, opt.state[p]["looksam_gv"]) for group in opt.param_groups for p in group["params"]
                 if p.grad is not None and p in opt.state and "looksam_gv" in opt.state[p]]
        if not pairs or not self.alpha:
            return
        g = [a for a, _ in pairs]
        v = [b for _, b in pairs]
        dtype = _accumulation_dtype(g)
        g_norm = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in torch._foreach_norm(g)]))
        v_norm = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in torch._foreach_norm(v)]))
        scale = self.alpha * g_norm / (v_norm + DELTA)
        torch._foreach_add_(g, torch._foreach_mul(v, scale.to(g[0].dtype)))


def _owners(opt, grads):
    """The parameters whose ``.grad`` are the tensors ``grads`` (same order)."""
    by_id = {id(p.grad): p for group in opt.param_groups for p in group["params"] if p.grad is not None}
    return [by_id[id(t)] for t in grads]
