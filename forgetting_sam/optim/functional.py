"""The math of the perturb-then-descend step, as small functions over tensor lists.

Each function treats a list of tensors (one per parameter) as one long vector, as
docs/algorithms.md does, without ever building the concatenation. They are the parts that
:class:`~forgetting_sam.optim.PerturbedOptimizer` plugs together:

* :func:`perturbed_weights` — ``w + ε``, ``ε = ρ · D(h, w)`` (SAM and ASAM, §2–§3),
* :func:`gsam_correct_` — GSAM's correction of the descent gradient (§1 step 4, §4).

They use multi-tensor (``torch._foreach_*``) kernels and allocate at most one
parameter-sized buffer (the perturbed weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

#: δ in docs/algorithms.md: the guard against dividing by a zero norm.
DELTA = 1e-12

#: The adaptive (ASAM) direction forms, see :func:`perturbed_weights`.
ASAM_FORMS = ("original", "before", "after")


def _accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    # float64 models (the tests) keep float64 norms; everything else reduces in float32,
    # so bf16/fp16 parameters do not lose the norm to rounding.
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _stack(values: Sequence[Tensor], like: Sequence[Tensor]) -> Tensor:
    dtype, device = _accumulation_dtype(like), like[0].device
    return torch.stack([v.to(device=device, dtype=dtype) for v in values])


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """One L2 norm over a list of tensors, as if they were concatenated.

    Args:
        tensors: any shapes (gathered to the first tensor's device).
    Returns:
        0-d tensor, float32 (float64 if any input is float64); 0 for an empty list.

    Example:
        >>> global_norm([torch.ones(3), torch.ones(1)])
        tensor(2.)
    """
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(_stack(torch._foreach_norm(tensors), tensors))


def global_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product ``⟨a, b⟩`` of two tensor lists of matching shapes (0-d tensor).

    Tensor by tensor with ``torch.vdot``, so no temporary parameter-sized copy is made.

    Example:
        >>> global_dot([torch.ones(2)], [torch.full((2,), 3.0)])
        tensor(6.)
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"global_dot needs lists of equal length, got {len(a)} and {len(b)}")
    if not a:
        return torch.zeros(())
    return _stack([torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)], a).sum()


def perturbed_weights(
    params: Sequence[Sequence[Tensor]],
    grads: Sequence[Sequence[Tensor]],
    rho: Sequence[float],
    adaptive: Sequence[bool],
    eta: Sequence[float],
    form: str = "original",
    *,
    into_grads: bool = False,
) -> tuple[list[list[Tensor]] | None, float]:
    """The perturbed weights ``w + ε``, ``ε = ρ · D(h, w)``, for several param groups at once.

    Norms are global over all groups; each group has its own ``ρ``, ASAM switch and ``η``
    (docs/algorithms.md §1). With ``T = |w| + η`` on adaptive groups and ``T = 1`` elsewhere:

    * ``form="original"`` (Kwon et al.): ``D = T² ⊙ h / (‖T ⊙ h‖ + δ)`` — SAM when no group
      is adaptive: ``D = h / (‖h‖ + δ)``;
    * ``"before"``: ``D = T ⊙ h / (‖T ⊙ h‖ + δ)``; ``"after"``: ``D = T ⊙ h / (‖h‖ + δ)``
      (the two forms of the OBF authors' ASAM runs).

    Args:
        params, grads: per group, lists of same-shaped tensors (``w`` and ``h``).
        rho, adaptive, eta: per group.
        form: one of :data:`ASAM_FORMS`; only matters on adaptive groups.
        into_grads: on the CPU, write ``w + ε`` into the tensors of ``grads`` themselves
            (the caller releases ``.grad`` right after, as ``first_step(zero_grad=True)``
            does): no parameter-sized allocation at all, which on the CPU means no fresh
            pages to fault in every step. Same arithmetic, bit-identical results. A gradient
            that is a view (DDP's ``gradient_as_bucket_view``) or differs from its parameter
            in dtype or strides gets a new tensor instead.
    Returns:
        ``(weights, norm)``: ``w + ε`` per group as new tensors (the only parameter-sized
        allocation), and the denominator norm as a float. When the norm is not finite
        (a NaN or Inf in ``h``), ``weights`` is None and nothing is allocated.

    Example:
        >>> w, h = [torch.zeros(2)], [torch.tensor([3.0, 4.0])]
        >>> perturbed_weights([w], [h], rho=[0.5], adaptive=[False], eta=[0.0])[0]
        [[tensor([0.3000, 0.4000])]]
    """
    if form not in ASAM_FORMS:
        raise ValueError(f"Invalid adaptive_form: {form!r} (allowed: {', '.join(ASAM_FORMS)})")
    into = into_grads and any(len(h) for h in grads) and next(t for h in grads for t in h).device.type == "cpu"
    bufs: list[list[Tensor] | None] = []
    squares: list[Tensor] = []
    for w, h, ada, e in zip(params, grads, adaptive, eta):
        w, h = list(w), list(h)
        if not h:
            bufs.append([])
            continue
        if not ada:
            bufs.append(None)  # SAM group: w + ε is made in one fused pass below
            squares.append(global_norm(h) ** 2)
            continue
        if not into:
            buf, square = _adaptive_numerator(w, h, e, form)
        else:
            # Tensor by tensor, so only one tensor-sized temporary is alive at a time; the
            # per-tensor pieces are combined exactly as the whole-list kernels combine them.
            buf, pieces = [], []
            for wi, hi in zip(w, h):
                (bi,), piece = _adaptive_numerator([wi], [hi], e, form, combine=False)
                if _reusable(wi, hi):
                    bi = hi.copy_(bi)
                buf.append(bi)
                pieces.append(piece)
            square = _combine(pieces, h, form)
        squares.append(square)
        bufs.append(buf)
    if not squares:
        return [[] for _ in bufs], 0.0
    # One host sync per step: the finiteness check needs it, and a Python scale lets
    # SAM groups build w + ε in a single pass (read w and h, write the buffer).
    norm = float(torch.sqrt(_stack(squares, squares).sum()))
    if not math.isfinite(norm):
        return None, norm
    out: list[list[Tensor]] = []
    for buf, w, h, r in zip(bufs, params, grads, rho):
        w, h = list(w), list(h)
        scale = r / (norm + DELTA)
        if not h:
            out.append([])
        elif buf is None and into:
            out.append([torch.add(wi, hi, alpha=scale, out=hi) if _reusable(wi, hi) else torch.add(wi, hi, alpha=scale)
                        for wi, hi in zip(w, h)])
        elif buf is None:
            out.append(torch._foreach_add(w, h, alpha=scale))
        else:
            torch._foreach_mul_(buf, scale)
            torch._foreach_add_(buf, w)
            out.append(buf)
    return out, norm


def _reusable(w: Tensor, h: Tensor) -> bool:
    """Whether gradient ``h`` may be overwritten to become the storage of ``w + ε``."""
    return (h._base is None and h.dtype == w.dtype and h.device == w.device and h.shape == w.shape
            and h.stride() == w.stride() and h.data_ptr() != w.data_ptr())


def _adaptive_numerator(w: list[Tensor], h: list[Tensor], e: float, form: str, combine: bool = True):
    """``(T² ⊙ h or T ⊙ h, its squared norm)`` for one adaptive group (a new buffer).

    With ``combine=False`` the norm comes back as the per-tensor pieces (inner products for
    ``"original"``, norms otherwise) for :func:`_combine`.
    """
    if form == "original" and not e:
        buf = torch._foreach_mul(w, w)  # T² = w² when η = 0: one pass instead of two
    else:
        buf = torch._foreach_abs(w)
        if e:
            torch._foreach_add_(buf, e)
        if form == "original":
            torch._foreach_mul_(buf, buf)  # T²
    torch._foreach_mul_(buf, h)  # T² ⊙ h ("original") or T ⊙ h
    if form == "original":  # ‖T ⊙ h‖² = ⟨T² ⊙ h, h⟩, no extra copy
        pieces = [torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(buf, h)]
    else:
        pieces = list(torch._foreach_norm(h if form == "after" else buf))
    return buf, (_combine(pieces, h, form) if combine else pieces[0])


def _combine(pieces: list[Tensor], like: list[Tensor], form: str) -> Tensor:
    # The reductions of global_dot and global_norm, from their per-tensor pieces.
    if form == "original":
        return _stack(pieces, like).sum()
    return torch.linalg.vector_norm(_stack(pieces, like)) ** 2


def gsam_correct_(
    descent: Sequence[Sequence[Tensor]],
    ascent: Sequence[Sequence[Tensor]],
    alpha: Sequence[float],
) -> None:
    """GSAM's correction, in place: ``g ← g − α (h − ⟨h, ĝ⟩ ĝ)``, ``ĝ = g / (‖g‖ + δ)``.

    ``‖g‖`` and ``⟨h, ĝ⟩`` are global over all groups; each group's ``α`` scales the
    correction of its own tensors (docs/algorithms.md §1, §4). Rearranged as
    ``g ← (1 + α ⟨h, g⟩ / (‖g‖ + δ)²) g − α h``: two passes over the gradients.

    Args:
        descent: per group, the descent gradients ``g_p`` (modified in place).
        ascent: per group, the ascent gradients ``h`` (same shapes).
        alpha: per group.
    """
    flat_g = [t for group in descent for t in group]
    flat_h = [t for group in ascent for t in group]
    if not flat_g:
        return
    # ⟨h, g⟩ and ‖g‖ tensor by tensor in one sweep, while each tensor is still in cache
    # (the same per-tensor values global_dot and global_norm would combine).
    dots, norms = [], []
    for h, g in zip(flat_h, flat_g):
        dots.append(torch.vdot(h.reshape(-1), g.reshape(-1)))
        norms.append(torch.linalg.vector_norm(g))
    coef = _stack(dots, flat_h).sum() / (torch.linalg.vector_norm(_stack(norms, flat_g)) + DELTA) ** 2
    for g, h, a in zip(descent, ascent, alpha):
        if not a or not g:
            continue
        g, h = list(g), list(h)
        torch._foreach_mul_(g, (1.0 + a * coef).to(g[0].dtype))
        torch._foreach_add_(g, h, alpha=-a)
