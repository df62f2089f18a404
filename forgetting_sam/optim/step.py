"""One training step for any optimizer: :func:`perturbed_step` (docs/algorithms.md §1, §6, §7).

It is the whole perturb-then-descend step for a family member, and an ordinary step for a
plain ``torch.optim`` optimizer, so one training loop serves both. Read it top to bottom:
per micro-batch, (1) forward and the ascent backward, (2) ``first_step`` perturbs,
(3) forward and backward at ``w + ε`` with BatchNorm statistics frozen, (4) ``unperturb``
restores ``w`` and corrects; then the micro-batches' descent gradients are averaged,
all-reduced once under DDP, clipped, and handed to the base optimizer.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import compat
from .ascent import ascent_pass
from .perturbed import PerturbedOptimizer, grads_finite, warn_skipped


@dataclass
class StepResult:
    """What :func:`perturbed_step` computed, all detached.

    Attributes:
        loss: 0-d, the size-weighted mean of the micro-batches' training losses at ``w``.
        logits: (N, ...) model outputs at ``w``, micro-batches concatenated in order;
            with ``compute_loss=``, the logits it returns, or None when it returns the loss
            alone (then ``perturbed_logits`` is None too).
        perturbed_loss: 0-d, the same at ``w + ε`` (None for a plain optimizer, and on a
            step the optimizer's ``perturb_every``/``perturb_from`` schedule does not perturb).
        perturbed_logits: (N, ...) outputs at ``w + ε``, each micro-batch at its own ``ε``
            (None for a plain optimizer). The forgetting measures read these for free.
        skipped: True if a non-finite gradient (e.g. an fp16 overflow) skipped the step,
            in the ascent or the descent pass, on any DDP rank; the weights are then exactly
            as before. On an ``update=False`` call: this call's ascent pass was non-finite
            (the whole accumulated step is then skipped at the update). A skip found in the ascent pass stops
            at that micro-batch, so ``logits`` then cover the micro-batches up to and
            including it, and ``perturbed_*`` those before it.
        updated: False when ``update=False`` only accumulated the descent gradient.
    """

    loss: Tensor
    logits: Tensor | None
    perturbed_loss: Tensor | None = None
    perturbed_logits: Tensor | None = None
    skipped: bool = False
    updated: bool = True


@contextlib.contextmanager
def bn_stats_frozen(model: nn.Module):
    """Keep every BatchNorm's running mean, variance and batch count untouched inside.

    In train mode BatchNorm still normalizes with the batch's statistics, so outputs are
    unchanged; only the running-statistics update is suppressed (docs/algorithms.md §7).

    Example:
        >>> with bn_stats_frozen(model):
        ...     loss_fn(model(x), y).backward()   # running stats as before
    """
    bns = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    for m in bns:
        m.track_running_stats = False  # train-mode forward then passes no running buffers
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@contextlib.contextmanager
def _replayed_rng(snapshot: tuple[Tensor, Tensor | None, torch.device] | None):
    if snapshot is not None:
        cpu, accel, device = snapshot
        torch.set_rng_state(cpu)
        if accel is not None:
            torch.cuda.set_rng_state(accel, device)
    yield


def _rng_snapshot(device: torch.device):
    accel = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), accel, device


def _batch_len(inputs: Any) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (tuple, list)) and inputs:
        return _batch_len(inputs[0])
    if isinstance(inputs, dict) and inputs:
        return _batch_len(next(iter(inputs.values())))
    raise TypeError(
        "inputs must be a tensor, a tuple/list of tensors or a dict of tensors "
        f"(batch on dim 0), got {type(inputs).__name__}"
    )


def _slice(inputs: Any, a: int, b: int) -> Any:
    if isinstance(inputs, Tensor):
        return inputs[a:b]
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_slice(x, a, b) for x in inputs)
    return {k: _slice(v, a, b) for k, v in inputs.items()}


def _forward(model: nn.Module, x: Any) -> Tensor:
    if isinstance(x, (tuple, list)):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def _unpack(result: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(result, Tensor):
        loss, out = result, None
    elif isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], Tensor):
        loss, out = result
    else:
        raise TypeError(
            "compute_loss(model, batch) must return the training loss (a 0-d tensor) or a tuple "
            f"(loss, logits), got {type(result).__name__}"
        )
    if loss.dim() != 0:
        raise ValueError(
            f"compute_loss(model, batch) returned a loss of shape {tuple(loss.shape)}; it must be "
            "0-d (mean-reduce it over the batch)"
        )
    if out is not None and not isinstance(out, Tensor):
        raise TypeError(
            f"compute_loss(model, batch) returned logits of type {type(out).__name__}; return a "
            "tensor (e.g. outputs.logits of a ModelOutput) or the loss alone"
        )
    return loss, out


def _evaluator(model: nn.Module, optimizer, targets, loss_fn, compute_loss) -> Callable:
    """``evaluate(batch_chunk, a, b, ascent) -> (objective to backpropagate, loss, logits)``."""
    if compute_loss is None:
        def evaluate(x, a, b, ascent):
            y = targets[a:b]
            out = _forward(model, x)
            loss = loss_fn(out, y)
            objective = optimizer.ascent_loss(out, y) if ascent and optimizer.ascent_loss else loss
            return objective, loss, out
        return evaluate

    def evaluate(x, a, b, ascent):
        # The ascent call runs inside ascent_pass: an AscentLoss in compute_loss then returns
        # the optimizer's ascent objective (OBF), and OBF without one raises.
        with ascent_pass(optimizer) if ascent else contextlib.nullcontext():
            loss, out = _unpack(compute_loss(model, x))
        return loss, loss, out
    return evaluate


def _check_forms(n: int, targets, loss_fn, compute_loss) -> None:
    if compute_loss is not None:
        if targets is not None or loss_fn is not None:
            raise TypeError(
                "perturbed_step takes either (inputs, targets, loss_fn) or (batch, "
                "compute_loss=fn), not both: drop targets and loss_fn, or compute_loss"
            )
        if not callable(compute_loss):
            raise TypeError(f"compute_loss must be a callable (model, batch) -> loss, got {compute_loss!r}")
        return
    if targets is None or loss_fn is None:
        raise TypeError(
            "perturbed_step needs targets and loss_fn (perturbed_step(model, opt, x, y, loss_fn)), "
            "or compute_loss=fn(model, batch) returning the loss or (loss, logits)"
        )
    if not isinstance(targets, Tensor) or targets.shape[0] != n:
        got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"inputs and targets must have the same batch size: inputs has {n}, targets {got}"
        )


def _backward(objective: Tensor, scaler) -> None:
    (scaler.scale(objective) if scaler is not None else objective).backward()


@torch.no_grad()
def _per_dtype(tensors: list[Tensor], collective: Callable[[Tensor], None]) -> None:
    # One collective per dtype: flatten, run it in place, copy the result back.
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for ts in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        collective(flat)
        torch._foreach_copy_(ts, [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in ts]), ts)])


def _all_reduce_mean(grads: list[Tensor], group) -> None:
    world = dist.get_world_size(group)

    def mean(flat: Tensor) -> None:
        dist.all_reduce(flat, group=group)
        flat.div_(world)
    _per_dtype(grads, mean)


def _all_reduce_grads(params: list[Tensor], group) -> None:
    """Mean ``.grad`` over the replicas in place, one flat all-reduce per dtype; a parameter
    without a gradient gets zeros first, so every replica reduces identical layouts."""
    for p in params:
        if p.grad is None and p.requires_grad:
            p.grad = torch.zeros_like(p)
    _all_reduce_mean([p.grad for p in params if p.grad is not None], group)


def _broadcast_buffers(model: nn.parallel.DistributedDataParallel) -> None:
    # What DDP itself does before each synced forward (broadcast_buffers=True): rank 0's
    # buffers (BatchNorm running statistics) on every replica. perturbed_step runs every
    # forward under no_sync, where DDP skips it, so it is done here once per update.
    ignored = getattr(model, "parameters_to_ignore", ())
    buffers = [b for name, b in model.module.named_buffers() if name not in ignored]
    if buffers:
        src = dist.get_global_rank(model.process_group, 0)
        _per_dtype(buffers, lambda flat: dist.broadcast(flat, src=src, group=model.process_group))


def _any_rank(flag: bool, model: nn.parallel.DistributedDataParallel, device: torch.device) -> bool:
    # One small all-reduce that every rank reaches at each update, skipped or not, so a
    # skip on one rank (its own ascent overflow) becomes a skip on all, and no rank waits
    # in the gradient all-reduce for a rank that left.
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=model.process_group)
    return bool(t.item())


# -- gradient accumulation across update=False calls -------------------------------------
# A record: {"examples": int, "skipped": bool, "grads": fingerprint of .grad or None}. A
# PerturbedOptimizer keeps it as its own state (checkpointed, cleared by its zero_grad);
# a plain optimizer's lives here, weakly keyed. Either way it is honoured only while every
# .grad is the tensor, at the version, that the accumulate call left: zero_grad (to None or
# in place), model.zero_grad() or a stray backward in between drop it.
_PLAIN_PENDING: "weakref.WeakKeyDictionary[torch.optim.Optimizer, dict]" = weakref.WeakKeyDictionary()
_NOTHING = {"examples": 0, "skipped": False, "grads": None}


def _fingerprint(params: list[Tensor]) -> list:
    return [None if p.grad is None else (weakref.ref(p.grad), p.grad._version) for p in params]


def _unchanged(params: list[Tensor], fingerprint: list) -> bool:
    if len(fingerprint) != len(params):
        return False
    for p, seen in zip(params, fingerprint):
        if (p.grad is None) != (seen is None):
            return False
        if seen is not None and (seen[0]() is not p.grad or seen[1] != p.grad._version):
            return False
    return True


def _take_pending(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> dict:
    if isinstance(optimizer, PerturbedOptimizer):
        record, optimizer._accumulated = optimizer._accumulated, dict(_NOTHING)
    else:
        record = _PLAIN_PENDING.pop(optimizer, _NOTHING)
    if not record["examples"]:
        return _NOTHING
    if record.get("grads") is None:  # loaded from a checkpoint: .grad was not saved
        if record["skipped"] or any(p.grad is not None for p in params):
            return record
        warn_skipped_accumulation(record["examples"])
        return _NOTHING
    return record if _unchanged(params, record["grads"]) else _NOTHING


def warn_skipped_accumulation(examples: int) -> None:
    """Warn that a checkpoint's pending accumulation has no gradients to go with it."""
    warnings.warn(
        f"the optimizer's state_dict holds {examples} accumulated examples but no parameter "
        "has a .grad (gradients are not checkpointed): accumulation starts over",
        RuntimeWarning, stacklevel=4,
    )


def _keep_pending(optimizer: torch.optim.Optimizer, params: list[Tensor], examples: int, skipped: bool) -> None:
    record = {"examples": examples, "skipped": skipped, "grads": _fingerprint(params)}
    if isinstance(optimizer, PerturbedOptimizer):
        optimizer._accumulated = record
    else:
        _PLAIN_PENDING[optimizer] = record


def perturbed_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Any,
    targets: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    compute_loss: Callable[[nn.Module, Any], Any] | None = None,
    micro_batch_size: int | None = None,
    scaler: "torch.amp.GradScaler | None" = None,
    replay_dropout: bool = False,
    clip_grad_norm: float | None = None,
    update: bool = True,
) -> StepResult:
    """One full training step with any SAM-family member, or any plain torch optimizer.

    Args:
        model: the module (may be wrapped in ``DistributedDataParallel``).
        optimizer: a :class:`PerturbedOptimizer` (SAM, ASAM, GSAM, OBF, compositions) or any
            ``torch.optim.Optimizer`` (then an ordinary step).
        inputs: (N, ...) tensor, or a tuple/list (passed as ``model(*inputs)``) or dict
            (``model(**inputs)``) of tensors with the batch on dim 0.
        targets: (N, ...) targets for ``loss_fn``.
        loss_fn: ``(outputs, targets) -> scalar``, mean-reduced over the batch.
        compute_loss: instead of ``targets`` and ``loss_fn``: ``fn(model, batch)`` returning
            the training loss (0-d, mean-reduced) or ``(loss, logits)``; ``inputs`` is then
            the whole batch (tensor, tuple/list or dict of tensors, e.g. a Hugging Face batch
            with ``labels`` inside), sliced on dim 0 for ``micro_batch_size``. ``fn`` unpacks
            whatever the model returns (a ``ModelOutput``: ``out.loss``, ``out.logits``).
            Its ascent call runs inside :func:`~forgetting_sam.optim.ascent_pass`, so with an
            ascent objective (OBF) it must compute the loss with
            :class:`~forgetting_sam.AscentLoss`, or a ``RuntimeError`` says so.
        micro_batch_size: m-sharpness (§6): chunks of ``m`` examples, each with its own ``ε``;
            the descent gradient is the size-weighted mean over chunks (a ragged last chunk
            counts by its size). ``None``: the whole batch. Each chunk's unperturbed forward
            updates BatchNorm once; perturbed forwards never do.
        scaler: a ``torch.amp.GradScaler`` for fp16. Both backward passes are scaled; on an
            overflow in either pass the step is skipped, the weights restored, and the scale
            reduced. This function calls ``scaler.step`` and ``scaler.update`` itself.
            For bf16, wrap the call in ``torch.autocast``; no scaler is needed.
        replay_dropout: replay the RNG state so both passes of a chunk see the same dropout
            masks (and any other randomness inside ``model``).
        clip_grad_norm: clip the final descent gradient to this global norm (after
            averaging, all-reduce and unscaling), before the base step.
        update: ``False`` accumulates: this call's descent gradient is added to ``.grad``
            (as a size-weighted sum) and no step is taken; the next ``update=True`` call adds
            its own and steps with the size-weighted mean over all the examples since the
            last update. The result equals one call on the concatenated batch with chunks
            at the call boundaries. Under DDP the all-reduce happens once, at the update.
            A ``zero_grad()`` (of the optimizer or the model) between the calls, or any other
            change to ``.grad``, drops what was accumulated: the update uses its own batch.

    Returns:
        :class:`StepResult` with ``.loss``, ``.logits`` (at ``w``), ``.perturbed_loss``,
        ``.perturbed_logits`` (at ``w + ε``), ``.skipped`` and ``.updated``.

    DDP: pass the DDP-wrapped model. Every forward and backward runs under ``no_sync``, so
    each replica perturbs with its own gradients; the final gradient is all-reduced once.
    ``R`` replicas with local batch ``b`` equal one process with batch ``R·b`` and ``m = b``.
    At each update the ranks agree on skipping (one all-reduce of a flag: an overflow in
    one rank's ascent pass skips the step everywhere) and, with ``broadcast_buffers=True``
    (DDP's default), rank 0's buffers (BatchNorm running statistics) are broadcast, as DDP
    does before each synced forward; between steps every rank holds the same state.

    Without a scaler a skipped step warns (``RuntimeWarning``); with one it is silent, as
    any fp16 step. The overflow is read off the unscaled gradient, not off the scale.

    Example:
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> out = perturbed_step(model, opt, x, y, torch.nn.functional.cross_entropy)
        >>> out.loss, out.logits.shape
    """
    n = _batch_len(inputs)
    _check_forms(n, targets, loss_fn, compute_loss)
    if n == 0:
        raise ValueError("perturbed_step got an empty batch (batch size 0)")
    if micro_batch_size is not None and (
        not isinstance(micro_batch_size, int) or isinstance(micro_batch_size, bool) or micro_batch_size < 1
    ):
        raise ValueError(
            f"Invalid micro_batch_size: {micro_batch_size!r} (an integer >= 1, or None for the "
            "whole batch)"
        )
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"Invalid clip_grad_norm: {clip_grad_norm} (a positive number, or None)")

    family = isinstance(optimizer, PerturbedOptimizer)
    # Cheaper SAM (§9): a step the schedule does not perturb is the base optimizer's plain step.
    perturb = family and optimizer.should_perturb()
    evaluate = _evaluator(model, optimizer, targets, loss_fn, compute_loss)
    base = optimizer.base_optimizer if family else optimizer
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    no_sync = model.no_sync if ddp else contextlib.nullcontext
    params = [p for g in optimizer.param_groups for p in g["params"]]
    m = micro_batch_size or n
    chunks = [(a, min(a + m, n)) for a in range(0, n, m)]
    record = _take_pending(optimizer, params)
    pending = record["examples"]
    device = params[0].device

    # The running sum Σ |B_j| g_j over chunks (and earlier update=False calls). A single
    # chunk with nothing pending skips it, so that step is the plain gradient bit for bit.
    direct = len(chunks) == 1 and pending == 0 and update
    acc: dict[Tensor, Tensor] = {}
    if pending and not record["skipped"]:
        acc = {p: p.grad for p in params if p.grad is not None}
    optimizer.zero_grad(set_to_none=True)

    losses, logits, p_losses, p_logits = [], [], [], []
    skipped = False
    try:
        for a, b in chunks:
            x, size = _slice(inputs, a, b), b - a
            rng = _rng_snapshot(device) if (perturb and replay_dropout) else None
            # (1) forward at w, backward of the ascent objective
            with no_sync():
                objective, loss, out = evaluate(x, a, b, ascent=perturb)
                _backward(objective, scaler)
            losses.append(loss.detach() * size)
            if out is not None:
                logits.append(out.detach())
            if perturb:
                # (2) w <- w + ε
                optimizer.first_step(zero_grad=True, scaler=scaler)
                if optimizer.skipped:
                    skipped = True
                    break
                # (3) forward and backward of the training loss at w + ε
                with bn_stats_frozen(model), no_sync(), _replayed_rng(rng):
                    _, p_loss, p_out = evaluate(x, a, b, ascent=False)
                    _backward(p_loss, scaler)
                p_losses.append(p_loss.detach() * size)
                if p_out is not None:
                    p_logits.append(p_out.detach())
                # (4) w exactly back, GSAM's correction; g_p is in .grad
                optimizer.unperturb()
            if not direct:
                grads = [p for p in params if p.grad is not None]
                for p in grads:
                    if p in acc:
                        acc[p].add_(p.grad, alpha=size)
                    else:
                        acc[p] = p.grad.mul_(size)
                    p.grad = None
    finally:
        if family and optimizer.is_perturbed:
            optimizer.restore()  # never leave w + ε behind (errors, KeyboardInterrupt)

    result = StepResult(
        loss=torch.stack(losses).sum() / n,
        logits=torch.cat(logits) if logits else None,
        perturbed_loss=torch.stack(p_losses).sum() / n if p_losses else None,
        perturbed_logits=torch.cat(p_logits) if p_logits else None,
    )
    scaled = compat.scaler_scale(scaler) is not None
    total = pending + n
    if skipped or record["skipped"]:
        acc.clear()  # the whole accumulation window is skipped, as under fp16 with a scaler
        optimizer.zero_grad(set_to_none=True)
    if not update:
        for p, g in acc.items():
            p.grad = g
        _keep_pending(optimizer, params, total, skipped or record["skipped"])
        result.skipped, result.updated = skipped, False
        return result
    skipped = skipped or record["skipped"]
    if ddp:
        if family:  # only a family member's own ascent pass can skip on one rank alone
            skipped = _any_rank(skipped, model, device)
        if model.broadcast_buffers:
            _broadcast_buffers(model)
    if skipped:
        optimizer.zero_grad(set_to_none=True)
        if scaled:
            # The scaler must see the overflow (skip, back off) on every rank alike.
            compat.report_overflow(scaler, base)
        else:
            warn_skipped("ascent")
        return _finish(optimizer, result, skipped=True)

    if not direct:
        for p, g in acc.items():
            p.grad = g
        torch._foreach_mul_([p.grad for p in acc], 1.0 / total)
    if ddp:
        _all_reduce_grads(params, model.process_group)
    if family and not perturb:
        optimizer.reuse_on_plain_step()  # LookSAM's reuse of the last g_v (§10)
    if scaled:
        scaler.unscale_(base)
    # After the all-reduce every rank holds the same gradient, so all agree here too.
    if not grads_finite([p.grad for p in params if p.grad is not None]):
        if scaled:
            scaler.step(base)  # skips: unscale_ recorded the overflow
            scaler.update()
        else:
            warn_skipped("descent")
        optimizer.zero_grad(set_to_none=True)
        return _finish(optimizer, result, skipped=True)
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip_grad_norm)
    if scaled:
        scaler.step(base)
        scaler.update()
    else:
        base.step()
    return _finish(optimizer, result, skipped=False)


def _finish(optimizer: torch.optim.Optimizer, result: StepResult, skipped: bool) -> StepResult:
    result.skipped = skipped
    if isinstance(optimizer, PerturbedOptimizer):
        optimizer._last_skipped = skipped
        optimizer._mark_stepped()
    return result
