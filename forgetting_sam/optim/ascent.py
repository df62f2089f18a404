"""The ascent objective for closures that know nothing about it: :class:`AscentLoss`.

A family member with an ascent objective (OBF, GSAM-OBF, ASAM-OBF; docs/algorithms.md §5)
ascends ``optimizer.ascent_loss`` instead of the training loss. Trainers (Lightning,
``perturbed_step(compute_loss=...)``) call a closure or a loss function that takes no
``ascent_loss`` argument, so the objective travels through a context instead:

* :func:`ascent_pass` marks "this optimizer is evaluating its ascent pass" in a
  :class:`contextvars.ContextVar` (per thread and per asyncio task);
* :class:`AscentLoss` wraps the training loss; inside that context it backpropagates the
  optimizer's ascent objective, everywhere else it is the training loss.

The same ``training_step`` then serves SGD (nothing is ever active) and every member.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor


class _AscentFrame:
    __slots__ = ("optimizer", "called")

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.called = False


_ACTIVE: contextvars.ContextVar[_AscentFrame | None] = contextvars.ContextVar(
    "forgetting_sam_ascent_pass", default=None
)


def _ascent_objective(optimizer: Any) -> Callable[[Tensor, Tensor], Tensor] | None:
    return getattr(optimizer, "ascent_loss", None)


@contextlib.contextmanager
def ascent_pass(optimizer: Any) -> Iterator[None]:
    """Inside, every :class:`AscentLoss` call backpropagates ``optimizer``'s ascent objective.

    Used by :meth:`PerturbedOptimizer.step` around the closure's first (ascent) call and by
    :func:`perturbed_step` around ``compute_loss``'s ascent call; call it yourself only when
    you drive the two-step API through code that computes its loss with AscentLoss.

    Raises:
        RuntimeError: on a normal exit, when ``optimizer`` has an ascent objective and no
            AscentLoss was called inside: the gradient in ``.grad`` is then the training
            loss's, and the step would silently ascend the wrong objective.
    """
    frame = _AscentFrame(optimizer)
    token = _ACTIVE.set(frame)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
    ascent = _ascent_objective(optimizer)
    if ascent is not None and not frame.called:
        raise RuntimeError(
            f"{type(optimizer).__name__} ascends {ascent!r}, but the closure (or compute_loss) "
            "never called forgetting_sam.AscentLoss, so its backward was the training loss's. "
            "The closure must compute its loss with forgetting_sam.AscentLoss, e.g. "
            "criterion = forgetting_sam.AscentLoss(torch.nn.functional.cross_entropy); "
            "loss = criterion(model(x), y); or take the argument: def closure(ascent_loss=None)"
        )


class AscentLoss:
    """A training loss that becomes the optimizer's ascent objective during its ascent pass.

    Args:
        loss_fn: ``(outputs, targets) -> 0-d tensor``, the training loss (mean-reduced).

    ``criterion(outputs, targets)`` returns ``loss_fn(outputs, targets)``, except inside
    :func:`ascent_pass` of an optimizer that has an ascent objective (OBF, GSAM-OBF,
    ASAM-OBF): then the result still has the training loss's *value* (so logging and the
    closure's returned loss are unchanged) but the ascent objective's *gradient*,
    ``∂ ascent_loss(outputs, targets)`` exactly. With SAM, GSAM, ASAM or a plain torch
    optimizer it is always the training loss.

    Example:
        >>> criterion = AscentLoss(torch.nn.functional.cross_entropy)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = criterion(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> opt.step(closure)   # SGD, SAM, GSAM, OBF alike
    """

    def __init__(self, loss_fn: Callable[[Tensor, Tensor], Tensor]):
        if not callable(loss_fn):
            raise TypeError(f"AscentLoss(loss_fn): loss_fn must be a callable (outputs, targets), got {loss_fn!r}")
        self.loss_fn = loss_fn

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        loss = self.loss_fn(outputs, targets)
        frame = _ACTIVE.get()
        if frame is None:
            return loss
        frame.called = True
        ascent = _ascent_objective(frame.optimizer)
        if ascent is None:
            return loss
        objective = ascent(outputs, targets)
        # Value of the training loss, gradient of the ascent objective: ``objective -
        # objective.detach()`` is exactly 0 and its gradient exactly ∂objective.
        return (objective - objective.detach()) + loss.detach()

    def __repr__(self) -> str:
        return f"AscentLoss({self.loss_fn!r})"
