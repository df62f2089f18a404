"""Directions in weight space: random (filter-normalized), between two models, eigenvectors.

A :class:`Direction` maps parameter names to tensors shaped like the parameters (and,
optionally, like the BatchNorm running statistics). A :class:`Plane` is two of them. Both
can be saved and loaded, so the same plane is drawn for every model being compared::

    plane = random_plane(model_sgd, seed=0)          # filter-normalized to model_sgd
    plane.save("plane.pt")
    plane = Plane.load("plane.pt")                   # later, or in another notebook

Normalization (docs/algorithms.md §8; Li et al., NeurIPS 2018) is relative to the weights of the
model the direction is drawn for:

* ``"filter"`` (default): per output row ``f`` of each tensor with ≥ 2 dims, ``‖d_f‖ = ‖w_f‖``;
* ``"layer"``: per tensor, ``‖d‖ = ‖w‖``;
* ``"weight"``: elementwise, ``d ← d ⊙ |w|``;
* ``None``: the raw standard Gaussian.

1-D tensors (biases, norm-layer scales, BatchNorm statistics) are zeroed unless
``include_1d=True``; then each element counts as its own filter (``|d_i| = |w_i|``, random
sign) under ``"filter"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._common import float_buffers, trainable_named_parameters

NORMS = ("filter", "layer", "weight", None)
_FORMAT = "forgetting_sam.landscape.direction/1"
_EPS = 1e-10


class Direction(Mapping):
    """A direction in weight space: an ordered mapping ``name -> tensor``.

    Args:
        tensors: parameter (and optionally buffer) name to tensor, each shaped like the
            model's tensor of that name.
        buffers: the names among ``tensors`` that are buffers (BatchNorm statistics),
            not parameters.

    Supports ``d[name]``, iteration over names, ``len``, ``a + b``, ``c * d``, ``d.norm()``,
    ``a.dot(b)``, ``d.to(device)``, :meth:`save` and :meth:`load`.
    """

    def __init__(self, tensors: Mapping[str, Tensor], buffers=()):
        self._tensors = {str(k): v for k, v in tensors.items()}
        for k, v in self._tensors.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"direction entry {k!r} must be a tensor, got {type(v).__name__}")
        self.buffers = tuple(b for b in buffers)
        missing = [b for b in self.buffers if b not in self._tensors]
        if missing:
            raise ValueError(f"buffers {missing} are not entries of the direction")

    # Mapping protocol
    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self._tensors.values())
        return f"Direction({len(self)} tensors, {n} numbers, norm={float(self.norm()):.4g})"

    @property
    def parameter_names(self) -> list[str]:
        return [k for k in self._tensors if k not in self.buffers]

    def _binary(self, other: Direction, op) -> Direction:
        if not isinstance(other, Direction):
            return NotImplemented
        if list(self) != list(other):
            raise ValueError("directions have different tensor names; they must match to be combined")
        return Direction({k: op(self[k], other[k]) for k in self}, self.buffers)

    def __add__(self, other):
        return self._binary(other, torch.add)

    def __sub__(self, other):
        return self._binary(other, torch.sub)

    def __mul__(self, scalar):
        if isinstance(scalar, Direction):
            return NotImplemented
        return Direction({k: v * scalar for k, v in self.items()}, self.buffers)

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def dot(self, other: Direction) -> Tensor:
        """Global inner product ``⟨self, other⟩`` (0-d tensor, float64)."""
        if list(self) != list(other):
            raise ValueError("directions have different tensor names; they must match for dot()")
        return sum(
            (torch.vdot(self[k].reshape(-1).double(), other[k].reshape(-1).double()) for k in self),
            torch.zeros((), dtype=torch.float64),
        )

    def norm(self) -> Tensor:
        """Global L2 norm over all tensors (0-d tensor, float64)."""
        return self.dot(self).sqrt()

    def to(self, *args, **kwargs) -> Direction:
        return Direction({k: v.to(*args, **kwargs) for k, v in self.items()}, self.buffers)

    def state_dict(self) -> dict:
        """Plain tensors and strings only, so ``torch.load(..., weights_only=True)`` reads it."""
        return {
            "format": _FORMAT,
            "names": list(self),
            "tensors": [v.detach().cpu() for v in self._tensors.values()],
            "buffers": list(self.buffers),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping) -> Direction:
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            raise ValueError("not a saved Direction (missing the 'format' marker); use Direction.save")
        return cls(dict(zip(state["names"], state["tensors"])), state["buffers"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the direction with ``torch.save`` (plain tensors; see :meth:`load`)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> Direction:
        """Read a direction written by :meth:`save` (``weights_only=True``: no code runs)."""
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` naming the first tensor whose name or shape differs from ``model``."""
        check_compatible(model, self)


