"""Perturbed forgetting: what the model forgets when SAM moves it from ``w`` to ``w + ε``.

docs/algorithms.md §8 (our definitions, after Vani et al.'s idea that the perturbation makes the
model forget). Two ways to get the numbers:

- **zero overhead**, during training: ``perturbed_step`` already runs the forward pass at
  ``w + ε``, so its result carries both logits; call
  ``perturbed_forgetting(res.logits, res.perturbed_logits, targets)``;
- **standalone**, on any model or checkpoint: ``measure_perturbed_forgetting(model, opt, batch,
  loss_fn)`` takes the ascent step itself and puts everything back.

Both give the same numbers for the same weights, batch and ``micro_batch_size`` (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..optim import bn_stats_frozen

__all__ = [
    "MEASURE_KEYS",
    "PerturbedForgettingMeter",
    "measure_perturbed_forgetting",
    "perturbed_forgetting",
    "total_variation",
]

#: Keys of :func:`perturbed_forgetting`'s result (``bias_marginal*`` only with a label marginal).
MEASURE_KEYS = (
    "forgot_frac",
    "loss_increase",
    "kl",
    "bias_uniform",
    "bias_uniform_perturbed",
    "bias_forgotten",
)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``½ Σ_k |p_k − q_k|`` along the last dim.

    ``p``, ``q``: probability vectors ``(..., K)``; returns ``(...)``, in ``[0, 1]``.
    Against the uniform ``u = 1/K`` the maximum is ``1 − 1/K`` (all mass on one class).

    >>> total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]))
    tensor(0.5000)
    """
    return 0.5 * (p - q).abs().sum(-1)


