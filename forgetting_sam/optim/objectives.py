"""Ascent objectives: what the perturbation climbs (docs/algorithms.md §1 step 1, §5).

SAM, ASAM and GSAM climb the training loss (``ascent_loss=None``). OBF climbs the
output-bias-forgetting objective :func:`obf_loss`, which raises the true label's loss
and pulls the outputs towards uniform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PROBS = ("sigmoid", "softmax")


def check_obf_args(gamma: float, lam: float | None, prob: str) -> None:
    """Raise ``ValueError`` naming the argument if an OBF hyperparameter is out of range."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"Invalid gamma: {gamma} (gamma must be in [0, 1])")
    if lam is not None and not 0.0 <= lam < 1.0:
        raise ValueError(f"Invalid lam: {lam} (lam must be in [0, 1), or None for 1/K)")
    if prob not in PROBS:
        raise ValueError(f"Invalid prob: {prob!r} (allowed: 'sigmoid', 'softmax')")


def obf_alpha(p_true: Tensor, gamma: float, lam: float) -> Tensor:
    """OBF's per-example weight ``α = γ · max(0, (1 − λ / p_y) / (1 − λ))``, no gradient.

    Args:
        p_true: (N,) predicted probability of the true class.
    Returns:
        (N,) weights in [0, γ].
    """
    p_true = p_true.detach()
    if lam == 0.0:
        # λ = 0 gives α = γ exactly; computing 0/p_y would turn p_y = 0 into NaN.
        return torch.full_like(p_true, gamma)
    return gamma * torch.clamp((1.0 - lam / p_true) / (1.0 - lam), min=0.0)


def obf_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    gamma: float = 1.0,
    lam: float | None = None,
    prob: str = "sigmoid",
) -> Tensor:
    """The OBF ascent objective ``(1 − α) · CE(p, e_y) − CE(p, u)``, mean over the batch.

    Its gradient with respect to the logits is ``(u − α·p − (1 − α)·e_y) / N``, so
    ascending it (``backward`` then ``first_step``) is the OBF perturbation (§5).

    Args:
        logits: (N, K) raw outputs, any float dtype (computed in float32 or float64).
        targets: (N,) integer class labels in [0, K).
        gamma: γ in [0, 1]; 1e-12 makes the direction ``u − e_y`` (labels only).
        lam: λ in [0, 1); ``None`` means ``1/K``.
        prob: ``"sigmoid"`` (binary CE summed over the K outputs, the authors' default) or
            ``"softmax"`` (categorical CE).
    Returns:
        0-d tensor.

    Example:
        >>> logits = torch.zeros(2, 4, requires_grad=True)
        >>> obf_loss(logits, torch.tensor([0, 3])).backward()
    """
    check_obf_args(gamma, lam, prob)
    if logits.dim() != 2:
        raise ValueError(f"obf_loss expects logits of shape (N, K), got {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0] or targets.is_floating_point():
        raise ValueError(
            "obf_loss expects integer class targets of shape (N,) matching the logits' N="
            f"{logits.shape[0]}, got {tuple(targets.shape)} {targets.dtype}"
        )
    z = logits if logits.dtype == torch.float64 else logits.float()
    k = z.shape[1]
    lam = 1.0 / k if lam is None else lam
    onehot = F.one_hot(targets, k).to(z.dtype)
    uniform = torch.full_like(z, 1.0 / k)
    if prob == "sigmoid":
        p = torch.sigmoid(z)
        ce_true = F.binary_cross_entropy_with_logits(z, onehot, reduction="none").sum(1)
        ce_uniform = F.binary_cross_entropy_with_logits(z, uniform, reduction="none").sum(1)
    else:
        log_p = F.log_softmax(z, dim=1)
        p = log_p.exp()
        ce_true = -(onehot * log_p).sum(1)
        ce_uniform = -(uniform * log_p).sum(1)
    alpha = obf_alpha(p.gather(1, targets[:, None]).squeeze(1), gamma, lam)
    return ((1.0 - alpha) * ce_true - ce_uniform).mean()


class OBFLoss:
    """The OBF objective as a callable ``(logits, targets) -> scalar``, to use as ``ascent_loss``.

    Composes OBF with any family member, e.g. GSAM-OBF:
    ``GSAM(params, torch.optim.SGD, alpha=0.4, ascent_loss=OBFLoss(gamma=1.0), lr=0.1)``.
    """

    def __init__(self, gamma: float = 1.0, lam: float | None = None, prob: str = "sigmoid"):
        check_obf_args(gamma, lam, prob)
        self.gamma, self.lam, self.prob = gamma, lam, prob

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return obf_loss(logits, targets, gamma=self.gamma, lam=self.lam, prob=self.prob)

    def __repr__(self) -> str:
        return f"OBFLoss(gamma={self.gamma}, lam={self.lam}, prob={self.prob!r})"
