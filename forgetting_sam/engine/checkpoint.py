"""Atomic, self-checking checkpoints that resume a run bit for bit.

A checkpoint is one ``torch.save`` file holding plain tensors and Python values only, so it is
read back with ``torch.load(..., weights_only=True)`` (no arbitrary code runs on load). It holds
the model, the optimizer (a family wrapper's ``state_dict`` includes its base optimizer's state),
the lr and rho schedules, the GradScaler, every RNG state (python, numpy, torch, CUDA), the
position in training (epoch, batch within the epoch, optimizer step) and the config.

Writes go to a temporary file in the same folder and are moved into place with ``os.replace``,
so a crash mid-write never leaves a half-written ``last.pt``. Loading checks the file fully
(readable, all sections present, every model tensor's name and shape) before anything is
copied into the model, so a bad file is rejected with a clear message and never half-loaded.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import OutputWriteError, UserInputError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "check_model_state",
    "get_rng_state",
    "load_checkpoint",
    "load_pretrained",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "optimizer", "epoch", "step", "batch_in_epoch", "rng", "config")


class CheckpointError(UserInputError, RuntimeError):
    """A checkpoint that cannot be used (missing, truncated, corrupted, or for another model)."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``os.replace``).

    Args:
        state: plain tensors and Python containers (what ``weights_only=True`` can read back).
        path: destination file; its folder is created if needed.
    Returns:
        The path written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputWriteError(f"cannot write checkpoint {path} ({e.strerror or e}); the previous "
                               "checkpoint is unchanged. Free space or choose a writable --out-dir") from None
    except RuntimeError as e:
        # torch.save reports a failed write of its zip container as a RuntimeError.
        if "write" not in str(e).lower() and "inline_container" not in str(e):
            raise
        raise OutputWriteError(f"cannot write checkpoint {path} ({str(e).splitlines()[0][:120]}); the "
                               "previous checkpoint is unchanged. Free space or choose a writable --out-dir") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupted, not a checkpoint of this
            package, or of a newer format. The message names the file and what to do.
    """
    path = Path(path)
    return _checked(_read(path, map_location), path)


def _read(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` (weights only) with a CheckpointError that names the file."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, KeyError, AttributeError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted and was not loaded ({reason[:200]}). "
            "Resume from an earlier copy, or start over with --overwrite."
        ) from None


def _checked(state: Any, path: Path) -> dict[str, Any]:
    """``state`` if it is a complete checkpoint of a format this package reads."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a forgetting_sam checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete forgetting_sam checkpoint; missing {', '.join(missing)}")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format {state['format_version']}; this forgetting_sam reads up to "
                              f"{FORMAT_VERSION}. Upgrade the package.")
    return state


def check_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` matches ``model`` name for name and
    shape for shape — checked before copying, so a mismatch never half-loads the model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    wrong = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' …' if len(extra) > 5 else ''}")
        if wrong:
            parts.append("shape differs for " + ", ".join(
                f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5]))
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); "
                              "was it written for another model or model_options?")


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Initialise ``model`` from a checkpoint's weights for transfer learning.

    ``path`` is a run's checkpoint (``checkpoints/last.pt``) or a file holding a bare
    ``state_dict``, such as torchvision's ImageNet weights (``torchvision.models.resnet50(
    weights="IMAGENET1K_V1")`` saves them under ``~/.cache/torch/hub/checkpoints/``), whose
    keys match the engine's ``resnet50``/``resnet101``. Tensors with the same name and shape
    are copied; the rest (typically the classifier head, whose number of classes differs) keep
    their fresh initialisation.

    Returns:
        ``(loaded, skipped)`` lists of tensor names.

    Example:
        >>> model = build_model("resnet50", num_classes=10, input_shape=(3, 224, 224))
        >>> loaded, skipped = load_pretrained(model, "~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth")
        >>> skipped
        ['fc.weight', 'fc.bias']
    """
    path = Path(path).expanduser()
    state = _read(path)  # read once: a run's checkpoint also holds the optimizer's state
    if not _is_bare_state_dict(state):
        state = _checked(state, path)["model"]
    own = model.state_dict()
    loaded = [k for k in own if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    skipped = [k for k in own if k not in loaded]
    if not loaded:
        raise CheckpointError(f"{path}: no tensor fits this model; was it written for another architecture?")
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return loaded, skipped


def _is_bare_state_dict(state: Any) -> bool:
    """Whether a loaded file is nothing but a ``name -> tensor`` mapping (torchvision's weights)."""
    return isinstance(state, dict) and bool(state) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


# ------------------------------------------------------------------------------ RNG
def get_rng_state() -> dict[str, Any]:
    """Every RNG state a run touches, as tensors and plain values (``weights_only``-safe)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    rng = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restore states captured by :func:`get_rng_state`."""
    py = rng["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = rng["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(rng["torch"].cpu())
    if "cuda" in rng and torch.cuda.is_available():
        states = rng["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])
