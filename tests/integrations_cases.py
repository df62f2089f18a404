"""Shared by the integration tests: the family members and the package's own two-step loop."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from forgetting_sam import GSAM, OBF, SAM, bn_stats_frozen

# One of each kind of step: SAM's ε, GSAM's correction, OBF's ascent objective.
FAMILY: dict[str, Callable] = {
    "sam": lambda p: SAM(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
    "gsam": lambda p: GSAM(p, torch.optim.SGD, rho=0.05, alpha=0.4, lr=0.1, momentum=0.9),
    "obf": lambda p: OBF(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
}


def two_step_reference(model, opt, windows, forward, loss_fn=F.cross_entropy) -> None:
    """The package's two-step API on windows of micro-batches, written out by hand.

    ``forward(model, batch) -> (logits, targets)``. Each micro-batch gets its own ε; a window
    of k micro-batches steps the base optimizer once with the mean of their descent gradients
    (a window of one is plain ``first_step``/``second_step``).
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    for window in windows:
        total: dict[torch.Tensor, torch.Tensor] = {}
        for batch in window:
            logits, y = forward(model, batch)
            ascent = opt.ascent_loss(logits, y) if opt.ascent_loss is not None else loss_fn(logits, y)
            ascent.backward()
            opt.first_step(zero_grad=True)
            with bn_stats_frozen(model):
                logits, y = forward(model, batch)
                loss_fn(logits, y).backward()
            if len(window) == 1:
                opt.second_step(zero_grad=True)
                continue
            opt.unperturb()
            for p in params:
                if p.grad is not None:
                    total[p] = total.get(p, 0) + p.grad / len(window)
                    p.grad = None
        if total:
            for p, g in total.items():
                p.grad = g
            opt.base_optimizer.step()
            opt.zero_grad(set_to_none=True)


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between two models' parameters (same architecture)."""
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
