"""Output-bias views: what the model predicts on average, how sure it is, which classes it favours.

Vani et al. read SAM's perturbation as *forgetting output biases*: a model whose mean
prediction leans to some classes is pushed back towards uniform. These helpers make that lean
visible. All take logits ``(N, K)`` and use softmax probabilities; entropies are in nats.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .measures import total_variation

__all__ = [
    "OutputBiasRecorder",
    "bias_from_uniform",
    "mean_prediction",
    "per_class_bias",
    "prediction_entropy",
]


def _check_logits(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, K) with N, K ≥ 1, got {tuple(logits.shape)}")
    return logits.detach().float()


def mean_prediction(logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean softmax prediction ``p̄ = mean_i softmax(z_i)``: ``(N, K) -> (K,)``, sums to 1."""
    return F.softmax(_check_logits(logits), -1).mean(0)


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each example's softmax prediction, ``(N, K) -> (N,)``, nats in ``[0, log K]``.

    ``prediction_entropy(z).mean()`` is the average confidence; the entropy of
    ``mean_prediction(z)`` is how spread the predicted classes are (low = output bias).
    """
    logp = F.log_softmax(_check_logits(logits), -1)
    return -(logp.exp() * logp).sum(-1)


def per_class_bias(logits: torch.Tensor) -> torch.Tensor:
    """Per-class logit bias: each class's mean logit minus the mean over all logits.

    ``(N, K) -> (K,)``, in logit units, sums to 0. Positive = the model pushes that class up on
    every input. Softmax ignores a constant shift per example, so this is the part of the
    logits that does bias the predictions.

    >>> per_class_bias(torch.tensor([[2.0, 0.0], [2.0, 0.0]]))
    tensor([ 1., -1.])
    """
    z = _check_logits(logits)
    return z.mean(0) - z.mean()


def bias_from_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Total-variation distance of :func:`mean_prediction` from uniform, 0-d, in ``[0, 1 − 1/K]``.

    The same number as ``perturbed_forgetting(...)["bias_uniform"]``.
    """
    p = mean_prediction(logits)
    return total_variation(p, torch.full_like(p, 1.0 / p.numel()))


class OutputBiasRecorder:
    """The mean predicted distribution over training, and what it says about output bias.

    Feed it logits every step; every ``every`` updates it files one row: the mean prediction
    ``p̄`` over the examples since the last row (weighted by batch size), the mean per-example
    entropy, the entropy of ``p̄``, its total-variation distance from uniform, and the per-class
    logit bias. State stays on the logits' device until :meth:`history` is read (no syncs).

    Args:
        num_classes: ``K``.
        every: updates per recorded row (1 = every step; e.g. steps per epoch for epochs).

    Example:
        >>> rec = OutputBiasRecorder(10, every=len(loader))
        >>> for x, y in loader:
        ...     res = perturbed_step(model, opt, x, y, F.cross_entropy)
        ...     rec.update(res.logits)
        >>> h = rec.history()          # h["mean_prediction"]: (T, 10) numpy
        >>> plot_output_bias(rec)
    """

    def __init__(self, num_classes: int, every: int = 1):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Invalid num_classes: {num_classes!r}; use the number of classes (≥ 2)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Invalid every: {every!r}; use a positive number of updates per row")
        self.num_classes = num_classes
        self.every = every
        self.updates = 0
        self._reset()
        self._rows: list[tuple[int, int, torch.Tensor]] = []  # (step, n, packed stats)

    def _reset(self):
        self._n = 0
        self._sum_p = None
        self._sum_z = None
        self._sum_h = None

    def update(self, logits: torch.Tensor) -> None:
        """Accumulate one batch of logits ``(N, K)``."""
        z = _check_logits(logits)
        if z.shape[1] != self.num_classes:
            raise ValueError(f"logits have {z.shape[1]} classes but the recorder was built for {self.num_classes}")
        logp = z - z.logsumexp(-1, keepdim=True)  # log_softmax, cheaper on CPU for small K
        p = logp.exp()
        sp, sz, sh = p.sum(0), z.sum(0), -(p * logp).sum()
        if self._sum_p is None:
            self._sum_p, self._sum_z, self._sum_h = sp, sz, sh
        else:
            self._sum_p, self._sum_z, self._sum_h = self._sum_p + sp, self._sum_z + sz, self._sum_h + sh
        self._n += z.shape[0]
        self.updates += 1
        if self.updates % self.every == 0:
            self.flush()

    def flush(self) -> None:
        """File a row for whatever was accumulated since the last one (no-op if nothing)."""
        if self._n == 0:
            return
        n, k = self._n, self.num_classes
        p = self._sum_p / n
        zbar = self._sum_z / n
        bias = zbar - zbar.mean()
        ent_mean = self._sum_h / n
        ent_of_mean = -(p * p.clamp_min(1e-30).log()).sum()
        tv = total_variation(p, torch.full_like(p, 1.0 / k))
        packed = torch.cat([p, bias, torch.stack([ent_mean, ent_of_mean, tv])])
        self._rows.append((self.updates, n, packed))
        self._reset()

    def history(self) -> dict[str, Any]:
        """Recorded rows as numpy arrays (``T`` rows):

        ``step`` (update count at the row), ``examples`` (per row), ``mean_prediction``
        ``(T, K)``, ``per_class_bias`` ``(T, K)`` logits, ``entropy`` (mean per-example, nats),
        ``entropy_of_mean`` (nats), ``bias_uniform`` (TV distance from uniform), and
        ``max_entropy`` = ``log K``.
        """
        import numpy as np

        k = self.num_classes
        if not self._rows:
            z = np.zeros(0)
            return {"step": z, "examples": z, "mean_prediction": np.zeros((0, k)),
                    "per_class_bias": np.zeros((0, k)), "entropy": z, "entropy_of_mean": z,
                    "bias_uniform": z, "max_entropy": math.log(k)}
        packed = torch.stack([r[2] for r in self._rows]).cpu().numpy()
        return {
            "step": np.array([r[0] for r in self._rows]),
            "examples": np.array([r[1] for r in self._rows]),
            "mean_prediction": packed[:, :k],
            "per_class_bias": packed[:, k:2 * k],
            "entropy": packed[:, 2 * k],
            "entropy_of_mean": packed[:, 2 * k + 1],
            "bias_uniform": packed[:, 2 * k + 2],
            "max_entropy": math.log(k),
        }
