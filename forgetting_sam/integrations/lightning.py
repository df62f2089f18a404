"""The family in Lightning's automatic optimization: precision plugins.

Lightning's ``Trainer`` hands the optimizer a closure (``training_step`` + backward) through
its precision plugin. Plain ``32`` and ``bf16-mixed`` call ``optimizer.step(closure)``, which
a family member runs twice (docs/algorithms.md §1); ``16-mixed`` runs the closure once and
calls ``scaler.step(optimizer)`` *without* it, which no family member can take. The plugins
here run ``optimizer.step(closure, scaler=...)`` for a family member and defer to Lightning's
own plugin for any other optimizer::

    trainer = L.Trainer(plugins=[perturbed_precision("16-mixed")])   # was precision="16-mixed"

In ``training_step`` compute the loss with :class:`forgetting_sam.AscentLoss`; with OBF (and
GSAM-OBF, ASAM-OBF) the closure's first call then backpropagates the ascent objective, and a
``training_step`` without one raises. The same module trains with SGD and every member.

Per step, ``on_before_optimizer_step`` and gradient clipping run once, after the second
closure call: they see the descent gradient at ``w + ε`` (unscaled), before GSAM's correction.

Lightning's ``accumulate_grad_batches`` is refused for a family member: Lightning runs the
earlier batches of the window outside the optimizer, so they could not be perturbed; use a
larger batch, or :func:`forgetting_sam.perturbed_step` with ``update=False`` in manual
optimization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from ..optim import PerturbedOptimizer

__all__ = ["PerturbedPrecision", "PerturbedMixedPrecision", "perturbed_precision"]


def _family_step(plugin: Precision, optimizer: PerturbedOptimizer, model: Any,
                 closure: Callable[[], Any], scaler: "torch.amp.GradScaler | None",
                 **kwargs: Any) -> Any:
    trainer = model.trainer
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"accumulate_grad_batches={trainer.accumulate_grad_batches} with "
            f"{type(optimizer).__name__}: Lightning runs the window's earlier batches outside the "
            "optimizer, so they cannot be perturbed. Use accumulate_grad_batches=1 with a larger "
            "batch, or forgetting_sam.perturbed_step(..., update=False) in manual optimization"
        )
    # Lightning zeroes the gradients inside its closure; the previous step's are still here
    # and would read as a backward before step(closure) (the popular SAM's style).
    optimizer.zero_grad(set_to_none=True)
    calls = 0

    def closure_then_hooks() -> Any:
        nonlocal calls
        calls += 1
        result = closure()
        if calls == 2:
            if scaler is not None and trainer.gradient_clip_val:
                scaler.unscale_(optimizer.base_optimizer)  # clip true gradients
            plugin._after_closure(model, optimizer)
        return result

    return optimizer.step(closure_then_hooks, scaler=scaler, **kwargs)


class PerturbedPrecision(Precision):
    """Lightning's full-precision plugin (``32-true``, ``64-true`` dtype left to the module)
    with the family's two-pass step."""

    def optimizer_step(self, optimizer, model, closure, **kwargs):  # noqa: D102
        if not isinstance(optimizer, PerturbedOptimizer):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        return _family_step(self, optimizer, model, closure, None, **kwargs)


class PerturbedMixedPrecision(MixedPrecision):
    """Lightning's ``16-mixed`` / ``bf16-mixed`` plugin with the family's two-pass step.

    With ``16-mixed`` both passes are scaled by the plugin's GradScaler; the ascent gradient
    is unscaled before the norm, an overflow in either pass skips the step with ``w``
    restored and backs off the scale, as :func:`forgetting_sam.perturbed_step` does.
    """

    def optimizer_step(self, optimizer, model, closure, **kwargs):  # noqa: D102
        if not isinstance(optimizer, PerturbedOptimizer):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        return _family_step(self, optimizer, model, closure, self.scaler, **kwargs)


def perturbed_precision(precision: str = "32-true", device: str = "cpu",
                        scaler: "torch.amp.GradScaler | None" = None) -> Precision:
    """The plugin for ``Trainer(plugins=[...])`` that replaces ``Trainer(precision=...)``.

    Args:
        precision: ``"32"``/``"32-true"``, ``"16-mixed"`` or ``"bf16-mixed"``.
        device: ``"cpu"`` or ``"cuda"``, where autocast runs (the Trainer's accelerator).
        scaler: a ``torch.amp.GradScaler`` for ``16-mixed`` (default: a new one on ``device``).
    """
    if precision in ("32", "32-true", 32):
        return PerturbedPrecision()
    if precision in ("16-mixed", "bf16-mixed"):
        if precision == "16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device)
        return PerturbedMixedPrecision(precision, device, scaler)
    raise ValueError(
        f"perturbed_precision(precision={precision!r}): choose '32-true', '16-mixed' or "
        "'bf16-mixed' (the other Lightning settings run no two-pass step here)"
    )