class Plane(NamedTuple):
    """Two directions spanning a plane: ``x`` (first axis, α) and ``y`` (second axis, β)."""

    x: Direction
    y: Direction

    def save(self, path: str | os.PathLike) -> None:
        """Write both directions to one file (plain tensors, ``weights_only``-loadable)."""
        torch.save({"format": _FORMAT + "/plane", "x": self.x.state_dict(), "y": self.y.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> Plane:
        """Read a plane written by :meth:`save`."""
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT + "/plane":
            raise ValueError(f"{os.fspath(path)!r} is not a saved Plane; use Plane.save")
        return cls(Direction.from_state_dict(state["x"]), Direction.from_state_dict(state["y"]))

    def check(self, model: nn.Module) -> None:
        check_compatible(model, self.x)
        check_compatible(model, self.y)


def direction_targets(model: nn.Module, buffers: bool) -> list[tuple[str, Tensor]]:
    """The model tensors a direction covers: trainable parameters, then BN statistics."""
    named = trainable_named_parameters(model)
    return named + (float_buffers(model) if buffers else [])


def check_compatible(model: nn.Module, direction: Direction) -> None:
    """Check ``direction`` has exactly the model's trainable tensors, with matching shapes.

    Raises ``ValueError`` naming the offending tensor, e.g. ``"direction tensor 'fc.weight'
    has shape (3, 4) but the model's is (4, 4)"``.
    """
    if not isinstance(direction, Direction):
        raise TypeError(f"direction must be a Direction, got {type(direction).__name__}")
    targets = dict(direction_targets(model, buffers=bool(direction.buffers)))
    for name, t in targets.items():
        if name not in direction:
            kind = "buffer" if name in dict(float_buffers(model)) else "trainable parameter"
            raise ValueError(
                f"direction has no tensor for the model's {kind} {name!r}; draw the direction "
                "for this architecture (and with the same buffers= setting)"
            )
        if tuple(direction[name].shape) != tuple(t.shape):
            raise ValueError(
                f"direction tensor {name!r} has shape {tuple(direction[name].shape)} "
                f"but the model's is {tuple(t.shape)}"
            )
    for name in direction:
        if name not in targets:
            raise ValueError(
                f"direction tensor {name!r} is not a trainable parameter (or BN buffer) of the model; "
                "was the direction drawn for another architecture, or were parameters frozen?"
            )


def normalize_direction(direction: Direction, model: nn.Module, norm: str | None = "filter", *,
                        include_1d: bool = False) -> Direction:
    """Rescale ``direction`` to the weights of ``model`` (see the module docstring).

    Returns a new :class:`Direction`; ``direction`` is not modified.

    Example:
        >>> d = normalize_direction(raw, model, "filter")   # per-row norms equal the weights'
    """
    if norm not in NORMS:
        raise ValueError(f"Invalid norm: {norm!r} (allowed: 'filter', 'layer', 'weight' or None)")
    check_compatible(model, direction)
    weights = dict(direction_targets(model, buffers=bool(direction.buffers)))
    out = {}
    for name, d in direction.items():
        w = weights[name].detach().to(d.dtype)
        if w.dim() <= 1 and not include_1d:
            out[name] = torch.zeros_like(d)
        elif norm is None:
            out[name] = d.clone()
        elif norm == "weight":
            out[name] = d * w.abs()
        elif norm == "layer":
            out[name] = d * (torch.linalg.vector_norm(w) / (torch.linalg.vector_norm(d) + _EPS))
        else:
            # One filter per output row (dim 0); a 0-d or 1-D tensor has one number per row.
            rows_w = w.reshape(w.shape[0], -1) if w.dim() else w.reshape(1, 1)
            rows_d = d.reshape(rows_w.shape)
            scale = torch.linalg.vector_norm(rows_w, dim=1, keepdim=True) / (
                torch.linalg.vector_norm(rows_d, dim=1, keepdim=True) + _EPS
            )
            out[name] = (rows_d * scale).reshape(d.shape)
    return Direction(out, direction.buffers)


def random_direction(model: nn.Module, seed: int | None = 0, *, norm: str | None = "filter",
                     include_1d: bool = False, buffers: bool = False,
                     generator: torch.Generator | None = None) -> Direction:
    """A seeded standard-Gaussian direction over ``model``'s trainable tensors, normalized.

    The numbers are drawn on the CPU in float32 (then cast and moved to each tensor's
    dtype and device), so a seed gives the same direction on every machine.

    Args:
        model: the model whose trainable parameters (and weights, for the normalization)
            define the direction.
        seed: the random seed (ignored when ``generator`` is given).
        norm: ``"filter"``, ``"layer"``, ``"weight"`` or ``None``.
        include_1d: keep (and normalize) 1-D tensors instead of zeroing them.
        buffers: also cover BatchNorm running statistics (they move with the weights).
    Returns:
        :class:`Direction` with one tensor per trainable parameter (and BN buffer).

    Example:
        >>> d = random_direction(model, seed=0)
        >>> torch.linalg.vector_norm(d["0.weight"][0]) == torch.linalg.vector_norm(model[0].weight[0])
    """
    if norm not in NORMS:
        raise ValueError(f"Invalid norm: {norm!r} (allowed: 'filter', 'layer', 'weight' or None)")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed or 0))
    targets = direction_targets(model, buffers)
    raw = {
        n: torch.randn(t.shape, generator=gen, dtype=torch.float32).to(dtype=t.dtype, device=t.device)
        for n, t in targets
    }
    buffer_names = [n for n, _ in float_buffers(model)] if buffers else []
    return normalize_direction(Direction(raw, buffer_names), model, norm, include_1d=include_1d)


