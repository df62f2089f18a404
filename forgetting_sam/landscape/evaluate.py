"""Loss and accuracy along a line or over a plane of weights ``w + α d₁ + β d₂``.

The user's model is never modified: the evaluation runs on a private copy (``deepcopy``),
so parameters, ``requires_grad``, buffers and train/eval flags stay exactly as they were.
(A model that cannot be deep-copied is evaluated in place and restored bit for bit.)

Two ways to evaluate the grid, with the same results up to float rounding:

* ``"sequential"``: one forward per point. The copy's tensors are re-pointed into one flat
  buffer per dtype, so moving to the next point of a grid row is a single ``add_`` kernel;
  the overhead over a forward at fixed weights is one vector add.
* ``"vmap"``: ``torch.func.functional_call`` + ``torch.vmap`` over chunks of points, the chunk
  sized to ``memory_budget``.

Which is faster depends on the work's shape and the device. ``method="auto"`` uses a pinned
rule on the CPU — sequential, because vmap was slower per point in every CPU case measured
(1.1×–6×, ``benchmarks/RESULTS.md``; batched weights turn matmuls into less efficient
batched matmuls) — and measures both on other devices (``method="measure"``), keeping the
grid points computed while measuring. A module that ``vmap`` cannot handle falls back to
sequential; :attr:`Landscape.method` and :attr:`Landscape.reason` report what ran and why.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import (
    batch_size,
    check_finite_number,
    check_mode,
    is_batch,
    iter_batches,
    model_mode,
    progress_bar,
)
from .directions import Direction, Plane, check_compatible, model_direction

METHODS = ("auto", "measure", "sequential", "vmap")
# Incremental moves along a row drift by one rounding per step; re-anchor exactly this often.
_REANCHOR = 32
# How many sequential points the "measure" method times (after one warm-up point).
_PROBE_POINTS = 3


@dataclass
class Landscape:
    """Loss (and accuracy) on a 1-D line or a 2-D plane of weights.

    Attributes:
        alphas: coordinates along the first direction, shape ``[nx]``.
        betas: coordinates along the second direction, shape ``[ny]`` (``None`` for a line).
        loss: mean loss per point, ``[nx]`` for a line, ``[ny, nx]`` for a plane (rows follow
            ``betas``, columns ``alphas``: the layout of ``matplotlib.contour``); NaN where the
            loss was not finite.
        accuracy: fraction of correct argmax predictions in [0, 1], same shape as ``loss``;
            ``None`` when the outputs are not class scores with integer targets.
        method: ``"sequential"`` or ``"vmap"`` (what actually ran).
        reason: why that method ran.
        mode: ``"eval"`` or ``"train"`` (the layers' mode during evaluation).
        seconds: wall time of the evaluation.
    """

    alphas: Tensor
    betas: Tensor | None
    loss: Tensor
    accuracy: Tensor | None
    method: str
    reason: str
    mode: str
    seconds: float
    chunk_size: int = 1
    labels: tuple = field(default=("α", "β"))

    @property
    def ndim(self) -> int:
        return 1 if self.betas is None else 2

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.loss.shape)
        finite = self.loss[torch.isfinite(self.loss)]
        low = float(finite.min()) if finite.numel() else math.nan
        return (f"Landscape({self.ndim}-D, {shape} points, min loss {low:.4g}, "
                f"method={self.method!r}, {self.seconds:.2f}s)")


def _grid(span, steps, name: str) -> Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name}steps must be an int ≥ 2, got {steps!r}")
    if steps < 2:
        raise ValueError(f"{name}steps must be at least 2 to draw a line, got {steps}")
    try:
        lo, hi = span
    except (TypeError, ValueError):
        raise TypeError(f"{name}span must be a pair (low, high), got {span!r}") from None
    lo = check_finite_number(lo, f"{name}span[0]")
    hi = check_finite_number(hi, f"{name}span[1]")
    if lo == hi:
        raise ValueError(f"{name}span must have two different ends, got ({lo}, {hi})")
    return torch.linspace(lo, hi, steps, dtype=torch.float64)


class _Work:
    """The tensors that move: a private copy of the model (or the model, restored after)."""

    def __init__(self, model: nn.Module, directions: list[Direction]):
        try:
            self.module = copy.deepcopy(model)
            self.private = True
        except Exception:  # noqa: BLE001 - any deepcopy failure means: work in place
            self.module = model
            self.private = False
        names = list(directions[0])
        tensors = dict(self.module.named_parameters())
        tensors.update(dict(self.module.named_buffers()))
        self.names = names
        self.targets = [tensors[n] for n in names]
        # The origin w and the directions, detached, on each target's device and dtype.
        self.origin = [t.detach().clone() for t in self.targets]
        self.dirs = [[d[n].detach().to(t.device, t.dtype) for n, t in zip(names, self.targets)]
                     for d in directions]
        self.snapshot = None if self.private else [t.detach().clone() for t in self.targets]

    def restore(self) -> None:
        if self.snapshot is not None:
            with torch.no_grad():
                for t, s in zip(self.targets, self.snapshot):
                    t.copy_(s)

    def flat_setter(self) -> _Setter:
        """A setter over one flat buffer per (dtype, device): one kernel per move."""
        if not self.private:
            return _Setter(self.targets, self.origin, self.dirs)
        groups: dict = {}
        for i, t in enumerate(self.targets):
            groups.setdefault((t.dtype, t.device), []).append(i)
        flats, origins, dirs = [], [], [[] for _ in self.dirs]
        for idx in groups.values():
            flat = torch.cat([self.origin[i].reshape(-1) for i in idx])
            offset = 0
            for i in idx:
                t, n = self.targets[i], self.targets[i].numel()
                # Re-point the copy's tensor into the flat buffer (private copy only).
                t.data = flat[offset:offset + n].view_as(t)
                offset += n
            flats.append(flat)
            origins.append(flat.clone())
            for k, d in enumerate(self.dirs):
                dirs[k].append(torch.cat([d[i].reshape(-1) for i in idx]))
        return _Setter(flats, origins, dirs)


class _Setter:
    """Moves ``targets`` to ``origin + Σ_k c_k d_k`` with as few kernels as possible.

    ``plan(coeffs)`` precomputes, for each point, the single-direction step from the previous
    point (or ``None``: re-anchor exactly), so the per-point work in the hot loop is one
    ``add_`` per flat buffer.
    """

    def __init__(self, targets, origin, dirs):
        self.targets, self.origin, self.dirs = targets, origin, dirs

    @staticmethod
    def plan(coeffs: list[list[float]]) -> list:
        steps, since = [], 0
        for i, c in enumerate(coeffs):
            step = None
            if i and since < _REANCHOR:
                changed = [k for k, (a, b) in enumerate(zip(c, coeffs[i - 1])) if a != b]
                if len(changed) == 1:
                    k = changed[0]
                    step = (k, c[k] - coeffs[i - 1][k])
                elif not changed:
                    step = (0, 0.0)
            since = since + 1 if step is not None else 0
            steps.append(step)
        return steps

    def anchor(self, coeffs: list[float]) -> None:
        torch._foreach_copy_(self.targets, self.origin)
        for k, c in enumerate(coeffs):
            if c != 0.0:
                torch._foreach_add_(self.targets, self.dirs[k], alpha=c)

    def step(self, k: int, delta: float) -> None:
        for t, d in zip(self.targets, self.dirs[k]):
            t.add_(d, alpha=delta)

    def reset(self) -> None:
        torch._foreach_copy_(self.targets, self.origin)


def _is_classification(out: Tensor, y: Tensor) -> bool:
    return out.dim() >= 2 and not y.is_floating_point() and not y.is_complex() and y.shape == out.shape[:-1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.25)
    return 256 * 2**20


def _activation_bytes(module: nn.Module, x: Tensor) -> int:
    """Bytes of all module outputs in one forward: a per-point memory estimate for vmap."""
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, Tensor):
                total += o.numel() * o.element_size()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return total


class _Evaluator:
    """Evaluates the grid on one batch at a time; remembers the method chosen on the first."""

    def __init__(self, work: _Work, loss_fn, coeffs: Tensor, method: str, budget, progress_cb):
        self.work, self.loss_fn, self.coeffs = work, loss_fn, coeffs
        self.coeff_list = coeffs.tolist()
        self.npts = len(self.coeff_list)
        self.requested = method
        self.method = None if method in ("auto", "measure") else method
        self.reason = f"requested method={method!r}"
        self.budget = budget
        self.setter = work.flat_setter()
        self.plan = _Setter.plan(self.coeff_list)
        self.classify = None
        self.chunk = 1
        self.progress_cb = progress_cb
        self.device = work.targets[0].device

    def _learn_outputs(self, x, y) -> None:
        """One forward at the origin: are the outputs class scores, is the loss a scalar?"""
        self.setter.reset()
        out = self.work.module(x)
        loss = self.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor (the batch mean), got {shape}; "
                             "use reduction='mean'")
        self.classify = _is_classification(out, y)

    # ---- points one by one --------------------------------------------------------
    def _sequential(self, idx: range, x, y, losses, corrects):
        # The hot loop: one add_ (or an exact re-anchor), one forward, the loss, the count.
        setter, plan, coeffs = self.setter, self.plan, self.coeff_list
        module, loss_fn = self.work.module, self.loss_fn
        if self.classify is None:
            self._learn_outputs(x, y)
        classify, bar, done, last = self.classify, self.progress_cb, 0, None
        # One flat buffer (one dtype and device, the usual case): call add_ directly.
        single = setter.targets[0] if len(setter.targets) == 1 else None
        single_dirs = [d[0] for d in setter.dirs]
        for i in idx:
            step = plan[i] if last == i - 1 else None
            if step is None:
                setter.anchor(coeffs[i])
            elif single is not None:
                single.add_(single_dirs[step[0]], alpha=step[1])
            else:
                setter.step(*step)
            last = i
            out = module(x)
            losses[i] = loss_fn(out, y)
            if classify:
                corrects[i] = (out.argmax(-1) == y).sum()
            done += 1
            if done == 16:  # a bar update per point would cost more than a small forward
                bar(done)
                done = 0
        if done:
            bar(done)

    # ---- a chunk of points, vmap -----------------------------------------------------
    def _vmap_fn(self):
        from torch.func import functional_call

        module, loss_fn, names, classify = self.work.module, self.loss_fn, self.work.names, self.classify

        def one(tensors, x, y):
            out = functional_call(module, dict(zip(names, tensors)), (x,))
            loss = loss_fn(out, y)
            correct = (out.argmax(-1) == y).sum() if classify else loss.new_zeros(())
            return loss, correct

        return torch.vmap(one, in_dims=(0, None, None), randomness="different")

    def _chunk_tensors(self, lo: int, hi: int) -> list[Tensor]:
        c = self.coeffs[lo:hi]
        out = []
        for j, w in enumerate(self.work.origin):
            shape = (hi - lo,) + (1,) * w.dim()
            t = w.unsqueeze(0)
            for k, d in enumerate(self.work.dirs):
                t = t + c[:, k].to(w.device, w.dtype).view(shape) * d[j].unsqueeze(0)
            out.append(t)
        return out

    def _vmap(self, lo: int, hi: int, x, y, losses, corrects):
        fn = self._vmap_fn()
        for start in range(lo, hi, self.chunk):
            stop = min(hi, start + self.chunk)
            loss, correct = fn(self._chunk_tensors(start, stop), x, y)
            for i in range(start, stop):
                losses[i] = loss[i - start]
                corrects[i] = correct[i - start] if self.classify else None
            self.progress_cb(stop - start)

    def _chunk_size(self, x) -> int:
        per_point = sum(w.numel() * w.element_size() for w in self.work.origin)
        per_point += 2 * _activation_bytes(self.work.module, x)
        return max(1, min(self.npts, self.budget // max(per_point, 1)))

    def _try_vmap(self, lo, hi, x, y, losses, corrects) -> bool:
        try:
            self._vmap(lo, hi, x, y, losses, corrects)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure inside vmap means: not vmappable
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.method = "sequential"
            self.reason = f"vmap failed ({msg[:200]}); fell back to sequential"
            if self.requested == "vmap":
                warnings.warn(f"loss landscape: {self.reason}", RuntimeWarning, stacklevel=4)
            return False

    # ---- one batch -------------------------------------------------------------------
    def batch(self, x: Tensor, y: Tensor):
        n = self.npts
        losses: list = [None] * n
        corrects: list = [None] * n
        self.setter.reset()
        if self.method is None and self.requested == "auto" and self.device.type == "cpu":
            self.method = "sequential"
            self.reason = ("auto on the CPU: sequential (pinned rule; vmap was slower per point in "
                           "every CPU benchmark case)")
        if self.method is None:
            self._measure(x, y, losses, corrects)
        elif self.method == "sequential":
            self._sequential(range(n), x, y, losses, corrects)
        else:
            if self.classify is None:
                self._learn_outputs(x, y)
            if self.chunk == 1:
                self.chunk = self._chunk_size(x)
            if not self._try_vmap(0, n, x, y, losses, corrects):
                self._sequential(range(n), x, y, losses, corrects)
        return losses, corrects

    def _measure(self, x, y, losses, corrects):
        n = self.npts
        probe = min(n, 1 + _PROBE_POINTS)
        self._sequential(range(1), x, y, losses, corrects)  # warm-up point
        _sync(self.device)
        t0 = time.perf_counter()
        self._sequential(range(1, probe), x, y, losses, corrects)
        _sync(self.device)
        t_seq = (time.perf_counter() - t0) / max(probe - 1, 1)
        if probe >= n:
            self.method, self.reason = "sequential", "measure: the grid is too small to measure vmap"
            return
        self.setter.reset()
        self.chunk = self._chunk_size(x)
        lo = probe
        # A 2-point warm-up chunk, so vmap's first-call setup is not charged to its timing.
        warm_hi = min(n, lo + 2)
        saved = self.chunk
        self.chunk = warm_hi - lo
        if not self._try_vmap(lo, warm_hi, x, y, losses, corrects):
            self._sequential(range(lo, n), x, y, losses, corrects)
            return
        self.chunk = saved
        lo = warm_hi
        hi = min(n, lo + self.chunk)
        if lo >= n:
            self.method, self.reason = "vmap", "measure: the grid fit in the probes"
            return
        _sync(self.device)
        t0 = time.perf_counter()
        if not self._try_vmap(lo, hi, x, y, losses, corrects):
            self._sequential(range(lo, n), x, y, losses, corrects)
            return
        _sync(self.device)
        t_vmap = (time.perf_counter() - t0) / (hi - lo)
        faster = "vmap" if t_vmap < t_seq else "sequential"
        self.method = faster
        self.reason = (f"measured: sequential {t_seq * 1e3:.3g} ms/point, vmap {t_vmap * 1e3:.3g} ms/point "
                       f"(chunks of {self.chunk}); chose {faster}")
        if hi < n:
            if faster == "vmap":
                self._vmap(hi, n, x, y, losses, corrects)
            else:
                self.setter.reset()
                self._sequential(range(hi, n), x, y, losses, corrects)


def evaluate_points(model: nn.Module, directions: list[Direction], coeffs: Tensor, data, loss_fn, *,
                    mode: str = "eval", method: str = "auto", memory_budget: int | None = None,
                    progress: bool = True, desc: str = "landscape"):
    """Loss and accuracy at the weights ``w + Σ_k coeffs[i, k] · directions[k]`` for every ``i``.

    The engine under :func:`loss_line` and :func:`loss_surface`, for arbitrary point sets.

    Args:
        model: any ``nn.Module``; left exactly as it was.
        directions: ``K`` directions matching the model's trainable tensors.
        coeffs: ``[P, K]`` coefficients (one row per point).
        data: a batch ``(inputs, targets)`` or an iterable of batches (a DataLoader).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean over the batch.
        mode: ``"eval"`` (default) or ``"train"`` (batch statistics, running stats untouched).
        method: ``"auto"``, ``"measure"``, ``"sequential"`` or ``"vmap"`` (module docstring).
        memory_budget: bytes for one vmap chunk (default: 256 MiB on CPU, 1/4 of free GPU memory).
    Returns:
        ``(loss [P], accuracy [P] or None, method, reason, chunk_size)``; the loss is the
        size-weighted mean over batches, NaN where not finite.
    """
    check_mode(mode)
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (allowed: {', '.join(METHODS)})")
    if not directions:
        raise ValueError("directions must hold at least one Direction")
    for d in directions:
        check_compatible(model, d)
    if any(list(d) != list(directions[0]) for d in directions):
        raise ValueError("all directions must cover the same tensors (same names and buffers= setting)")
    coeffs = torch.as_tensor(coeffs, dtype=torch.float64)
    if coeffs.dim() != 2 or coeffs.shape[1] != len(directions) or coeffs.shape[0] < 1:
        raise ValueError(f"coeffs must have shape [points, {len(directions)}], got {tuple(coeffs.shape)}")
    if not torch.isfinite(coeffs).all():
        raise ValueError("coeffs must be finite")
    if memory_budget is not None and memory_budget <= 0:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")

    work = _Work(model, directions)
    budget = memory_budget or _default_budget(work.targets[0].device)
    n_batches = 1 if is_batch(data) else (len(data) if hasattr(data, "__len__") else 1)
    total_n = 0
    loss_sum = correct_sum = None
    try:
        with torch.no_grad(), model_mode(work.module, mode), \
                progress_bar(coeffs.shape[0] * n_batches, desc, progress) as bar:
            ev = _Evaluator(work, loss_fn, coeffs, method, budget, bar.update)
            for x, y in iter_batches(data, work.targets[0].device):
                losses, corrects = ev.batch(x, y)
                nb = batch_size(x)
                total_n += nb
                batch_loss = torch.stack(losses).double() * nb
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                if ev.classify:
                    c = torch.stack(corrects).double()
                    correct_sum = c if correct_sum is None else correct_sum + c
    finally:
        work.restore()
    loss = (loss_sum / total_n).cpu()
    loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.nan))
    acc = None if correct_sum is None else (correct_sum / total_n).cpu()
    if acc is not None:
        acc = torch.where(torch.isnan(loss), torch.full_like(acc, math.nan), acc)
    return loss, acc, ev.method, ev.reason, ev.chunk


def loss_line(model: nn.Module, direction: Direction, data, loss_fn, *, span=(-1.0, 1.0), steps: int = 25,
              **kwargs) -> Landscape:
    """Loss and accuracy along ``w + α d`` for ``steps`` values of α evenly spaced in ``span``.

    Keyword arguments (``mode``, ``method``, ``memory_budget``, ``progress``) as in
    :func:`evaluate_points`.

    Example:
        >>> line = loss_line(model, random_direction(model, seed=1), (x, y), F.cross_entropy)
        >>> line.loss.shape
        torch.Size([25])
    """
    alphas = _grid(span, steps, "")
    t0 = time.perf_counter()
    loss, acc, method, reason, chunk = evaluate_points(model, [direction], alphas[:, None], data, loss_fn,
                                                       desc="loss line", **kwargs)
    return Landscape(alphas, None, loss, acc, method, reason, kwargs.get("mode", "eval"),
                     time.perf_counter() - t0, chunk)


def loss_surface(model: nn.Module, plane: Plane, data, loss_fn, *, span=(-1.0, 1.0), steps: int = 25,
                 span_y=None, steps_y: int | None = None, **kwargs) -> Landscape:
    """Loss and accuracy over the plane ``w + α x + β y`` (``plane = (x, y)``).

    Args:
        model: any ``nn.Module`` (left exactly as it was).
        plane: a :class:`Plane` (or pair of directions) matching the model's tensors.
        data: a batch ``(inputs, targets)`` or an iterable of batches.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (batch mean).
        span, steps: the α grid (``steps`` points in ``[span[0], span[1]]``).
        span_y, steps_y: the β grid (default: the same as α).
        **kwargs: ``mode``, ``method``, ``memory_budget``, ``progress`` (see :func:`evaluate_points`).
    Returns:
        :class:`Landscape` with ``loss`` and ``accuracy`` of shape ``[steps_y, steps]``.

    Example:
        >>> plane = random_plane(model_sgd, seed=0)
        >>> surfaces = [loss_surface(m, plane, (x, y), F.cross_entropy) for m in models]
        >>> plot_surfaces(surfaces, titles=["SGD", "SAM", "OBF"])
    """
    if not (isinstance(plane, tuple) and len(plane) == 2):
        raise TypeError(f"plane must be a Plane (two directions), got {type(plane).__name__}")
    alphas = _grid(span, steps, "")
    betas = _grid(span if span_y is None else span_y, steps if steps_y is None else steps_y, "y-")
    # Row-major with α fastest, so consecutive points differ along one direction only.
    bb, aa = torch.meshgrid(betas, alphas, indexing="ij")
    coeffs = torch.stack([aa.reshape(-1), bb.reshape(-1)], dim=1)
    t0 = time.perf_counter()
    loss, acc, method, reason, chunk = evaluate_points(model, list(plane), coeffs, data, loss_fn,
                                                       desc="loss surface", **kwargs)
    shape = (len(betas), len(alphas))
    return Landscape(alphas, betas, loss.reshape(shape), None if acc is None else acc.reshape(shape),
                     method, reason, kwargs.get("mode", "eval"), time.perf_counter() - t0, chunk)


def interpolate(model_a: nn.Module, model_b: nn.Module, data, loss_fn, *, span=(-0.5, 1.5), steps: int = 41,
                **kwargs) -> Landscape:
    """Loss and accuracy on the straight line from ``model_a`` (α=0) to ``model_b`` (α=1).

    Goodfellow et al.'s linear interpolation; ``span`` extends past both ends by default.
    Keyword arguments as in :func:`loss_line`.
    """
    return loss_line(model_a, model_direction(model_a, model_b), data, loss_fn, span=span, steps=steps, **kwargs)