def _class_targets(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``(N,)`` from hard ``(N,)`` or soft ``(N, K)`` targets."""
    if targets.dim() == logits.dim() and targets.shape == logits.shape:
        return targets.argmax(-1)  # soft / one-hot targets (mixup, label smoothing)
    return targets


def _check_logits(logits, perturbed_logits, targets):
    for name, t in (("logits", logits), ("perturbed_logits", perturbed_logits), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (N, K), got {tuple(logits.shape)}; flatten extra dims first "
            "(e.g. logits.flatten(0, -2) for per-token outputs)"
        )
    if perturbed_logits.shape != logits.shape:
        raise ValueError(
            f"perturbed_logits shape {tuple(perturbed_logits.shape)} does not match logits shape "
            f"{tuple(logits.shape)}; both must come from the same batch"
        )
    n = logits.shape[0]
    if n == 0:
        raise ValueError("logits is an empty batch (N = 0); pass at least one example")
    hard = targets.dim() == 1 and targets.shape[0] == n
    soft = targets.shape == logits.shape
    if not (hard or soft):
        raise ValueError(
            f"targets must be class indices of shape ({n},) or probabilities of shape "
            f"{tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    if hard and targets.is_floating_point():
        raise ValueError("targets of shape (N,) must be integer class indices, got dtype "
                         f"{targets.dtype}; use targets.long()")


def perturbed_forgetting(
    logits: torch.Tensor,
    perturbed_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    label_marginal: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """How much the perturbation ``w → w + ε`` makes the model forget, on one batch.

    Args:
        logits: ``(N, K)`` outputs at ``w`` (e.g. ``perturbed_step(...).logits``).
        perturbed_logits: ``(N, K)`` outputs at ``w + ε`` on the same examples
            (``.perturbed_logits``).
        targets: ``(N,)`` class indices, or ``(N, K)`` class probabilities (their argmax is
            the class used for correctness).
        loss_fn: ``(logits, targets) -> scalar`` for ``loss_increase``; default mean
            cross-entropy.
        label_marginal: optional ``(K,)`` class frequencies or counts (normalized here),
            e.g. the training set's label histogram.

    Returns:
        A dict of 0-d float tensors on the logits' device (no host sync; call ``.item()``
        when you log):

        - ``forgot_frac``: fraction of the batch correct (argmax) at ``w`` and wrong at
          ``w + ε``, in ``[0, 1]``;
        - ``loss_increase``: ``L(w+ε) − L(w)`` in nats (for cross-entropy);
        - ``kl``: mean over examples of ``KL(p_w ‖ p_{w+ε})`` with softmax probabilities,
          in nats, ``≥ 0``;
        - ``bias_uniform``: output bias at ``w``, the total-variation distance
          ``½ Σ_k |p̄_k − 1/K|`` of the batch-mean prediction ``p̄ = mean_i softmax(z_i)``
          from uniform, in ``[0, 1 − 1/K]``;
        - ``bias_uniform_perturbed``: the same at ``w + ε``;
        - ``bias_forgotten``: ``bias_uniform − bias_uniform_perturbed``, how much output
          bias the perturbation removed (positive = forgot bias);
        - with ``label_marginal``: ``bias_marginal`` / ``bias_marginal_perturbed`` /
          ``bias_marginal_forgotten``, the same with the label marginal instead of uniform.

    Example:
        >>> res = perturbed_step(model, opt, x, y, F.cross_entropy)
        >>> m = perturbed_forgetting(res.logits, res.perturbed_logits, y)
        >>> float(m["forgot_frac"])
    """
    if perturbed_logits is None:
        raise ValueError(
            "perturbed_logits is None: the optimizer took no perturbation (a plain torch "
            "optimizer?). Use SAM/ASAM/GSAM/OBF, or measure_perturbed_forgetting with one."
        )
    _check_logits(logits, perturbed_logits, targets)
    k = logits.shape[1]
    y = _class_targets(targets, logits)
    # Both passes stacked into one (2, N, K) tensor: every kernel below runs once for both,
    # which halves the launches (the cost that matters next to a small model's step).
    # At least float32, so bf16/fp16 logits do not round the measures away.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = torch.stack([logits.detach(), perturbed_logits.detach()]).to(dtype)
    logp = z - z.logsumexp(-1, keepdim=True)  # = log_softmax; 2-3x faster on CPU for small K
    p = logp.exp()

    correct = z.argmax(-1) == y  # (2, N)
    forgot = (correct[0] & ~correct[1]).to(dtype).mean()

    if loss_fn is None:
        if targets.dim() == 2:  # soft targets: CE = −Σ_k t_k log p_k, as F.cross_entropy
            nll = -(targets.to(dtype) * logp).sum(-1).mean(-1)
        else:
            nll = -logp.gather(-1, y.expand(2, -1).unsqueeze(-1)).mean((1, 2))
        loss_increase = nll[1] - nll[0]
    else:
        tgt = targets.to(dtype) if targets.is_floating_point() else targets
        loss_increase = (loss_fn(z[1], tgt) - loss_fn(z[0], tgt)).detach().to(dtype)

    kl = (p[0] * (logp[0] - logp[1])).sum(-1).mean()

    mean_p = p.mean(1)  # (2, K): batch-mean prediction at w and at w + ε
    bias = 0.5 * (mean_p - 1.0 / k).abs().sum(-1)  # total variation from uniform
    out = {
        "forgot_frac": forgot,
        "loss_increase": loss_increase,
        "kl": kl,
        "bias_uniform": bias[0],
        "bias_uniform_perturbed": bias[1],
        "bias_forgotten": bias[0] - bias[1],
    }
    if label_marginal is not None:
        if not isinstance(label_marginal, torch.Tensor):
            label_marginal = torch.as_tensor(label_marginal)
        if label_marginal.shape != (k,):
            raise ValueError(
                f"label_marginal must have shape ({k},) (one frequency per class), "
                f"got {tuple(label_marginal.shape)}"
            )
        q = label_marginal.to(device=z.device, dtype=dtype)
        m = total_variation(mean_p, q / q.sum())
        out.update(bias_marginal=m[0], bias_marginal_perturbed=m[1], bias_marginal_forgotten=m[0] - m[1])
    return out


def _chunks(n: int, micro_batch_size: int | None) -> list[slice]:
    if micro_batch_size is None:
        return [slice(0, n)]
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) or micro_batch_size < 1:
        raise ValueError(f"Invalid micro_batch_size: {micro_batch_size!r}; use a positive int or None")
    return [slice(i, min(i + micro_batch_size, n)) for i in range(0, n, micro_batch_size)]


def _batch_len(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, (tuple, list)) and inputs:
        return _batch_len(inputs[0])
    if isinstance(inputs, dict) and inputs:
        return _batch_len(next(iter(inputs.values())))
    raise TypeError("inputs must be a tensor, a tuple/list or a dict of tensors (batch on dim 0), "
                    f"got {type(inputs).__name__}")


def _slice(inputs, sl: slice):
    if isinstance(inputs, torch.Tensor):
        return inputs[sl]
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_slice(x, sl) for x in inputs)
    return {k: _slice(v, sl) for k, v in inputs.items()}


def _forward(model, x):
    # the same calling convention as perturbed_step: model(*tuple), model(**dict), model(x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    if isinstance(x, dict):
        return model(**x)
    return model(x)


def measure_perturbed_forgetting(
    model: torch.nn.Module,
    optimizer,
    batch: Sequence[torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    micro_batch_size: int | None = None,
    label_marginal: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Perturbed forgetting of ``model`` on one batch, without training it.

    For each chunk of ``micro_batch_size`` examples (each chunk its own ``ε``, as in
    ``perturbed_step``, docs/algorithms.md §6): forward at ``w``, backward of
    ``optimizer.ascent_loss or loss_fn``, ``optimizer.first_step(zero_grad=True)``
    (``w ← w + ε``), forward at ``w + ε``, ``optimizer.restore()``. Then
    :func:`perturbed_forgetting` on the concatenated logits.

    Afterwards the weights are bit-identical, BatchNorm running statistics untouched
    (``bn_stats_frozen``), every parameter's ``.grad`` is the tensor it was before, and no
    base step is taken. The model's train/eval mode is used as is: in train mode BatchNorm
    normalizes with batch statistics (exactly as in ``perturbed_step``), in eval mode with
    its running statistics. The optimizer's per-step perturbation state (e.g. GSAM's saved
    ascent gradient) is overwritten, as a ``first_step`` would. Dropout draws fresh masks
    in each pass: use ``model.eval()`` (or a model without dropout) for a clean comparison.

    Args:
        model: any ``nn.Module`` whose trainable parameters ``optimizer`` holds.
        optimizer: a ``PerturbedOptimizer`` (SAM, ASAM, GSAM, OBF); its ``rho`` sets ``ε``.
        batch: ``(inputs, targets)``; inputs ``(N, ...)`` (or a tuple / dict of tensors,
            called as in ``perturbed_step``), targets ``(N,)`` or ``(N, K)``.
        loss_fn: training loss ``(logits, targets) -> scalar`` (mean over the batch).
        micro_batch_size: chunk size ``m`` (None = whole batch).
        label_marginal: passed on to :func:`perturbed_forgetting`.

    Returns:
        :func:`perturbed_forgetting`'s dict of 0-d tensors.

    Example:
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        >>> m = measure_perturbed_forgetting(model, opt, (x, y), F.cross_entropy)
    """
    if not (hasattr(optimizer, "first_step") and hasattr(optimizer, "restore")):
        raise TypeError(
            f"optimizer must be a perturbed optimizer with first_step/restore (SAM, ASAM, GSAM, "
            f"OBF), got {type(optimizer).__name__}; wrap it, e.g. SAM(model.parameters(), "
            "torch.optim.SGD, rho=0.05, lr=0.1)"
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be a pair (inputs, targets)")
    inputs, targets = batch
    n = _batch_len(inputs)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape[0] != n:
        raise ValueError(
            f"inputs and targets disagree on the batch size: {n} vs {targets.shape[0]}"
        )
    if n == 0:
        raise ValueError("batch is empty (N = 0)")
    ascent = optimizer.ascent_loss or loss_fn

    # Keep the caller's .grad tensors aside (by reference, no copy) and hand them back at the
    # end, so a measurement between a backward and a step changes nothing.
    params = list(dict.fromkeys(
        [p for p in model.parameters()]
        + [p for g in optimizer.param_groups for p in g["params"]]
    ))
    saved_grads = [p.grad for p in params]
    clean, perturbed = [], []
    try:
        with bn_stats_frozen(model):
            for sl in _chunks(n, micro_batch_size):
                x, y = _slice(inputs, sl), targets[sl]
                for p in params:
                    p.grad = None  # each chunk's ε from its own ascent gradient only
                with torch.enable_grad():
                    z = _forward(model, x)
                    ascent(z, y).backward()
                clean.append(z.detach())
                optimizer.first_step(zero_grad=True)
                try:
                    with torch.no_grad():
                        perturbed.append(_forward(model, x).detach())
                finally:
                    optimizer.restore()
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return perturbed_forgetting(
        torch.cat(clean), torch.cat(perturbed), targets, loss_fn=loss_fn,
        label_marginal=label_marginal,
    )


class PerturbedForgettingMeter:
    """Per-epoch means of :func:`perturbed_forgetting` over training steps, without syncs.

    Each :meth:`update` takes a ``perturbed_step`` result and the batch targets, computes the
    measures (on every ``every``-th call; the rest cost nothing) and adds them, weighted by
    batch size, to running sums on the device. :meth:`compute` returns plain floats (the one
    host sync) and :meth:`reset` starts the next epoch. Steps without perturbed logits (a plain
    optimizer) or skipped steps (fp16 overflow) are not counted.

    Args:
        every: measure one step in ``every`` (1 = all). On a tiny model whose step is only a
            millisecond, ``every=10`` keeps the cost under 2 % (see
            ``benchmarks/bench_forgetting.py``).
        loss_fn, label_marginal: passed on to :func:`perturbed_forgetting`.

    Example:
        >>> meter = PerturbedForgettingMeter()
        >>> for x, y in loader:
        ...     meter.update(perturbed_step(model, opt, x, y, F.cross_entropy), y)
        >>> log.update(meter.compute()); meter.reset()
    """

    def __init__(self, every: int = 1, *, loss_fn=None, label_marginal=None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r}; use a positive number of steps")
        self.every = every
        self.loss_fn = loss_fn
        self.label_marginal = label_marginal
        self.calls = 0
        self.reset()

    def reset(self) -> None:
        """Forget the accumulated sums (call at the start of each epoch)."""
        self._keys: tuple[str, ...] | None = None
        self._sum: torch.Tensor | None = None
        self.examples = 0
        self.steps = 0

    def update(self, result, targets: torch.Tensor) -> None:
        """Add one step: ``result`` has ``.logits``, ``.perturbed_logits`` (and ``.skipped``)."""
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        z1 = getattr(result, "perturbed_logits", None)
        if z1 is None or getattr(result, "skipped", False):
            return
        m = perturbed_forgetting(result.logits, z1, targets, loss_fn=self.loss_fn,
                                 label_marginal=self.label_marginal)
        n = result.logits.shape[0]
        vec = torch.stack(list(m.values())) * n
        if self._sum is None:
            self._keys, self._sum = tuple(m), vec
        else:
            self._sum = self._sum + vec
        self.examples += n
        self.steps += 1

    def compute(self) -> dict[str, float]:
        """Example-weighted means over the measured steps since :meth:`reset` (``{}`` if none)."""
        if self._sum is None:
            return {}
        return dict(zip(self._keys, (self._sum / self.examples).tolist()))
