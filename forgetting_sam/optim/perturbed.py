"""One perturb-then-descend mechanism (docs/algorithms.md §1) and the four family members.

:class:`PerturbedOptimizer` wraps a base optimizer (SGD, AdamW, ...). A step is

1. ascent gradient ``h`` in ``.grad`` (of ``ascent_loss``, or of the training loss),
2. :meth:`~PerturbedOptimizer.first_step`: ``w ← w + ε``, ``ε = ρ · D(h, w)``,
3. descent gradient ``g_p`` at ``w + ε`` in ``.grad`` (always the training loss),
4. :meth:`~PerturbedOptimizer.second_step`: restore ``w`` bit for bit, GSAM's correction,
   then the base optimizer's own update.

The variants are parts plugged into that one mechanism: the *direction*
(SAM or ASAM: the per-group ``adaptive`` flag), the *ascent objective* (``ascent_loss``:
``None`` or :class:`~forgetting_sam.optim.OBFLoss`) and the *correction* (GSAM: the
per-group ``alpha``). :class:`SAM`, :class:`ASAM`, :class:`GSAM` and :class:`OBF` only
choose defaults.

Memory: ``w + ε`` is built in one new buffer that is swapped in as the parameters' storage;
restoring swaps the original storage back (exact, and no copy of ``w`` is ever made).
Between steps the optimizer holds nothing beyond the base optimizer's state.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import compat
from . import perturb_schedule as schedule
from . import rules
from .ascent import ascent_pass
from .functional import ASAM_FORMS, gsam_correct_, perturbed_weights
from .objectives import OBFLoss

_FAMILY_KEYS = ("rho", "adaptive", "eta", "alpha", "adaptive_form")


def _check_finite(options: dict) -> None:
    # torch's own checks (lr < 0, ...) let NaN and Inf through; a NaN lr or weight decay
    # turns every weight NaN at the first step.
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"Invalid {name}: {value} ({name} must be a finite number)")


def _check_group(group: dict) -> None:
    _check_finite({k: v for k, v in group.items() if k != "params"})
    for name in ("rho", "eta", "alpha"):
        value = group[name]
        if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"Invalid {name}: {value} ({name} must be a finite number >= 0)")
    if not isinstance(group["adaptive"], bool):
        raise ValueError(f"Invalid adaptive: {group['adaptive']!r} (adaptive must be True or False)")
    if group["adaptive_form"] not in ASAM_FORMS:
        raise ValueError(
            f"Invalid adaptive_form: {group['adaptive_form']!r} (allowed: {', '.join(ASAM_FORMS)})"
        )


def grads_finite(grads: list[Tensor]) -> bool:
    """True if every tensor in ``grads`` is free of NaN and Inf (one host sync).

    The max-abs norm, not the 2-norm: a large but finite fp16 gradient must not overflow
    the test itself.
    """
    if not grads:
        return True
    norms = torch._foreach_norm(grads, math.inf)
    return bool(torch.stack([n.float() for n in norms]).isfinite().all())


def _autocast_off(device: torch.device):
    # The optimizer's own arithmetic must not be downcast by an autocast region around it.
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _clear_autocast_cache(device: torch.device) -> None:
    # Autocast caches the low-precision copy of each weight for the whole region. Without
    # this, a forward at w + ε inside the same region silently reuses the casts of w.
    if torch.is_autocast_enabled(device.type):
        torch.clear_autocast_cache()


class PerturbedOptimizer(torch.optim.Optimizer):
    """The perturb-then-descend mechanism that SAM, ASAM, GSAM and OBF share.

    Args:
        params: tensors or param-group dicts; ``rho``, ``adaptive``, ``eta``, ``alpha`` and
            ``adaptive_form`` may be set per group, like ``lr``.
        base_optimizer: the base optimizer's *class*, e.g. ``torch.optim.SGD``.
        rho: perturbation radius ρ ≥ 0.
        adaptive: ASAM's scale-invariant direction on this group (§3); positional after
            ``rho`` as in the popular PyTorch SAM.
        eta: ASAM's η ≥ 0 in ``T_w = |w| + η``.
        alpha: GSAM's correction weight α ≥ 0 (0: no correction).
        adaptive_form: ``"original"`` (``T²h/‖Th‖``), ``"before"`` (``Th/‖Th‖``) or
            ``"after"`` (``Th/‖h‖``); one form for the whole optimizer.
        ascent_loss: ``None`` to ascend the training loss, or a callable
            ``(logits, targets) -> scalar`` such as :class:`OBFLoss`.
        perturb_every, perturb_from: cheaper SAM (docs/algorithms.md §9): step ``t`` (counted
            from 0) perturbs only when ``t >= perturb_from`` and ``(t - perturb_from) %
            perturb_every == 0``; the other steps are the base optimizer's plain step on
            ``∇L(w)`` (one forward and backward). See :meth:`should_perturb`.
        direction: ``None`` for SAM's/ASAM's ``D(h, w)``, or a direction part that builds
            ``w + ε`` itself (:class:`~forgetting_sam.optim.rules.FriendlyDirection`,
            :class:`~forgetting_sam.optim.rules.FisherDirection`; docs/algorithms.md §10).
        correction: ``None``, or a correction part applied to ``g_p`` with the saved ``h``
            after GSAM's (:class:`~forgetting_sam.optim.rules.WeightedSharpness`).
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ...).

    ``param_groups`` and ``state`` are the base optimizer's own objects, so LR schedulers,
    :class:`ProportionalRho` and checkpoints act on the wrapper directly.
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        *,
        eta: float = 0.0,
        alpha: float = 0.0,
        adaptive_form: str = "original",
        ascent_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        perturb_every: int = 1,
        perturb_from: int = 0,
        direction: Any = None,
        correction: Any = None,
        **base_kwargs: Any,
    ):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer class such as torch.optim.SGD "
                f"(the class, not an instance), got {base_optimizer!r}"
            )
        if ascent_loss is not None and not callable(ascent_loss):
            raise TypeError(f"ascent_loss must be None or a callable (logits, targets), got {ascent_loss!r}")
        defaults = dict(rho=rho, adaptive=adaptive, eta=eta, alpha=alpha, adaptive_form=adaptive_form)
        _check_group(defaults)
        _check_finite(base_kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = compat.base_optimizer_or_explain(self, base_optimizer, self.param_groups, base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.ascent_loss = ascent_loss
        self.direction, self.correction = rules.check_parts(direction, correction, ascent_loss)
        self.perturb_every, self.perturb_from = schedule.check(perturb_every, perturb_from)
        self._steps_taken = 0
        self._perturbed: list[tuple[Tensor, Tensor]] | None = None  # (param, original storage)
        self._ascent_grads: list[list[tuple[Tensor, Tensor]]] | None = None  # (param, h), GSAM
        self._skip = False  # between first_step and second_step: this step is being skipped
        self._last_skipped = False  # what the public .skipped reports
        # update=False calls of perturbed_step since the last update: examples counted into
        # .grad and whether one of them was skipped. zero_grad() clears it.
        self._accumulated = {"examples": 0, "skipped": False}

    # -- torch.optim citizenship ------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to the wrapper and the base optimizer (family defaults filled in)."""
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            super().add_param_group(param_group)
            _check_group(self.param_groups[-1])
            return
        for key in _FAMILY_KEYS:
            param_group.setdefault(key, self.defaults[key])
        _check_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        """The base optimizer's ``state_dict`` plus the step counter of the §9 schedules.

        Between ``update=False`` calls of :func:`perturbed_step` it also holds the pending
        accumulation (``"accumulation"``: examples counted, whether one was skipped).
        """
        state = schedule.save(super().state_dict(), self._steps_taken)
        if self._accumulated["examples"]:
            state["accumulation"] = {k: self._accumulated[k] for k in ("examples", "skipped")}
        return state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients, and forget :func:`perturbed_step`'s pending accumulation."""
        super().zero_grad(set_to_none=set_to_none)
        self._accumulated = {"examples": 0, "skipped": False}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a :meth:`state_dict` (base state, and per-group ``rho``, ``alpha``, ...).

        A state_dict of the popular PyTorch SAM loads with a ``UserWarning``: it has no
        base-optimizer state (momentum restarts from zero) and its weight copies are dropped.
        """
        state_dict, self._steps_taken = schedule.load(state_dict)
        accumulated = state_dict.pop("accumulation", {"examples": 0, "skipped": False})
        state_dict = compat.from_peer_state_dict(self, state_dict)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._accumulated = {"examples": int(accumulated["examples"]), "skipped": bool(accumulated["skipped"])}

    # -- the mechanism ----------------------------------------------------------------

    @property
    def skipped(self) -> bool:
        """True if the last step (``first_step``/``second_step``, ``step`` or
        :func:`perturbed_step`) found a NaN/Inf gradient and took no base step."""
        return self._last_skipped

    @property
    def is_perturbed(self) -> bool:
        """True between :meth:`first_step` and :meth:`restore` / :meth:`second_step`."""
        return self._perturbed is not None

    def _with_grads(self) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        params, grads = [], []
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            for p in ps:
                if p.grad.is_sparse:
                    raise RuntimeError("SAM-family optimizers do not support sparse gradients")
            params.append(ps)
            grads.append([p.grad for p in ps])
        return params, grads

    def _form(self) -> str:
        forms = {g["adaptive_form"] for g in self.param_groups if g["adaptive"]}
        if len(forms) > 1:
            raise ValueError(f"Invalid adaptive_form: groups mix {sorted(forms)}; use one form")
        return forms.pop() if forms else "original"

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """Perturb: ``w ← w + ε`` from the ascent gradients now in ``.grad``.

        Parameters without ``.grad`` are not perturbed. A zero gradient gives ``ε = 0``.
        A NaN or Inf gradient leaves the weights unperturbed and marks the step to be
        skipped: :meth:`second_step` then takes no base step (the weights stay as they are).

        ``scaler``: the ``torch.amp.GradScaler`` whose ``scaler.scale(loss).backward()``
        filled ``.grad``. The ascent gradient in ``.grad`` is divided by its scale in place,
        before the norm (exact for the scaler's power-of-two scales; the scaler's own
        ``unscale_``, allowed once per update, is left for the descent); pass the same
        scaler to :meth:`second_step`.
        """
        if self._perturbed is not None:
            raise RuntimeError("first_step() called twice: call second_step() or restore() first")
        params, grads = self._with_grads()
        flat = [p for ps in params for p in ps]
        self._skip = self._last_skipped = False
        self._perturbed = []
        self._h_scale = None
        if not flat:
            return
        scale = compat.scaler_scale(scaler)
        if scale is not None:
            compat.unscale_ascent_([h for hs in grads for h in hs], scale)
            self._h_scale = scale  # GSAM's saved h is in true units, .grad of g_p scaled
        device = flat[0].device
        groups = self.param_groups
        keep_h = any(g["alpha"] for g in groups) or self.correction is not None
        with _autocast_off(device):
            if self.direction is not None:
                weights = self.direction.perturbed_weights(self, params, grads)
            else:
                weights, _ = perturbed_weights(
                    params, grads,
                    rho=[g["rho"] for g in groups], adaptive=[g["adaptive"] for g in groups],
                    eta=[g["eta"] for g in groups], form=self._form(),
                    # .grad is released below: build w + ε in its storage (no allocation),
                    # unless h must outlive this call (GSAM and the correction parts keep it).
                    into_grads=zero_grad and not keep_h,
                )
        if weights is None:
            self._skip = self._last_skipped = True
            return
        if keep_h:
            # GSAM needs h after the descent backward: keep the gradient tensors
            # themselves (no copy) when .grad is about to be released anyway.
            self._ascent_grads = [
                [(p, h if zero_grad else h.clone()) for p, h in zip(ps, hs)]
                for ps, hs in zip(params, grads)
            ]
        for ps, ws in zip(params, weights):
            for p, new in zip(ps, ws):
                self._perturbed.append((p, p.data))
                p.data = new  # swap storages: the original stays intact for restore()
        _clear_autocast_cache(device)
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the exact weights ``w`` saved by :meth:`first_step`; nothing else.

        Use it to measure at ``w + ε`` without taking a step. Drops GSAM's saved ``h``.
        """
        if self._perturbed is None:
            raise RuntimeError("restore() without a preceding first_step()")
        for p, original in self._perturbed:
            p.data = original
        if self._perturbed:
            _clear_autocast_cache(self._perturbed[0][0].device)
        self._perturbed = None
        self._ascent_grads = None

    @torch.no_grad()
    def unperturb(self) -> bool:
        """Restore ``w`` and apply GSAM's correction to the descent gradient in ``.grad``.

        The first half of :meth:`second_step`; :func:`perturbed_step` calls it once per
        micro-batch before averaging. Returns False if the step must be skipped
        (non-finite ascent gradient).
        """
        ascent = self._ascent_grads
        self.restore()
        if self._skip:
            return False
        if ascent is not None:
            descent, asc = [], []
            for saved in ascent:
                pairs = [(p.grad, h) for p, h in saved if p.grad is not None]
                descent.append([g for g, _ in pairs])
                asc.append([h for _, h in pairs])
            flat = [t for ts in descent for t in ts]
            if flat and self._h_scale is not None:
                torch._foreach_mul_([h for hs in asc for h in hs], self._h_scale)
            if flat:
                with _autocast_off(flat[0].device):
                    if any(g["alpha"] for g in self.param_groups):
                        gsam_correct_(descent, asc, [g["alpha"] for g in self.param_groups])
                    if self.correction is not None:
                        self.correction.correct_(self, descent, asc)
        return True

    def _mark_stepped(self) -> None:
        # The one place the package writes a private torch attribute: LR schedulers read
        # ``_opt_called`` (set by the wrapped .step, which the two-step API and a skipped
        # step never call) to warn "lr_scheduler.step() before optimizer.step()". torch has
        # no public way to say "stepped", and a skipped step still counts as one.
        self._opt_called = True
        self._steps_taken += 1

    @property
    def steps_taken(self) -> int:
        """Steps taken so far (perturbed, plain or skipped); checkpointed in ``state_dict``."""
        return self._steps_taken

    def should_perturb(self) -> bool:
        """Whether the next step perturbs, by ``perturb_every`` and ``perturb_from`` (§9).

        :meth:`step` and :func:`perturbed_step` ask it themselves. In the two-step API ask
        it before the first backward::

            if opt.should_perturb():
                loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
                loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)
            else:
                loss_fn(model(x), y).backward(); opt.base_step(zero_grad=True)
        """
        return schedule.decide(self.steps_taken, self.perturb_every, self.perturb_from)

    @torch.no_grad()
    def reuse_on_plain_step(self) -> None:
        """Let the correction part edit ``.grad`` before a plain step (LookSAM's reuse, §10).

        :meth:`base_step` and :func:`perturbed_step` call it; nothing happens without a
        correction part that defines ``plain_step_(opt)``.
        """
        reuse = getattr(self.correction, "plain_step_", None)
        if reuse is not None:
            reuse(self)

    @torch.no_grad()
    def base_step(self, zero_grad: bool = False, *, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """A plain step of the base optimizer on the gradient now in ``.grad`` (no ε).

        The non-perturbing step of the cheaper-SAM schedules; it counts as a step.
        ``scaler``: the GradScaler of the backward (``scaler.step`` and ``update`` run here).
        """
        if self._perturbed is not None:
            raise RuntimeError("base_step() while perturbed: call second_step() or restore() first")
        self.reuse_on_plain_step()
        if compat.scaler_scale(scaler) is not None:
            scaler.step(self.base_optimizer)
            scaler.update()
        else:
            self.base_optimizer.step()
        self._mark_stepped()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler: "torch.amp.GradScaler | None" = None) -> None:
        """Restore ``w`` exactly, apply GSAM's correction, then the base optimizer's step.

        If :meth:`first_step` saw a non-finite gradient, or the descent gradient is
        non-finite, no base step is taken and a ``RuntimeWarning`` says so; the weights are
        left as they were and :attr:`skipped` is True.

        ``scaler``: the GradScaler of the two backward passes (the same one given to
        :meth:`first_step`). The descent gradient is unscaled (``scaler.unscale_`` on
        ``base_optimizer``, unless you already called it there, e.g. to clip), then
        ``scaler.step(base_optimizer)`` and ``scaler.update()`` run here: an overflow in
        either pass skips the base step with ``w`` restored and backs off the scale, silently,
        as in any fp16 step.
        """
        if self._perturbed is None:
            raise RuntimeError("second_step() without a preceding first_step()")
        if compat.scaler_scale(scaler) is not None:
            self._scaled_second_step(scaler)
        elif not self.unperturb():
            warn_skipped("ascent", stacklevel=2)
        elif not grads_finite(self._descent_grads()):
            self._last_skipped = True
            warn_skipped("descent", stacklevel=2)
        else:
            self.base_optimizer.step()
        self._skip = False
        self._mark_stepped()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def _descent_grads(self) -> list[Tensor]:
        return [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _scaled_second_step(self, scaler: "torch.amp.GradScaler") -> None:
        if self._skip:
            self.restore()
            compat.report_overflow(scaler, self.base_optimizer)
            return
        try:
            compat.unscale_descent_(scaler, self, self.base_optimizer)
        except BaseException:
            self.restore()  # never leave w + ε behind
            raise
        self._h_scale = None  # g_p now in true units, like the saved h
        self.unperturb()
        # The overflow is read off the unscaled gradient itself: a drop of the scale says
        # nothing when backoff_factor=1. scaler.step skips on the same finding.
        self._last_skipped = not grads_finite(self._descent_grads())
        scaler.step(self.base_optimizer)
        scaler.update()

    def step(self, closure: Callable[..., Tensor] | None = None, *,  # type: ignore[override]
             scaler: "torch.amp.GradScaler | None" = None) -> Tensor:
        """One full step with the standard torch closure; returns the first (unperturbed) loss.

        The closure zeroes the gradients, runs forward and backward of the training loss
        and returns the loss. It is called twice, at ``w`` and at ``w + ε``; no backward
        is needed before ``step`` (gradients found there are warned about once: that is the
        popular SAM's style, and the backward is wasted).

        With an ascent objective (OBF, GSAM-OBF, ASAM-OBF) the first call must
        backpropagate the ascent objective. Compute the loss with
        :class:`~forgetting_sam.AscentLoss` and the closure needs nothing else: the first
        call runs inside :func:`~forgetting_sam.optim.ascent_pass`, where it returns the
        objective's gradient (with the training loss's value). The same closure serves SGD
        and every member::

            criterion = forgetting_sam.AscentLoss(F.cross_entropy)

            def closure():
                opt.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                return loss

        A closure that calls no AscentLoss raises a ``RuntimeError`` with OBF (it would
        ascend the training loss). ``scaler``: a ``torch.amp.GradScaler``; the closure
        backpropagates ``scaler.scale(loss)``, and ``step`` unscales, skips on overflow in
        either pass (``w`` restored) and updates the scale (see :meth:`second_step`).

        The older contract still works: a closure that accepts ``ascent_loss`` is called
        with the objective (``None`` for SAM, GSAM, ASAM) and backpropagates it when given::

            def closure(ascent_loss=None):
                opt.zero_grad()
                logits = model(x)
                loss = loss_fn(logits, y)
                (ascent_loss(logits, y) if ascent_loss else loss).backward()
                return loss

        The same closure works for every family member.
        """
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure (it evaluates the loss twice); "
                "or use first_step()/second_step(), or forgetting_sam.perturbed_step()"
            )
        compat.warn_if_grads_present(self)
        if not self.should_perturb():
            with torch.enable_grad():
                loss = closure()  # outside ascent_pass: AscentLoss gives the training loss
            self.base_step(scaler=scaler)
            compat.remember_grads(self)
            return loss
        with torch.enable_grad():
            if _accepts_ascent_loss(closure):
                loss = closure(ascent_loss=self.ascent_loss)
            else:
                with ascent_pass(self):
                    loss = closure()
        self.first_step(zero_grad=True, scaler=scaler)
        try:
            if not self._skip:
                with torch.enable_grad():
                    closure()
        except BaseException:
            # An error or KeyboardInterrupt at w + ε: put w back, take no step.
            if self.is_perturbed:
                self.restore()
            self._skip = False
            raise
        self.second_step(scaler=scaler)
        compat.remember_grads(self)
        return loss


def warn_skipped(which: str, stacklevel: int = 2) -> None:
    """The ``RuntimeWarning`` of a step skipped for a NaN/Inf ``which`` ("ascent"/"descent") gradient."""
    warnings.warn(
        f"non-finite {which} gradient: the step was skipped and the weights left unchanged",
        RuntimeWarning, stacklevel=stacklevel + 1,
    )


def _accepts_ascent_loss(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "ascent_loss" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class SAM(PerturbedOptimizer):
    """Sharpness-aware minimization (Foret et al., ICLR 2021): ``ε = ρ h / ‖h‖``.

    A drop-in for the most popular PyTorch SAM (same constructor, same two-step loop)::

        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)

    ``adaptive=True`` gives ASAM's direction; ``ascent_loss=OBFLoss()`` gives SAM-OBF.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False, *,
                 eta: float = 0.0, **kwargs):
        super().__init__(params, base_optimizer, rho, adaptive=adaptive, eta=eta, **kwargs)


class ASAM(PerturbedOptimizer):
    """Adaptive SAM (Kwon et al., ICML 2021): ``ε = ρ T²h / ‖Th‖``, ``T = |w| + η``.

    ``adaptive_form="before"`` or ``"after"`` selects the OBF authors' forms (§3).
    Exclude biases and norm layers with a param group ``{"params": ..., "adaptive": False}``.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.5, *, eta: float = 0.01, **kwargs):
        kwargs.setdefault("adaptive", True)
        super().__init__(params, base_optimizer, rho, eta=eta, **kwargs)


class GSAM(PerturbedOptimizer):
    """Surrogate-gap guided SAM (Zhuang et al., ICLR 2022).

    SAM's perturbation, then ``g_p ← g_p − α (h − ⟨h, ĝ_p⟩ ĝ_p)``. The default α = 0.4 is
    the GSAM/OBF authors' ViT-S/32 setting (their ResNets use 0.01). Pair with
    :class:`ProportionalRho` for the authors' lr-proportional ρ schedule.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, alpha: float = 0.4, **kwargs):
        super().__init__(params, base_optimizer, rho, alpha=alpha, **kwargs)


class OBF(PerturbedOptimizer):
    """Output bias forgetting (Vani et al., ICML 2024): SAM's mechanism ascending :func:`obf_loss`.

    Args:
        gamma, lam, prob: the OBF objective's hyperparameters (docs/algorithms.md §5).
        adaptive / alpha (keywords): compose ASAM-OBF or GSAM-OBF.

    The two-step loop ascends ``opt.ascent_loss`` instead of the training loss::

        opt.ascent_loss(model(x), y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, gamma: float = 1.0,
                 lam: float | None = None, prob: str = "sigmoid", **kwargs):
        if "ascent_loss" in kwargs:
            raise TypeError("OBF sets ascent_loss itself; use gamma, lam and prob")
        super().__init__(params, base_optimizer, rho,
                         ascent_loss=OBFLoss(gamma=gamma, lam=lam, prob=prob), **kwargs)
