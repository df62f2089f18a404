"""Schedules for ρ, which lives in each param group like ``lr`` (docs/algorithms.md §4)."""

from __future__ import annotations

import math

import torch


class ProportionalRho:
    """GSAM's lr-proportional ρ: ``ρ_t = ρ_min + (ρ_max − ρ_min)(lr_t − lr_min)/(lr_max − lr_min)``.

    Clipped at 0. Call :meth:`step` after the LR scheduler's ``step`` so ρ follows the lr
    the next step will use. Works on any optimizer whose param groups carry ``rho``.

    Args:
        optimizer: a SAM-family optimizer (its ``param_groups`` carry ``lr`` and ``rho``).
        rho_max: ρ at ``lr_max``.
        rho_min: ρ at ``lr_min``.
        lr_max: the peak lr; ``None`` takes each group's lr at construction.
        lr_min: the final lr of the schedule.

    Example:
        >>> sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.01, total_iters=100)
        >>> rho_sched = ProportionalRho(opt, rho_max=0.6, rho_min=0.0, lr_min=0.0)
        >>> for _ in range(100):
        ...     perturbed_step(...); sched.step(); rho_sched.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rho_max: float, rho_min: float = 0.0,
                 lr_max: float | None = None, lr_min: float = 0.0):
        for name, value in (("rho_max", rho_max), ("rho_min", rho_min), ("lr_min", lr_min),
                            ("lr_max", 0.0 if lr_max is None else lr_max)):
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Invalid {name}: {value} ({name} must be a finite number >= 0)")
        for group in optimizer.param_groups:
            if "rho" not in group:
                raise ValueError(
                    "ProportionalRho needs param groups with 'rho': wrap the optimizer in "
                    "SAM, ASAM, GSAM or OBF first"
                )
        self.optimizer = optimizer
        self.rho_max, self.rho_min, self.lr_min = float(rho_max), float(rho_min), float(lr_min)
        self.lr_max = [
            float(g.get("initial_lr", g["lr"]) if lr_max is None else lr_max)
            for g in optimizer.param_groups
        ]
        self.step()

    def rho_at(self, lr: float, lr_max: float) -> float:
        """ρ for a learning rate ``lr`` (float), clipped at 0."""
        if lr_max == self.lr_min:
            return self.rho_max
        frac = (float(lr) - self.lr_min) / (lr_max - self.lr_min)
        return max(0.0, self.rho_min + (self.rho_max - self.rho_min) * frac)

    def step(self) -> None:
        """Set every group's ``rho`` from its current ``lr``."""
        for group, lr_max in zip(self.optimizer.param_groups, self.lr_max):
            group["rho"] = self.rho_at(group["lr"], lr_max)

    def get_last_rho(self) -> list[float]:
        """The ρ of each param group now."""
        return [g["rho"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """Plain values only (``weights_only`` loadable)."""
        return {"rho_max": self.rho_max, "rho_min": self.rho_min, "lr_min": self.lr_min,
                "lr_max": list(self.lr_max)}

    def load_state_dict(self, state: dict) -> None:
        self.rho_max, self.rho_min = state["rho_max"], state["rho_min"]
        self.lr_min, self.lr_max = state["lr_min"], list(state["lr_max"])
