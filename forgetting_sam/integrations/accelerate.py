"""The family in an ``accelerate`` loop: :func:`perturbed_backward` replaces ``accelerator.backward``.

An ``accelerate`` loop keeps its shape; only the backward line changes, and the *base*
optimizer is the one handed to ``accelerator.prepare`` (an ``AcceleratedOptimizer`` calls
``step()`` without a closure, which a family member cannot take)::

    opt = forgetting_sam.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    model, base, loader = accelerator.prepare(model, opt.base_optimizer, loader)
    for batch in loader:
        with accelerator.accumulate(model):
            perturbed_backward(accelerator, model, opt, batch, compute_loss)  # was accelerator.backward(loss)
            base.step()
            base.zero_grad()

Per micro-batch, both passes of docs/algorithms.md §1 run through ``accelerator.backward``
(so its GradScaler scales them and its gradient-accumulation divisor applies to both), the
weights are restored and GSAM's correction applied; the descent gradient is then *added* to
whatever earlier micro-batches of the accumulation window left in ``.grad``. So each
micro-batch perturbs with its own ε (m-sharpness with m = the micro-batch, §6) and the
window's step is the base optimizer's, on the mean descent gradient. Under DDP it runs as
:func:`forgetting_sam.perturbed_step` does: every pass stays on its replica (the final
micro-batch's passes run under ``no_sync`` too), so each replica's micro-batch gets its own
``ε``; at the final micro-batch the window's gradient is all-reduced once (mean over the
replicas) and rank 0's buffers are broadcast, so the replicas stay identical.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import PerturbedOptimizer, ascent_pass, bn_stats_frozen
from ..optim.step import _all_reduce_grads, _broadcast_buffers, _unpack

__all__ = ["perturbed_backward"]


def perturbed_backward(
    accelerator: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    compute_loss: Callable[[nn.Module, Any], Any],
    *,
    loss_scale: float = 1.0,
) -> Tensor:
    """Both backward passes of one micro-batch, added into ``.grad``; no optimizer step.

    Args:
        accelerator: an ``accelerate.Accelerator`` (its ``backward`` and ``scaler`` are used).
        model: the prepared model (DDP-wrapped or not).
        optimizer: the family member (SAM, ASAM, GSAM, OBF, ...) whose *base* optimizer was
            prepared; a plain torch optimizer gives one ordinary ``accelerator.backward``.
        batch: whatever ``compute_loss`` takes (a dict of tensors for Hugging Face models).
        compute_loss: ``fn(model, batch)`` returning the training loss (0-d, mean-reduced) or
            ``(loss, logits)``. With an ascent objective (OBF) compute it with
            :class:`forgetting_sam.AscentLoss`; its first call runs inside
            :func:`forgetting_sam.optim.ascent_pass`, and OBF without one raises.
        loss_scale: multiplies both losses before ``accelerator.backward`` (the Hugging Face
            Trainer's ``1 / gradient_accumulation_steps``; 1 in a plain accelerate loop,
            whose ``backward`` divides by its own accumulation steps).

    Returns:
        The training loss at ``w`` (0-d, detached, not multiplied by ``loss_scale``).

    On a non-finite ascent gradient ``w`` stays unperturbed; with a GradScaler the
    non-finite gradient is left in ``.grad``, so the window's ``scaler.step`` skips and backs
    off the scale, as in any fp16 step; without one this micro-batch is dropped with a
    ``RuntimeWarning``.
    """
    if not isinstance(optimizer, PerturbedOptimizer):
        loss, _ = _unpack(compute_loss(model, batch))
        accelerator.backward(loss * loss_scale)
        return loss.detach()
    if optimizer.perturb_every != 1 or optimizer.perturb_from != 0:
        raise ValueError(
            f"perturbed_backward with perturb_every={optimizer.perturb_every}, perturb_from="
            f"{optimizer.perturb_from}: those schedules count the wrapper's steps, and here the "
            "framework steps the base optimizer, so they would never advance. Use the default "
            "schedule (perturb_every=1, perturb_from=0), or forgetting_sam.perturbed_step"
        )
    scaler = getattr(accelerator, "scaler", None)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # A synced micro-batch (the window's last, or every one without accumulation) under DDP:
    # its passes stay local like the others', and the window is all-reduced once at the end.
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) and model.require_backward_grad_sync else None
    local = ddp.no_sync if ddp is not None else contextlib.nullcontext
    # Earlier micro-batches' descent gradients must not enter this micro-batch's ascent.
    earlier = {p: p.grad for p in params if p.grad is not None}
    for p in earlier:
        p.grad = None
    try:
        with local():
            with ascent_pass(optimizer):
                loss, _ = _unpack(compute_loss(model, batch))
            accelerator.backward(loss * loss_scale)
        optimizer.first_step(zero_grad=True, scaler=scaler)
        if optimizer.skipped:  # non-finite ascent gradient: w was left unperturbed
            optimizer.restore()
            if scaler is None:
                optimizer.zero_grad(set_to_none=True)
                warnings.warn(
                    "non-finite ascent gradient: this micro-batch was dropped from the step",
                    RuntimeWarning, stacklevel=2,
                )
        else:
            with local():
                with bn_stats_frozen(model):
                    p_loss, _ = _unpack(compute_loss(model, batch))
                accelerator.backward(p_loss * loss_scale)
            optimizer.unperturb()
    finally:
        if optimizer.is_perturbed:
            optimizer.restore()  # never leave w + ε behind (errors, KeyboardInterrupt)
        with torch.no_grad():
            for p, g in earlier.items():
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
    if ddp is not None:
        # A non-finite gradient (an fp16 overflow on one replica) reaches every replica here,
        # so the window's scaler.step skips on all of them alike.
        _all_reduce_grads(params, ddp.process_group)
        if ddp.broadcast_buffers:
            _broadcast_buffers(ddp)  # DDP skips it before forwards under no_sync
    return loss.detach()
