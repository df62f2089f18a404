"""forgetting_sam: SAM, ASAM, GSAM and OBF for PyTorch, with landscape and forgetting tools.

The four floors, each importing only from those below it:

1. :mod:`forgetting_sam.optim` — the optimizers and :func:`perturbed_step` (torch only);
2. :mod:`forgetting_sam.landscape`, :mod:`forgetting_sam.forgetting` — measures and plots;
3. :mod:`forgetting_sam.engine` — data, models, the training loop, checkpoints, presets;
4. faces — :mod:`forgetting_sam.cli`, :mod:`forgetting_sam.widgets`, the notebooks.
"""

from .optim import (
    ASAM,
    GSAM,
    OBF,
    SAM,
    WSAM,
    AscentLoss,
    FisherSAM,
    FriendlySAM,
    LookSAM,
    OBFLoss,
    PerturbedOptimizer,
    ProportionalRho,
    StepResult,
    bn_stats_frozen,
    obf_loss,
    perturbed_step,
)

__version__ = "0.1.0"

__all__ = [
    "SAM", "ASAM", "GSAM", "OBF", "obf_loss", "OBFLoss", "AscentLoss", "perturbed_step", "StepResult",
    "PerturbedOptimizer", "ProportionalRho", "bn_stats_frozen", "WSAM", "FriendlySAM", "FisherSAM",
    "LookSAM",
]
