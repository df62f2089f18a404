"""Sharpness (Foret et al., ICLR 2021): how much the loss rises one ascent step away.

``S_ρ(w) = L(w + ε) − L(w)`` with ``ε = ρ g / ‖g‖``, ``g = ∇L(w)`` and ``‖·‖`` the global norm
over all trainable parameters: the first-order solution of ``max_{‖ε‖≤ρ} L(w + ε) − L(w)``
(docs/algorithms.md §8). Variants:

* m-sharpness: each chunk of ``micro_batch_size`` examples gets its own ``g_j`` and ``ε_j``;
  the result is the size-weighted mean of the chunks' sharpness (§6);
* adaptive (ASAM, Kwon et al.): ``ε = ρ T² g / ‖T g‖`` with ``T = |w| + η`` (§3).

The model is never modified: the perturbed loss is evaluated with
``torch.func.functional_call`` on ``w + ε``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..optim import global_norm
from ._common import (
    batch_size,
    check_finite_number,
    check_mode,
    iter_batches,
    model_device,
    model_mode,
    progress_bar,
    trainable_named_parameters,
)

#: δ of docs/algorithms.md: guards the division by the gradient norm.
DELTA = 1e-12


@dataclass
class Sharpness:
    """ρ-sharpness of a model on some data.

    Attributes:
        value: size-weighted mean of ``L(w + ε_j) − L(w)`` over chunks (loss units).
        loss: mean loss at ``w``.
        perturbed_loss: mean loss at the perturbed weights.
        rho, micro_batch_size, adaptive, eta: the settings used.
        chunks: how many perturbations were taken.
    """

    value: float
    loss: float
    perturbed_loss: float
    rho: float
    micro_batch_size: int | None
    adaptive: bool
    eta: float
    chunks: int


def sharpness(model: nn.Module, data, loss_fn, rho: float = 0.05, *, micro_batch_size: int | None = None,
              adaptive: bool = False, eta: float = 0.01, mode: str = "eval",
              progress: bool = True) -> Sharpness:
    """One-step ρ-sharpness, m-sharpness (``micro_batch_size``) or its adaptive variant.

    Args:
        model: any ``nn.Module``; left exactly as it was.
        data: a batch ``(inputs, targets)`` or an iterable of batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (batch mean).
        rho: perturbation radius ``ρ ≥ 0`` (parameter units; with ``adaptive``, relative).
        micro_batch_size: ``m`` of m-sharpness (``None``: one perturbation per batch).
        adaptive: use ASAM's ``ε = ρ T² g / ‖T g‖``, ``T = |w| + η``.
        eta: ``η ≥ 0`` of the adaptive variant.
        mode: ``"eval"`` (default) or ``"train"`` (batch statistics, running stats untouched).
    Returns:
        :class:`Sharpness`.

    Example:
        >>> sharpness(model, (x, y), F.cross_entropy, rho=0.05, micro_batch_size=64).value
    """
    from torch.func import functional_call

    rho = check_finite_number(rho, "rho")
    if rho < 0:
        raise ValueError(f"Invalid rho: {rho} (must be ≥ 0)")
    eta = check_finite_number(eta, "eta")
    if eta < 0:
        raise ValueError(f"Invalid eta: {eta} (must be ≥ 0)")
    if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int)
                                         or micro_batch_size < 1):
        raise ValueError(f"micro_batch_size must be a positive int or None, got {micro_batch_size!r}")
    check_mode(mode)
    named = trainable_named_parameters(model)
    names = [n for n, _ in named]
    params = [p for _, p in named]
    device = model_device(model)
    total = chunks = 0
    sum_loss = sum_pert = 0.0
    with model_mode(model, mode), progress_bar(0, "sharpness", progress) as bar:
        for x, y in iter_batches(data, device):
            pieces = [(x, y)] if micro_batch_size is None else list(zip(x.split(micro_batch_size),
                                                                        y.split(micro_batch_size)))
            for xc, yc in pieces:
                loss = loss_fn(model(xc), yc)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    if adaptive:
                        t = [p.detach().abs() + eta for p in params]
                        scale = rho / (float(global_norm([ti * g for ti, g in zip(t, grads)])) + DELTA)
                        eps = [ti * ti * g * scale for ti, g in zip(t, grads)]
                    else:
                        scale = rho / (float(global_norm(grads)) + DELTA)
                        eps = [g * scale for g in grads]
                    shifted = {n: p.detach() + e for n, p, e in zip(names, params, eps)}
                    pert = loss_fn(functional_call(model, shifted, (xc,)), yc)
                nb = batch_size(xc)
                sum_loss += float(loss.detach()) * nb
                sum_pert += float(pert) * nb
                total += nb
                chunks += 1
                bar.update(1)
    loss_mean, pert_mean = sum_loss / total, sum_pert / total
    value = pert_mean - loss_mean if math.isfinite(pert_mean - loss_mean) else math.nan
    return Sharpness(value, loss_mean, pert_mean, rho, micro_batch_size, adaptive, eta, chunks)
