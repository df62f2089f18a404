"""Shared by the integration tests: the family members and the package's own two-step loop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from forgetting_sam import GSAM, OBF, SAM, bn_stats_frozen

# One of each kind of step: SAM's ε, GSAM's correction, OBF's ascent objective.
FAMILY: dict[str, Callable] = {
    "sam": lambda p: SAM(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
    "gsam": lambda p: GSAM(p, torch.optim.SGD, rho=0.05, alpha=0.4, lr=0.1, momentum=0.9),
    "obf": lambda p: OBF(p, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
}


def two_step_reference(model, opt, windows, forward, loss_fn=F.cross_entropy) -> None:
    """The package's two-step API on windows of micro-batches, written out by hand.

    ``forward(model, batch) -> (logits, targets)``. Each micro-batch gets its own ε; a window
    of k micro-batches steps the base optimizer once with the mean of their descent gradients
    (a window of one is plain ``first_step``/``second_step``).
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    for window in windows:
        total: dict[torch.Tensor, torch.Tensor] = {}
        for batch in window:
            logits, y = forward(model, batch)
            ascent = opt.ascent_loss(logits, y) if opt.ascent_loss is not None else loss_fn(logits, y)
            ascent.backward()
            opt.first_step(zero_grad=True)
            with bn_stats_frozen(model):
                logits, y = forward(model, batch)
                loss_fn(logits, y).backward()
            if len(window) == 1:
                opt.second_step(zero_grad=True)
                continue
            opt.unperturb()
            for p in params:
                if p.grad is not None:
                    total[p] = total.get(p, 0) + p.grad / len(window)
                    p.grad = None
        if total:
            for p, g in total.items():
                p.grad = g
            opt.base_optimizer.step()
            opt.zero_grad(set_to_none=True)


def max_weight_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between two models' parameters (same architecture)."""
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# Appended to every two-replica script: close the process group explicitly, since gloo's
# threads left to the interpreter's exit can abort the process ("terminate called without an
# active exception") after all work is done.
_CLOSE_GROUP = """
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def run_two_replicas(script: str, tmp_path: Path, *, torchrun: bool = True, timeout: int = 300) -> None:
    """Run ``script`` (Python source) on two gloo replicas: under ``torchrun``, or as a plain
    process for a framework that launches its own second process (Lightning). Fails the test
    with the end of stderr when it does not exit 0."""
    path = tmp_path / "ddp_run.py"
    path.write_text(textwrap.dedent(script) + _CLOSE_GROUP)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"] if torchrun else [sys.executable]
    proc = subprocess.run([*launch, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def replica_models(make: Callable[[], torch.nn.Module], tmp_path: Path, stem: str) -> list[torch.nn.Module]:
    """The models ``make()`` loaded from ``{stem}_rank0.pt`` and ``{stem}_rank1.pt``, checked
    to be identical (a DDP step must leave the replicas equal)."""
    models = []
    for r in range(2):
        model = make()
        model.load_state_dict(torch.load(tmp_path / f"{stem}_rank{r}.pt"))
        models.append(model)
    assert max_weight_diff(models[0], models[1]) == 0.0, f"{stem}: the replicas diverged"
    return models
