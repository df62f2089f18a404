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

``accumulate_grad_batches=k`` works as :func:`forgetting_sam.perturbed_step` with
``update=False`` on the window's first ``k - 1`` batches and ``update=True`` on the last
(m-sharpness, docs/algorithms.md §6): each batch gets its own ascent at ``w``, its own ``ε``
and its own descent gradient at ``w + ε``; the base optimizer steps once with their
size-weighted mean. Lightning's own forward of each batch updates BatchNorm once; the
re-run passes never do. With ``16-mixed`` an overflow in any batch skips the whole window.
Hooks and clipping run once per window, on the mean.

Under DDP (with or without accumulation) steps run as :func:`forgetting_sam.perturbed_step`
runs under DDP (docs/algorithms.md §6): every pass stays on its replica (the plugin runs
Lightning's synced batch under ``no_sync`` too), so each replica's batch gets its own ``ε``;
at the update the ranks agree on a skip, rank 0's buffers are broadcast, and the mean descent
gradient is all-reduced once. ``R`` replicas with batch ``b`` are one process with batch
``R·b`` and ``m = b``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch.nn.parallel import DistributedDataParallel

from ..optim import PerturbedOptimizer, ascent_pass, bn_stats_frozen
from ..optim.perturbed import grads_finite, warn_skipped
from ..optim.step import _all_reduce_grads, _any_rank, _batch_len, _broadcast_buffers
from ..optim import compat

__all__ = ["PerturbedPrecision", "PerturbedMixedPrecision", "perturbed_precision"]


def _family_step(plugin: "_FamilyPlugin", optimizer: PerturbedOptimizer, model: Any,
                 closure: Callable[[], Any], scaler: "torch.amp.GradScaler | None",
                 **kwargs: Any) -> Any:
    trainer = model.trainer
    if _windowed(trainer):
        ddp = _ddp(trainer.strategy)
        # The window's last batch (or, under DDP, each step's one batch): its passes run like
        # the others', on this replica alone; _finish_window all-reduces the window once.
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            closure()
        return _finish_window(plugin, optimizer, model, scaler)
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

    plugin._inside = True
    try:
        return optimizer.step(closure_then_hooks, scaler=scaler, **kwargs)
    finally:
        plugin._inside = False


def _loss_of(output: Any) -> torch.Tensor:
    return output["loss"] if isinstance(output, dict) else output


def _accumulate_batch(plugin: "_FamilyPlugin", optimizer: PerturbedOptimizer, model: Any,
                      tensor: torch.Tensor, scaler: "torch.amp.GradScaler | None") -> None:
    """One batch of an accumulation window: ``perturbed_step(..., update=False)``'s passes.

    ``tensor`` is Lightning's (scaled) loss at ``w``; its forward already updated BatchNorm.
    Adds ``|B| · g`` (true units, GSAM-corrected) to the plugin's sum and leaves ``.grad`` None.
    """
    if plugin._call is None:
        raise RuntimeError("accumulate_grad_batches with a family member: the plugin saw no "
                           "training_step call to re-run; use it through Trainer(plugins=[...])")
    args, kwargs = plugin._call
    strategy = model.trainer.strategy
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        size = _batch_len(args[0])
    except TypeError:
        size = 1  # a batch of unknown layout counts as one, like equal-sized batches

    def rerun() -> torch.Tensor:
        loss = _loss_of(strategy.training_step(*args, **kwargs))
        return scaler.scale(loss) if scaler is not None else loss

    skipped = False
    for p in params:
        p.grad = None
    if optimizer.should_perturb():
        if optimizer.ascent_loss is None:
            # The training loss is the ascent objective. Lightning divided it by the window's
            # length; h must be the batch's own gradient (GSAM's correction uses its size).
            # (Lightning's pre_backward has already scaled it under 16-mixed.)
            (tensor * model.trainer.accumulate_grad_batches).backward()
        else:
            with bn_stats_frozen(model), ascent_pass(optimizer):  # OBF's objective via AscentLoss
                rerun().backward()
        optimizer.first_step(zero_grad=True, scaler=scaler)
        if optimizer._skip:
            optimizer.restore()
            optimizer._skip = False
            skipped = True
        else:
            try:
                with bn_stats_frozen(model):
                    rerun().backward()
            except BaseException:
                optimizer.restore()
                raise
            if scaler is not None:
                torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / scaler.get_scale())
                optimizer._h_scale = None  # g_p now in true units, like the saved h
            optimizer.unperturb()
    else:
        (tensor * model.trainer.accumulate_grad_batches).backward()  # Lightning's 1/k undone
        if scaler is not None:
            torch._foreach_mul_([p.grad for p in params if p.grad is not None], 1.0 / scaler.get_scale())
    grads = [p for p in params if p.grad is not None]
    skipped = skipped or not grads_finite([p.grad for p in grads])
    with torch.no_grad():
        for p in grads:
            if p in plugin._acc:
                plugin._acc[p].add_(p.grad, alpha=size)
            else:
                plugin._acc[p] = p.grad.mul_(size)
            p.grad = None
    plugin._examples += size
    plugin._skipped = plugin._skipped or skipped


