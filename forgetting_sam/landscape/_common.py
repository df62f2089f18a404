"""Shared plumbing of the landscape floor: data, modes, parameters, progress bars.

Private: the public functions of :mod:`forgetting_sam.landscape` document the contract
(``data`` is a batch ``(inputs, targets)`` or an iterable of such batches; ``mode`` is
``"eval"`` or ``"train"``) and call these helpers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..optim import bn_stats_frozen

MODES = ("eval", "train")


def trainable_named_parameters(model: nn.Module, *, what: str = "model") -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` for every parameter with ``requires_grad``, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            f"{what} has no trainable parameters (every parameter has requires_grad=False); "
            "call .requires_grad_(True) on the parameters to measure"
        )
    return named


def float_buffers(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The floating-point buffers of BatchNorm layers (running mean and variance)."""
    out = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._NormBase):
            for b_name, b in mod.named_buffers(recurse=False):
                if b is not None and b.is_floating_point():
                    out.append((f"{mod_name}.{b_name}" if mod_name else b_name, b))
    return out


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (allowed: 'eval' or 'train')")
    return mode


@contextlib.contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``mode`` for the block; restore every module's flags afterwards.

    ``"train"`` means train-mode layers (BatchNorm normalizes with the batch's statistics)
    with BatchNorm running statistics left untouched, by ``optim.bn_stats_frozen``: it
    switches ``track_running_stats`` off for the block, so
    BatchNorm neither reads nor writes its buffers, which also keeps the buffers out of
    ``torch.func`` transforms (an in-place buffer update under ``vmap``/``jvp`` fails).
    """
    check_mode(mode)
    flags = [(m, m.training) for m in model.modules()]
    frozen = bn_stats_frozen(model) if mode == "train" else contextlib.nullcontext()
    try:
        model.train(mode == "train")
        with frozen:
            yield model
    finally:
        for m, flag in flags:
            m.training = flag


def is_batch(data) -> bool:
    """A single ``(inputs, targets)`` pair of tensors, as opposed to a loader of them."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    )


def iter_batches(data, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, targets)`` on ``device`` from a batch or an iterable of batches."""
    if is_batch(data):
        batches: Iterable = [data]
    elif isinstance(data, Iterable) and not isinstance(data, (Tensor, str, bytes, dict)):
        batches = data
    else:
        raise TypeError(
            "data must be a batch (inputs, targets) of tensors or an iterable of such batches "
            f"(e.g. a DataLoader), got {type(data).__name__}"
        )
    count = 0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(
                "each batch must be a tuple (inputs, targets, ...), "
                f"got {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        count += 1
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if count == 0:
        raise ValueError("data yielded no batches; pass a non-empty batch or DataLoader")


def batch_size(x: Tensor) -> int:
    return int(x.shape[0]) if x.dim() else 1


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def progress_bar(total: int, desc: str, progress: bool):
    """A tqdm bar; ``disable=None`` lets tqdm stay quiet when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False)


def check_finite_number(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def flatten(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[offset:offset + n].view_as(t))
        offset += n
    return out
