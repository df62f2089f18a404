"""Small float64 models, batches and family members shared by the closure, scaler,
migration and batch-shape tests of the optimizers."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from forgetting_sam import ASAM, GSAM, OBF, SAM, OBFLoss

MEMBERS = {
    "sgd": lambda p, **kw: torch.optim.SGD(p, **kw),
    "sam": lambda p, **kw: SAM(p, torch.optim.SGD, rho=0.3, **kw),
    "asam": lambda p, **kw: ASAM(p, torch.optim.SGD, rho=0.5, eta=0.01, **kw),
    "gsam": lambda p, **kw: GSAM(p, torch.optim.SGD, rho=0.2, alpha=0.4, **kw),
    "obf": lambda p, **kw: OBF(p, torch.optim.SGD, rho=0.3, **kw),
    "gsam_obf": lambda p, **kw: GSAM(p, torch.optim.SGD, rho=0.2, alpha=1.0,
                                     ascent_loss=OBFLoss(gamma=1.0), **kw),
    "asam_obf": lambda p, **kw: ASAM(p, torch.optim.SGD, rho=0.5, eta=0.0,
                                     ascent_loss=OBFLoss(gamma=0.5), **kw),
}
FAMILY = [name for name in MEMBERS if name != "sgd"]


def mlp(seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).to(dtype)


def batches(k: int = 3, n: int = 8, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g))
            for _ in range(k)]


def build(name: str, model: nn.Module, **kw):
    kw.setdefault("lr", 0.1)
    kw.setdefault("momentum", 0.9)
    return MEMBERS[name](model.parameters(), **kw)


class Overflows:
    """Forward hook on the last layer: Inf outputs on the planned ``(step, forward)`` calls.

    Call :meth:`next_step` before each step; forwards are counted from 1 within a step, so
    ``(1, 1)`` is step 1's ascent pass and ``(2, 2)`` step 2's descent pass.
    """

    def __init__(self, model: nn.Sequential, plan: set[tuple[int, int]]):
        self.plan, self.step, self.calls = plan, -1, 0
        self.handle = model[-1].register_forward_hook(self._hook)

    def next_step(self) -> None:
        self.step, self.calls = self.step + 1, 0

    def _hook(self, module, inputs, output):
        self.calls += 1
        return output * math.inf if (self.step, self.calls) in self.plan else output


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(((p - q).abs().max() / q.abs().max()).item() for p, q in zip(a.parameters(), b.parameters()))