@torch.no_grad()
def _finish_window(plugin: "_FamilyPlugin", optimizer: PerturbedOptimizer, model: Any,
                   scaler: "torch.amp.GradScaler | None") -> None:
    acc, total, skipped = plugin._acc, plugin._examples, plugin._skipped
    plugin._acc, plugin._examples, plugin._skipped = {}, 0, False
    base = optimizer.base_optimizer
    ddp = _ddp(model.trainer.strategy)
    if ddp is not None:  # as perturbed_step does at an update, with the same helpers
        skipped = _any_rank(skipped or not total, ddp, next(iter(ddp.parameters())).device)
        if ddp.broadcast_buffers:
            _broadcast_buffers(ddp)  # every forward of the window ran under no_sync
    scaled = compat.scaler_scale(scaler) is not None
    optimizer.zero_grad(set_to_none=True)
    if skipped or not total:
        if scaled:
            compat.report_overflow(scaler, base)
        else:
            warn_skipped("ascent", stacklevel=3)
        optimizer._last_skipped = True
        optimizer._mark_stepped()
        return
    for p, g in acc.items():
        p.grad = g.div_(total)
    if ddp is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        _all_reduce_grads(params, ddp.process_group)
        acc.update({p: p.grad for p in params if p.grad is not None})  # the zero-filled ones too
    if scaled:
        for p in acc:
            p.grad.mul_(scaler.get_scale())  # a power of two: exact, undone by unscale_ below
    if scaled and model.trainer.gradient_clip_val:
        scaler.unscale_(base)  # clip true gradients
    plugin._after_closure(model, optimizer)
    if scaled:
        compat.unscale_descent_(scaler, optimizer, base)
        optimizer._last_skipped = not grads_finite([g for g in (p.grad for p in acc) if g is not None])
        scaler.step(base)
        scaler.update()
    elif not grads_finite([p.grad for p in acc if p.grad is not None]):
        optimizer._last_skipped = True
        warn_skipped("descent", stacklevel=3)
    else:
        optimizer._last_skipped = False
        base.step()
    optimizer._mark_stepped()


def _windowed(trainer: Any) -> bool:
    """Whether steps run batch by batch through _accumulate_batch / _finish_window: with
    accumulation, and under DDP, where each replica must perturb with its own gradients
    (docs/algorithms.md §6) while Lightning's closure would all-reduce both passes."""
    return trainer.accumulate_grad_batches != 1 or _ddp(trainer.strategy) is not None


def _ddp(strategy: Any) -> "DistributedDataParallel | None":
    """The strategy's DDP module, or None on one process."""
    module = getattr(strategy, "model", None)
    return module if isinstance(module, DistributedDataParallel) else None


class _FamilyPlugin:
    """What both plugins share: the accumulation window and the training_step recorder."""

    _scaler: "torch.amp.GradScaler | None" = None

    def _family_init(self) -> None:
        self._acc: dict[torch.Tensor, torch.Tensor] = {}  # Σ |B_j| g_j over the window
        self._examples, self._skipped, self._inside = 0, False, False
        self._call: tuple[tuple, dict] | None = None  # the current training_step's arguments

    def connect(self, model, optimizers, lr_schedulers):  # noqa: D102
        # Under DDP Lightning connects the wrapped module; the LightningModule is inside.
        strategy = getattr(model, "module", model).trainer.strategy
        step = type(strategy).training_step.__get__(strategy)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            # The perturbed passes of an accumulating batch re-run this very call.
            self._call = (args, kwargs)
            return step(*args, **kwargs)
        strategy.training_step = recorded
        return super().connect(model, optimizers, lr_schedulers)

    def backward(self, tensor, model, optimizer, *args, **kwargs):  # noqa: D102
        if (isinstance(optimizer, PerturbedOptimizer) and not self._inside
                and _windowed(model.trainer)):
            return _accumulate_batch(self, optimizer, model, tensor, self._scaler)
        return super().backward(tensor, model, optimizer, *args, **kwargs)


class PerturbedPrecision(_FamilyPlugin, Precision):
    """Lightning's full-precision plugin (``32-true``, ``64-true`` dtype left to the module)
    with the family's two-pass step."""

    def __init__(self) -> None:
        super().__init__()
        self._family_init()

    def optimizer_step(self, optimizer, model, closure, **kwargs):  # noqa: D102
        if not isinstance(optimizer, PerturbedOptimizer):
            return super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        return _family_step(self, optimizer, model, closure, None, **kwargs)


class PerturbedMixedPrecision(_FamilyPlugin, MixedPrecision):
    """Lightning's ``16-mixed`` / ``bf16-mixed`` plugin with the family's two-pass step.

    With ``16-mixed`` both passes are scaled by the plugin's GradScaler; the ascent gradient
    is unscaled before the norm, an overflow in either pass skips the step with ``w``
    restored and backs off the scale, as :func:`forgetting_sam.perturbed_step` does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._family_init()
        self._scaler = self.scaler

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
