"""WSAM, F-SAM, Fisher SAM and LookSAM: the perturb-then-descend mechanism with a part plugged in.

Like :class:`~forgetting_sam.optim.SAM` and :class:`~forgetting_sam.optim.GSAM`, these
classes only choose defaults: each is a :class:`~forgetting_sam.optim.PerturbedOptimizer`
with one part of :mod:`forgetting_sam.optim.rules` (docs/algorithms.md §10).
"""

from __future__ import annotations

from .perturbed import PerturbedOptimizer
from .rules import FisherDirection, FriendlyDirection, LookSAMReuse, WeightedSharpness


class WSAM(PerturbedOptimizer):
    """Weighted SAM (Yue et al. 2023, arXiv 2305.15817): ``g = a g_p + (1 − a) ∇L(w)``, ``a = γ/(1−γ)``.

    SAM's ε, then :class:`~forgetting_sam.optim.rules.WeightedSharpness`. Does not take an
    ``ascent_loss`` (the correction needs the training gradient at ``w``).

    Example:
        >>> opt = WSAM(model.parameters(), torch.optim.SGD, rho=0.05, gamma=0.9, lr=0.1)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, gamma: float = 0.9, **kwargs):
        super().__init__(params, base_optimizer, rho, correction=WeightedSharpness(gamma), **kwargs)


class FriendlySAM(PerturbedOptimizer):
    """F-SAM (Li et al. CVPR 2024, arXiv 2403.12350): ascend ``h − σ m``, ``m`` an EMA of ``h``.

    :class:`~forgetting_sam.optim.rules.FriendlyDirection`; ``adaptive=True``, ``alpha``
    and ``ascent_loss=OBFLoss()`` compose with it.

    Example:
        >>> opt = FriendlySAM(model.parameters(), torch.optim.SGD, rho=0.05, sigma=1.0, lmbda=0.9, lr=0.1)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, sigma: float = 1.0,
                 lmbda: float = 0.9, **kwargs):
        super().__init__(params, base_optimizer, rho, direction=FriendlyDirection(sigma, lmbda), **kwargs)


class FisherSAM(PerturbedOptimizer):
    """Fisher SAM (Kim et al. ICML 2022, arXiv 2206.04920): ``ε = ρ f⁻¹h/√(hᵀf⁻¹h)``, ``f = 1 + η h²``.

    :class:`~forgetting_sam.optim.rules.FisherDirection` (its own ``fisher_eta``, not ASAM's
    ``eta``); ``alpha`` and ``ascent_loss=OBFLoss()`` compose with it, ``adaptive`` does not.

    Example:
        >>> opt = FisherSAM(model.parameters(), torch.optim.SGD, rho=0.05, fisher_eta=1.0, lr=0.1)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, fisher_eta: float = 1.0, **kwargs):
        super().__init__(params, base_optimizer, rho, direction=FisherDirection(fisher_eta), **kwargs)


class LookSAM(PerturbedOptimizer):
    """LookSAM (Liu et al. CVPR 2022, arXiv 2203.02714): SAM every ``k`` steps, ``g_v`` reused between.

    :class:`~forgetting_sam.optim.rules.LookSAMReuse` with ``perturb_every=k`` (§9, §10).
    ``reuse_alpha`` is the paper's α (named so to stay apart from GSAM's ``alpha``). Does
    not take an ``ascent_loss``.

    Example:
        >>> opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.05, k=5, reuse_alpha=0.7, lr=0.1)
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, *, k: int = 5, reuse_alpha: float = 0.7,
                 **kwargs):
        super().__init__(params, base_optimizer, rho, perturb_every=k, correction=LookSAMReuse(reuse_alpha),
                         **kwargs)
