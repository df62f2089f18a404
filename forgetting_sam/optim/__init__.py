"""Floor 1: the perturb-then-descend mechanism, its parts and ``perturbed_step``.

Depends on torch alone: copy this folder into a project and nothing else comes along.
"""

from .ascent import AscentLoss, ascent_pass
from .functional import ASAM_FORMS, DELTA, global_dot, global_norm, gsam_correct_, perturbed_weights
from .objectives import OBFLoss, obf_alpha, obf_loss
from .perturbed import ASAM, GSAM, OBF, SAM, PerturbedOptimizer
from .rules import FisherDirection, FriendlyDirection, LookSAMReuse, WeightedSharpness
from .schedules import ProportionalRho
from .step import StepResult, bn_stats_frozen, perturbed_step
from .variants import WSAM, FisherSAM, FriendlySAM, LookSAM

__all__ = [
    "SAM", "ASAM", "GSAM", "OBF", "PerturbedOptimizer", "WSAM", "FriendlySAM", "FisherSAM",
    "LookSAM", "WeightedSharpness", "FriendlyDirection", "FisherDirection", "LookSAMReuse", "obf_loss", "OBFLoss", "obf_alpha",
    "AscentLoss", "ascent_pass",
    "perturbed_step", "StepResult", "bn_stats_frozen", "ProportionalRho",
    "global_norm", "global_dot", "perturbed_weights", "gsam_correct_", "DELTA", "ASAM_FORMS",
]