def random_plane(model: nn.Module, seed: int | None = 0, **kwargs) -> Plane:
    """Two independent seeded random directions (:func:`random_direction`), as a :class:`Plane`.

    Keyword arguments (``norm``, ``include_1d``, ``buffers``) go to :func:`random_direction`.

    Example:
        >>> plane = random_plane(model_sgd, seed=0)
        >>> surfaces = [loss_surface(m, plane, batch, loss_fn) for m in (model_sgd, model_sam)]
    """
    gen = torch.Generator().manual_seed(int(seed or 0))
    return Plane(random_direction(model, generator=gen, **kwargs),
                 random_direction(model, generator=gen, **kwargs))


def model_direction(model_a: nn.Module, model_b: nn.Module, *, buffers: bool = False) -> Direction:
    """The direction ``w_b − w_a`` from ``model_a`` to ``model_b`` (for interpolation plots).

    Walking ``α`` from 0 to 1 along it, starting at ``model_a``, reaches ``model_b``
    (see :func:`~forgetting_sam.landscape.interpolate`). The models must share their
    trainable parameter names and shapes.
    """
    a = direction_targets(model_a, buffers)
    b = dict(direction_targets(model_b, buffers))
    out = {}
    for name, ta in a:
        if name not in b:
            raise ValueError(f"model_b has no trainable tensor {name!r} that model_a has")
        if b[name].shape != ta.shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(ta.shape)} in model_a but {tuple(b[name].shape)} in model_b"
            )
        out[name] = (b[name].detach().to(ta.device, ta.dtype) - ta.detach()).clone()
    extra = [n for n in b if n not in out]
    if extra:
        raise ValueError(f"model_b has trainable tensor {extra[0]!r} that model_a lacks")
    buffer_names = [n for n, _ in float_buffers(model_a)] if buffers else []
    return Direction(out, buffer_names)
