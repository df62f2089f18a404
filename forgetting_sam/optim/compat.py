"""What :class:`PerturbedOptimizer` needs to meet code written for others.

* ``torch.amp.GradScaler`` in the two-step and closure APIs: the ascent gradient is
  unscaled here (GradScaler.unscale_ may run once per optimizer and update, and that once
  belongs to the descent), an overflow in the ascent pass is reported to the scaler;
* users of the popular PyTorch SAM and of pytorch-optimizer: their keyword arguments, their
  ``step(closure)`` style and their checkpoints get errors and warnings that say what differs
  (README, "Migrating from the popular PyTorch SAM").
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

MIGRATION = "README.md, section 'Migrating from the popular PyTorch SAM'"

# pytorch-optimizer's and the popular SAM's keywords that are not ours, and what to do.
_PEER_KWARGS = {
    "perturb_eps": "the nearest equivalent is the fixed δ in ε = ρh/(‖h‖+δ) "
                   "(forgetting_sam.optim.DELTA = 1e-12), which is not a parameter; drop it",
    "use_gc": "gradient centralization is not part of this package; drop it",
    "rho_scheduler": "use forgetting_sam.ProportionalRho(optimizer, lr_scheduler, rho_max, rho_min)",
    "model": "the optimizer takes no model; pass it to forgetting_sam.perturbed_step instead",
    "adaptive_eta": "ASAM's η is eta=",
}


def base_optimizer_or_explain(wrapper: Any, base_optimizer: type, param_groups: list, kwargs: dict):
    """``base_optimizer(param_groups, **kwargs)``, with a TypeError that names the wrapper.

    The base optimizer would say "SGD got an unexpected keyword argument 'perturb_eps'",
    blaming SGD for an argument meant for the wrapper (pytorch-optimizer's style).
    """
    try:
        return base_optimizer(param_groups, **kwargs)
    except TypeError as err:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if found is None or found.group(1) not in kwargs:
            raise
        name = found.group(1)
        hint = _PEER_KWARGS.get(name, f"check the spelling against {type(wrapper).__name__}'s "
                                      f"and {base_optimizer.__name__}'s arguments")
        raise TypeError(
            f"{type(wrapper).__name__} got an unexpected keyword argument {name!r}: it is not one of "
            f"{type(wrapper).__name__}'s arguments (rho, adaptive, eta, alpha, adaptive_form, "
            f"ascent_loss, ...), so it went to the base optimizer {base_optimizer.__name__}, which "
            f"rejects it too; {hint} (see {MIGRATION})"
        ) from err


def warn_if_grads_present(optimizer: Any) -> None:
    """Warn once per optimizer when ``step(closure)`` finds gradients already in ``.grad``.

    The popular SAM's ``step(closure)`` expects the caller's backward at ``w`` before the
    call; ours evaluates the closure at ``w`` itself (the torch contract), so that backward
    is wasted, and a closure that does not zero ``.grad`` adds it to the ascent gradient.
    """
    if getattr(optimizer, "_warned_grads_present", False):
        return
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    left = getattr(optimizer, "_grads_left", {})
    # The previous step's own leftovers (the descent gradient, untouched since) are not a
    # backward by the caller: a backward makes new tensors or bumps their version.
    grads = [g for g in grads if not (id(g) in left and left[id(g)][0]() is g and left[id(g)][1] == g._version)]
    # zero_grad(set_to_none=False) leaves zeros: those are not a backward.
    dense = [g.detach() for g in grads if not g.is_sparse]
    if not dense or not bool(torch.stack(torch._foreach_norm(dense)).ne(0).any()):  # one sync
        return
    optimizer._warned_grads_present = True
    warnings.warn(
        f"{type(optimizer).__name__}.step(closure) found gradients already in .grad. step() "
        "evaluates the closure at w itself (the torch contract), so a backward before step() is "
        "wasted work, and a closure that does not zero the gradients adds them to the ascent "
        f"gradient. Drop the backward before step(closure) (see {MIGRATION}).",
        UserWarning, stacklevel=4,
    )


def remember_grads(optimizer: Any) -> None:
    """Note the gradients ``step(closure)`` leaves behind, for :func:`warn_if_grads_present`."""
    optimizer._grads_left = {
        id(p.grad): (weakref.ref(p.grad), p.grad._version)
        for g in optimizer.param_groups for p in g["params"] if p.grad is not None
    }


# -- GradScaler ---------------------------------------------------------------------------

def scaler_scale(scaler: "torch.amp.GradScaler") -> float | None:
    """The scaler's current scale as a float, or None when there is no (enabled) scaler."""
    if scaler is None or not scaler.is_enabled():
        return None
    return float(scaler.get_scale())


def unscale_ascent_(grads: Iterable[Tensor], scale: float) -> None:
    """Divide the ascent gradients in ``.grad`` by ``scale`` in place (exact for 2**k scales).

    Inf and NaN stay non-finite, so the caller's finiteness check still sees the overflow.
    """
    grads = list(grads)
    if grads:
        torch._foreach_mul_(grads, 1.0 / scale)


def report_overflow(scaler: "torch.amp.GradScaler", base: torch.optim.Optimizer) -> None:
    """Tell ``scaler`` this step overflowed: it skips ``base``'s step and backs off its scale.

    The ascent pass found the overflow, so whatever ``.grad`` holds now (maybe a finite
    descent gradient) must not be stepped with. An Inf gradient makes ``scaler.step`` skip
    and ``scaler.update`` back off exactly as for an overflow in the descent pass.
    """
    params = [p for g in base.param_groups for p in g["params"] if p.requires_grad]
    if not params:
        return
    kept = params[0].grad
    params[0].grad = torch.full_like(params[0], float("inf"))
    scaler.step(base)
    scaler.update()
    params[0].grad = kept


# -- checkpoints of the popular PyTorch SAM ------------------------------------------------

_PEER_STATE_KEYS = ("old_p", "e_w")


def from_peer_state_dict(optimizer: Any, state_dict: dict) -> dict:
    """Accept a ``state_dict`` saved by the popular PyTorch SAM, warning what it lacks.

    That wrapper saves its own ``Optimizer.state_dict``: per-parameter ``old_p`` (older
    versions ``e_w``) copies of the weights and *no* base-optimizer state (momentum, Adam
    moments), with groups lacking our ``eta``, ``alpha`` and ``adaptive_form``. Refusing it
    would protect nothing (resuming in that library restarts the momentum too), so the
    weight copies are dropped (the weights live in the model's state_dict), the groups get
    our defaults and a ``UserWarning`` says the base state restarts from zero.
    Any other state_dict is returned unchanged.
    """
    state = state_dict.get("state", {})
    peer = [k for s in state.values() if isinstance(s, dict) for k in s if k in _PEER_STATE_KEYS]
    if not peer:
        return state_dict
    warnings.warn(
        f"{type(optimizer).__name__}.load_state_dict: this state_dict was saved by the popular "
        f"PyTorch SAM (per-parameter {sorted(set(peer))!r} weight copies). It holds no state of the "
        "base optimizer (no momentum, no Adam moments): those restart from zero. The weight copies "
        f"are dropped; the weights themselves come from the model's state_dict (see {MIGRATION}).",
        UserWarning, stacklevel=3,
    )
    cleaned = {}
    for key, s in state.items():
        rest = {k: v for k, v in s.items() if k not in _PEER_STATE_KEYS}
        if rest:
            cleaned[key] = rest
    groups = []
    for group in state_dict["param_groups"]:
        filled = dict(group)
        for defaults in (optimizer.defaults, optimizer.base_optimizer.defaults):
            for name, value in defaults.items():
                filled.setdefault(name, value)
        groups.append(filled)
    return {**state_dict, "state": cleaned, "param_groups": groups}


def unscale_descent_(scaler: "torch.amp.GradScaler", wrapper: Any, base: torch.optim.Optimizer) -> None:
    """``scaler.unscale_(base)``, unless the user already called it (to clip, say)."""
    states = getattr(scaler, "_per_optimizer_states", {})
    if id(wrapper) in states and getattr(states[id(wrapper)].get("stage"), "name", "") == "UNSCALED":
        raise RuntimeError(
            f"scaler.unscale_() was called on the {type(wrapper).__name__} wrapper; with the "
            "two-step and closure APIs unscale the base optimizer instead, which is the one the "
            "scaler steps: scaler.unscale_(opt.base_optimizer)"
        )
    try:
        scaler.unscale_(base)
    except RuntimeError as err:
        if "already been called" not in str(err):
            raise
