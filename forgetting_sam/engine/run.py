"""Open a finished (or interrupted) run for analysis: ``load_run(run_dir)``.

The landscape and forgetting tools take a model, data and a loss; this gives them all three
from a run directory, rebuilt from the run's saved ``config.yaml`` and checkpoint.

Example:
    >>> run = load_run("runs/digits_sam")
    >>> run.model, run.config.wrapper, len(run.data.train), run.loss_fn
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_model_state, load_checkpoint
from .config import ConfigError, TrainConfig, config_from_dict, load_yaml_config
from .data import DataBundle, build_datasets
from .errors import RunNotFoundError
from .logging import read_metrics, read_summary
from .models import build_model
from .optim_factory import build_loss
from .train import CHECKPOINT_DIR

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A trained run: ``model`` (weights loaded, eval mode), ``config``, ``data`` (built on
    first access), ``loss_fn`` (the training loss), ``summary``, ``metrics`` (per-epoch records)."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module
    loss_fn: nn.Module
    checkpoint_path: Path
    epoch: int
    step: int
    summary: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    data_options: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def data(self) -> DataBundle:
        """The run's data sets, rebuilt from its config (same seed, subset and label noise)."""
        c = self.config
        opts = dict(data_dir=c.data_dir, download=False, subset=c.subset, label_noise=c.label_noise,
                    seed=c.seed, image_size=c.image_size, augment=c.augment, val_fraction=c.val_fraction,
                    eval_sets=c.eval_sets or None, imagenet_r_mask=c.imagenet_r_mask)
        opts.update(self.data_options)
        return build_datasets(c.dataset, **opts)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "last", *, device: str | torch.device = "cpu",
             data_dir: str | None = None, augment: bool = False) -> Run:
    """Load a run written by :func:`~forgetting_sam.engine.train`.

    Args:
        run_dir: the run directory (holds ``config.yaml`` and ``checkpoints/``).
        checkpoint: a name in ``run_dir/checkpoints`` (``"last"``) or a path to a ``.pt`` file.
        device: where to put the model.
        data_dir: override the data location saved in the config (data moved machines).
        augment: training-set augmentation for ``.data`` (default off: measures want the
            plain images).

    Raises:
        FileNotFoundError: no run there. CheckpointError: bad or mismatched checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunNotFoundError(f"no run directory at {run_dir}")
    path = Path(checkpoint)
    if not path.is_file():
        name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
        path = run_dir / CHECKPOINT_DIR / name
    if not path.is_file():
        found = sorted(p.stem for p in (run_dir / CHECKPOINT_DIR).glob("*.pt"))
        raise RunNotFoundError(f"no checkpoint {checkpoint!r} in {run_dir / CHECKPOINT_DIR}; "
                                f"available: {', '.join(found) or 'none (was the run started?)'}")
    state = load_checkpoint(path)
    if (run_dir / "config.yaml").is_file():
        values = load_yaml_config(run_dir / "config.yaml")
    else:
        values = dict(state["config"])
    values.update(resume=False, overwrite=False)
    try:
        cfg = config_from_dict(values, where=f" in {run_dir / 'config.yaml'}")
    except ConfigError as e:
        raise ConfigError(f"cannot read the config of {run_dir}: {e}") from None
    run = Run(run_dir=run_dir, config=cfg, model=None, loss_fn=build_loss(cfg), checkpoint_path=path,
              epoch=int(state["epoch"]), step=int(state["step"]), summary=read_summary(run_dir),
              metrics=read_metrics(run_dir))
    if data_dir is not None:
        run.data_options["data_dir"] = data_dir
    run.data_options["augment"] = augment
    # The model's shape depends on the data (classes, input shape): take them from the
    # checkpoint when possible so that no data set has to be read just to load weights.
    if "num_classes" in state and "input_shape" in state:
        num_classes, input_shape = int(state["num_classes"]), tuple(state["input_shape"])
    else:
        num_classes, input_shape = _shape_from_data(run)
    model = build_model(cfg.model, num_classes=num_classes, input_shape=input_shape, **cfg.model_options)
    check_model_state(model, state["model"], str(path))
    model.load_state_dict(state["model"])
    run.model = model.to(device).eval()
    return run


def _shape_from_data(run: Run) -> tuple[int, tuple[int, ...]]:
    meta = run.summary or {}
    if meta.get("num_classes") and meta.get("input_shape"):
        return int(meta["num_classes"]), tuple(meta["input_shape"])
    d = run.data
    return d.num_classes, tuple(d.input_shape)
