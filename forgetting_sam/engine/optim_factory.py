"""From a :class:`~forgetting_sam.engine.config.TrainConfig` to the objects a run steps with:
the training loss, the base optimizer wrapped by a SAM-family member, the lr schedule and the
ρ schedule.

Weight decay: the paper's ResNet runs use SGD with *decoupled* weight decay, which
``torch.optim.SGD`` does not offer (its ``weight_decay`` adds ``wd·w`` to the gradient: L2,
"coupled"). :class:`SGDW` applies ``w ← w − lr·wd·w`` before the SGD update, AdamW's rule.
``weight_decay_mode=coupled`` gives torch SGD's L2 (the popular PyTorch SAM's WRN runs).
Under a SAM-family wrapper the decay is part of the base step, so it acts on ``w`` (never on
``w + ε``) and never enters the ascent gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..optim import ASAM, GSAM, OBF, SAM, OBFLoss, ProportionalRho
from .config import OPTIMIZERS, WRAPPERS, ConfigError, TrainConfig

__all__ = [
    "SGDW",
    "LRSchedule",
    "SigmoidBCELoss",
    "base_optimizer_spec",
    "build_loss",
    "build_optimizer",
    "build_schedules",
]


class SGDW(torch.optim.SGD):
    """SGD (momentum, Nesterov) with decoupled weight decay: ``w ← w − lr·wd·w``, then SGD.

    The decay uses the group's current ``lr``, so it follows the lr schedule as in AdamW.
    ``weight_decay`` is kept per group (key ``decoupled_weight_decay``) so param groups may
    use different values, e.g. 0 for biases.

    Example:
        >>> opt = SGDW(model.parameters(), lr=1.6, momentum=0.9, weight_decay=1e-3)
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0, **kwargs):
        if weight_decay < 0:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (weight_decay must be >= 0)")
        self._decoupled_default = weight_decay
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=0.0,
                         nesterov=nesterov, **kwargs)
        self.defaults["decoupled_weight_decay"] = weight_decay

    def add_param_group(self, param_group: dict) -> None:
        param_group.setdefault("decoupled_weight_decay", self._decoupled_default)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd = group["decoupled_weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if wd and params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * wd)
        super().step()
        return loss


class SigmoidBCELoss(nn.Module):
    """Sigmoid binary cross-entropy on one-hot targets, summed over the K classes and averaged
    over the batch — the paper's ViT loss. ``label_smoothing`` moves the targets to
    ``(1 − s)·e_y + s/K``.

    Shapes: logits (N, K), targets (N,) int class indices or (N, K) probabilities → scalar.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        k = logits.shape[-1]
        if targets.dim() == logits.dim():
            t = targets.to(logits.dtype)
        else:
            t = F.one_hot(targets.long(), k).to(logits.dtype)
        if self.label_smoothing:
            t = t * (1.0 - self.label_smoothing) + self.label_smoothing / k
        return F.binary_cross_entropy_with_logits(logits, t, reduction="none").sum(-1).mean()


def build_loss(cfg: TrainConfig, *, for_eval: bool = False) -> nn.Module:
    """The training loss (``for_eval``: the same without label smoothing, for test numbers)."""
    smoothing = 0.0 if for_eval else cfg.label_smoothing
    if cfg.loss == "ce":
        return nn.CrossEntropyLoss(label_smoothing=smoothing)
    if cfg.loss == "bce_sigmoid":
        return SigmoidBCELoss(label_smoothing=smoothing)
    raise ConfigError(f"invalid loss: {cfg.loss!r}; valid: ce, bce_sigmoid")


def base_optimizer_spec(cfg: TrainConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The base optimizer class and its keyword arguments (lr, momentum, weight decay, ...)."""
    if cfg.optimizer == "sgd":
        kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        if cfg.nesterov and cfg.momentum == 0:
            raise ConfigError("nesterov=true needs momentum > 0")
        return (SGDW if cfg.weight_decay_mode == "decoupled" else torch.optim.SGD), kwargs
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW, dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The base optimizer, wrapped by ``cfg.wrapper`` (none, sam, asam, gsam, obf, gsam_obf,
    asam_obf). ``rho``, ``alpha`` and ``eta`` left at None take the wrapper's own defaults.

    Example:
        >>> opt = build_optimizer(make_config(overrides={"wrapper": "gsam_obf", "rho": 0.6}),
        ...                       model.parameters())
        >>> type(opt).__name__, type(opt.ascent_loss).__name__
        ('GSAM', 'OBFLoss')
    """
    base_cls, kwargs = base_optimizer_spec(cfg)
    w = cfg.wrapper
    if w == "none":
        return base_cls(params, **kwargs)
    family: dict[str, Any] = dict(perturb_every=cfg.perturb_every, perturb_from=cfg.perturb_from)
    if cfg.rho is not None:
        family["rho"] = cfg.rho
    obf_args = dict(gamma=cfg.gamma, lam=cfg.lam, prob=cfg.prob)
    if w == "sam":
        return SAM(params, base_cls, **family, **kwargs)
    if w in ("asam", "asam_obf"):
        if cfg.eta is not None:
            family["eta"] = cfg.eta
        elif cfg.asam_form != "original":
            family["eta"] = 0.0  # the OBF authors' two forms have no η (docs/algorithms.md §3)
        family["adaptive_form"] = cfg.asam_form
        if w == "asam_obf":
            family["ascent_loss"] = OBFLoss(**obf_args)
        return ASAM(params, base_cls, **family, **kwargs)
    if w in ("gsam", "gsam_obf"):
        if cfg.alpha is not None:
            family["alpha"] = cfg.alpha
        if w == "gsam_obf":
            family["ascent_loss"] = OBFLoss(**obf_args)
        return GSAM(params, base_cls, **family, **kwargs)
    if w == "obf":
        return OBF(params, base_cls, **family, **obf_args, **kwargs)
    raise ConfigError(f"unknown wrapper {w!r}; valid: {', '.join(WRAPPERS)}")


class LRSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The learning rate per optimizer step: linear warm-up, then a decay to ``lr_min``; a
    :class:`torch.optim.lr_scheduler.LambdaLR`, so it composes and checkpoints like any torch
    scheduler (``state_dict`` holds ``last_epoch``, ``base_lrs``, ...).

    ``lr_at(t)`` is the lr of optimizer step ``t`` (0-based). Warm-up rises linearly as
    ``lr·(t+1)/W`` over the first ``W`` steps; then, with ``p`` going from 0 to 1 over the
    remaining steps:

    - ``linear`` (the paper's): ``lr_min + (lr − lr_min)(1 − p)``;
    - ``cosine``: ``lr_min + (lr − lr_min)(1 + cos πp)/2``;
    - ``step`` (the popular PyTorch SAM's): ``lr × 0.2^k`` after 30, 60 and 80% of the epochs;
    - ``constant``: ``lr``.

    Each param group scales by its own initial lr (``lr_min`` in proportion). Call
    :meth:`step` after every optimizer step (skipped ones too: the schedule counts steps).

    Example:
        >>> sched = LRSchedule(opt, total_steps=1000, warmup_steps=100, lr_min=1e-4)
        >>> sched.lr_at(0), sched.lr_at(99), sched.lr_at(999)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                 kind: str = "linear", lr_min: float = 0.0, steps_per_epoch: int = 1):
        if kind not in ("linear", "cosine", "step", "constant"):
            raise ConfigError(f"Invalid lr schedule kind: {kind!r} (linear, cosine, step or constant)")
        if total_steps < 1:
            raise ConfigError(f"Invalid total_steps: {total_steps} (must be >= 1)")
        lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for name, value in [("lr_min", lr_min)] + [(f"lr of param group {i}", v) for i, v in enumerate(lrs)]:
            if not math.isfinite(float(value)):
                raise ConfigError(f"LRSchedule: {name} must be a finite number, got {value}")
        self.kind, self.total_steps, self.warmup_steps = kind, int(total_steps), int(warmup_steps)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.lr_min_ratio = lr_min / float(lrs[0]) if float(lrs[0]) > 0 else 0.0
        kind_, total_, w_, spe_, ratio_ = self.kind, self.total_steps, self.warmup_steps, self.steps_per_epoch, \
            self.lr_min_ratio

        def multiplier(t: int) -> float:  # a plain function: LambdaLR's state_dict then skips it
            return _lr_multiplier(t, kind_, total_, w_, spe_, ratio_)

        super().__init__(optimizer, multiplier)

    def factor(self, t: int) -> float:
        """The multiplier of the peak lr at step ``t``, ``lr_min`` included."""
        return _lr_multiplier(t, self.kind, self.total_steps, self.warmup_steps, self.steps_per_epoch,
                              self.lr_min_ratio)

    def lr_at(self, t: int, group: int = 0) -> float:
        """The lr of group ``group`` at optimizer step ``t``."""
        return self.base_lrs[group] * self.factor(t)


def _lr_multiplier(t: int, kind: str, total: int, w: int, steps_per_epoch: int, lr_min_ratio: float) -> float:
    if t < w:
        return (t + 1) / w
    if kind == "constant":
        return 1.0
    if kind == "step":
        epochs = total / steps_per_epoch
        epoch = t // steps_per_epoch
        return 0.2 ** sum(epoch >= epochs * f for f in (0.3, 0.6, 0.8))
    p = min(1.0, (t - w) / max(1, total - 1 - w))
    f = 1.0 - p if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return lr_min_ratio + (1.0 - lr_min_ratio) * f


def build_schedules(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
                    ) -> tuple[LRSchedule, ProportionalRho | None]:
    """The lr schedule over ``cfg.epochs × steps_per_epoch`` optimizer steps, and the ρ
    schedule (None when ρ is constant)."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if warmup >= total and cfg.warmup_epochs > 0:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs} is not shorter than epochs={cfg.epochs}; "
                          "lower --warmup-epochs (e.g. 0) or raise --epochs")
    lr_sched = LRSchedule(optimizer, total_steps=total, warmup_steps=warmup, kind=cfg.lr_schedule,
                          lr_min=cfg.lr_min, steps_per_epoch=steps_per_epoch)
    rho_sched = None
    if cfg.rho_schedule == "proportional":
        rho_max = cfg.rho if cfg.rho is not None else optimizer.param_groups[0]["rho"]
        rho_sched = ProportionalRho(optimizer, rho_max=rho_max, rho_min=cfg.rho_min,
                                    lr_max=cfg.lr, lr_min=cfg.lr_min)
    return lr_sched, rho_sched
