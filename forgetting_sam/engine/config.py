"""One flat training config: every knob in one dataclass, YAML presets, ``--key value`` overrides.

A run is fully described by a :class:`TrainConfig`. Presets are small YAML files in ``forgetting_sam/configs/``;
a preset may start with ``base: other.yaml`` to inherit another and change a few keys. The
precedence is: dataclass defaults < the ``base`` chain < the preset < command-line overrides.
Unknown keys are errors that name the key and its closest valid spellings, never silently
ignored. The resolved config is saved next to every run as ``config.yaml``.

Example:
    >>> cfg = make_config("digits_sam", {"epochs": 3, "rho": 0.1})
    >>> cfg.wrapper, cfg.rho
    ('sam', 0.1)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserInputError

__all__ = [
    "DEMO_OPTIMIZERS",
    "OPTIMIZERS",
    "PRESETS_DIR",
    "WRAPPERS",
    "ConfigError",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "demo_config",
    "list_presets",
    "load_yaml_config",
    "make_config",
    "parse_value",
    "resolve_preset",
    "save_config",
]


class ConfigError(UserInputError, ValueError):
    """A config value, key or file that cannot be used; the message says how to fix it."""


OPTIMIZERS = ("sgd", "adamw")
WRAPPERS = ("none", "sam", "asam", "gsam", "obf", "gsam_obf", "asam_obf")

# The package's presets, ``forgetting_sam/configs`` (package data), found through
# importlib.resources so a checkout (``pip install -e .``) and an installed wheel agree. A
# preset name such as ``digits_sam`` is looked up here.
PRESETS_DIR = Path(str(importlib.resources.files("forgetting_sam") / "configs"))


def _knob(default, help: str, choices: tuple | None = None, group: str = "misc"):
    """A dataclass field whose help text and choices feed ``--help`` and validation."""
    meta = {"help": help, "choices": choices, "group": group}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every knob of a training run (see ``forgetting-sam train --help`` for the same list).

    Batch sizes are *global* (summed over data-parallel replicas and accumulation steps), as in
    the paper: ``batch_size = world_size × accumulation_steps × per-replica micro-step batch``.
    """

    # --- data -------------------------------------------------------------------------------
    dataset: str = _knob("digits", "data set: moons, spirals, blobs, digits, cifar10, cifar100, imagenet", group="data")
    data_dir: str | None = _knob(None, "root directory of the data set (CIFAR: torchvision's folder; ImageNet: holds train/ and val/)", group="data")
    download: bool = _knob(False, "let torchvision download CIFAR (needs internet)", group="data")
    subset: int | None = _knob(None, "cap the training set at N examples (quick runs)", group="data")
    label_noise: float = _knob(0.0, "symmetric label-noise rate in [0, 1), seeded", group="data")
    image_size: int | None = _knob(None, "resize images to this size in px (e.g. 224 for transfer); None: native", group="data")
    augment: bool = _knob(True, "training-set augmentation (crop + flip for images)", group="data")
    val_fraction: float = _knob(0.0, "hold out this fraction of the training set as a validation set", group="data")
    eval_sets: dict = _knob({}, "extra evaluation sets as name: ImageFolder path (ImageNet-V2, -R, -Sketch), scored at the end", group="data")
    imagenet_r_mask: bool = _knob(False, "also score ImageNet-R with its 200-class mask (the paper uses 1000-way argmax)", group="data")
    num_workers: int = _knob(0, "DataLoader worker processes", group="data")

    # --- model ------------------------------------------------------------------------------
    model: str = _knob("mlp", "model: mlp, cnn, wrn16_8, wrn28_10, resnet18_cifar, resnet50, resnet101, vit_s32, vit_s16", group="model")
    model_options: dict = _knob({}, "model options, e.g. {pool: gap, head_bias: -10} for the paper's ViT, {dropout: 0.0} for WRN", group="model")
    init_from: str | None = _knob(None, "checkpoint to initialise the model from (transfer): a run's checkpoints/last.pt or a bare state_dict file such as torchvision's ImageNet weights; tensors whose shape differs (the head) are skipped", group="model")

    # --- loss -------------------------------------------------------------------------------
    loss: str = _knob("ce", "training loss: ce (softmax cross-entropy) or bce_sigmoid (sigmoid BCE summed over classes, mean over batch)", ("ce", "bce_sigmoid"), group="loss")
    label_smoothing: float = _knob(0.0, "label smoothing in [0, 1)", group="loss")

    # --- base optimizer ---------------------------------------------------------------------
    optimizer: str = _knob("sgd", "base optimizer", OPTIMIZERS, group="optimizer")
    lr: float = _knob(0.1, "peak learning rate (after warm-up)", group="optimizer")
    lr_min: float = _knob(0.0, "final learning rate of the decay", group="optimizer")
    lr_schedule: str = _knob("linear", "lr decay after warm-up: linear (the paper's), cosine, step (×0.2 at 30/60/80%% of epochs, as the popular PyTorch SAM), constant", ("linear", "cosine", "step", "constant"), group="optimizer")
    warmup_epochs: float = _knob(0.0, "linear lr warm-up length in epochs (may be fractional)", group="optimizer")
    momentum: float = _knob(0.9, "SGD momentum", group="optimizer")
    nesterov: bool = _knob(False, "SGD Nesterov momentum", group="optimizer")
    betas: list = _knob([0.9, 0.999], "AdamW betas", group="optimizer")
    weight_decay: float = _knob(0.0, "weight decay", group="optimizer")
    weight_decay_mode: str = _knob("decoupled", "decoupled: w ← w − lr·wd·w before the base step (AdamW's rule; the paper's SGD); coupled: L2 added to the gradient (torch SGD's weight_decay). AdamW is always decoupled", ("decoupled", "coupled"), group="optimizer")
    clip_grad_norm: float | None = _knob(None, "clip the global norm of the final descent gradient to this value", group="optimizer")

    # --- perturbation (the SAM family) ------------------------------------------------------
    wrapper: str = _knob("none", "perturbation wrapper around the base optimizer", WRAPPERS, group="perturbation")
    rho: float | None = _knob(None, "perturbation radius ρ (None: the wrapper's default, 0.05; ASAM 0.5)", group="perturbation")
    rho_schedule: str = _knob("constant", "constant, or proportional to the lr (GSAM's schedule, from rho down to rho_min)", ("constant", "proportional"), group="perturbation")
    rho_min: float = _knob(0.0, "ρ at lr_min under rho_schedule=proportional", group="perturbation")
    alpha: float | None = _knob(None, "GSAM correction weight α (None: GSAM's default)", group="perturbation")
    eta: float | None = _knob(None, "ASAM η in T_w = |w| + η (None: ASAM's default)", group="perturbation")
    asam_form: str = _knob("original", "ASAM direction: original T²h/‖Th‖, before Th/‖Th‖ (the OBF authors' ResNets), after Th/‖h‖ (their ViTs)", ("original", "before", "after"), group="perturbation")
    gamma: float = _knob(1.0, "OBF γ in [0, 1] (the authors' ResNet/CIFAR runs use 1e-12)", group="perturbation")
    lam: float | None = _knob(None, "OBF λ in [0, 1) (None: 1/K)", group="perturbation")
    prob: str = _knob("sigmoid", "OBF probabilities", ("sigmoid", "softmax"), group="perturbation")
    micro_batch_size: int | None = _knob(None, "m: perturbation chunk size within each replica's batch (m-sharpness; None: the whole batch)", group="perturbation")
    replay_dropout: bool = _knob(False, "replay the dropout RNG so both passes see the same masks", group="perturbation")
    perturb_every: int = _knob(1, "cheaper SAM: perturb every k-th step only, a plain base step otherwise (docs/algorithms.md §9)", group="perturbation")
    perturb_from: int = _knob(0, "cheaper SAM: perturb only from this optimizer step on, plain base steps before it (§9)", group="perturbation")

    # --- schedule and batch -----------------------------------------------------------------
    epochs: int = _knob(10, "training epochs", group="schedule")
    batch_size: int = _knob(128, "global batch per optimizer step (all replicas and accumulation steps together)", group="schedule")
    accumulation_steps: int = _knob(1, "split each optimizer step into this many sequential micro-steps (gradient accumulation)", group="schedule")
    eval_batch_size: int | None = _knob(None, "evaluation batch per replica (None: the training micro-step batch)", group="schedule")
    eval_every: int = _knob(1, "evaluate on the test set every k epochs (and always after the last)", group="schedule")

    # --- performance ------------------------------------------------------------------------
    amp: str = _knob("none", "mixed precision: bf16 (autocast) or fp16 (autocast + GradScaler)", ("none", "bf16", "fp16"), group="performance")
    channels_last: bool = _knob(False, "channels-last memory format for conv nets", group="performance")
    compile: bool = _knob(False, "torch.compile the model", group="performance")
    device: str = _knob("auto", "auto, cpu, cuda, cuda:N or mps (torchrun sets cuda:LOCAL_RANK)", group="performance")

    # --- measures ---------------------------------------------------------------------------
    track_forgetting: bool = _knob(False, "log perturbed forgetting per epoch and track per-example forgetting events", group="measures")
    hessian_every: int = _knob(0, "log the top Hessian eigenvalue every k epochs (0: never)", group="measures")
    hessian_samples: int = _knob(512, "training examples used for the Hessian eigenvalue (the paper: 8192)", group="measures")
    hessian_iters: int = _knob(20, "power iterations for the Hessian eigenvalue (the paper: 100)", group="measures")

    # --- run --------------------------------------------------------------------------------
    seed: int = _knob(0, "random seed (data order, init, noise, dropout)", group="run")
    out_dir: str | None = _knob(None, "run directory (None: nothing is written; the CLI uses runs/<preset>)", group="run")
    overwrite: bool = _knob(False, "replace a finished run in out_dir", group="run")
    resume: bool = _knob(False, "continue the run in out_dir from its last checkpoint (an error if out_dir holds no run)", group="run")
    resume_if_present: bool = _knob(False, "continue the run in out_dir if it holds one, else start a fresh run there (for requeued jobs)", group="run")
    max_nonfinite_steps: int = _knob(20, "stop with an error after this many consecutive optimizer steps with a non-finite loss or a skipped update (0: never stop)", group="run")
    quiet: bool = _knob(False, "no progress bars", group="run")
    log_every: int = _knob(10, "refresh the progress-bar loss/accuracy every k steps (each refresh syncs the device)", group="run")

    def __post_init__(self):
        validate_config(self)


def config_fields() -> list[dataclasses.Field]:
    """The dataclass fields of :class:`TrainConfig`, in declaration order."""
    return list(fields(TrainConfig))


_FIELD_NAMES = [f.name for f in fields(TrainConfig)]


# Names other SAM code bases use for our keys, for the "did you mean" hint.
_ALIASES = {"learning_rate": "lr", "lr_max": "lr", "wd": "weight_decay", "base_optimizer": "optimizer",
            "m": "micro_batch_size", "adaptive": "wrapper", "dropout": "model_options",
            "smoothing": "label_smoothing", "threads": "num_workers", "grad_clip": "clip_grad_norm",
            "warmup": "warmup_epochs", "arch": "model", "data": "dataset", "output_dir": "out_dir"}


def _unknown_key_error(key: str, where: str = "") -> ConfigError:
    close = difflib.get_close_matches(key, _FIELD_NAMES, n=3, cutoff=0.6)
    if key in _ALIASES and _ALIASES[key] not in close:
        close.insert(0, _ALIASES[key])
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `forgetting-sam train --help` for every key"
    return ConfigError(f"unknown config key {key!r}{where}{hint}")


def _choose(name: str, value, valid) -> None:
    if value not in valid:
        close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"invalid {name}: {value!r}{hint}; valid: {', '.join(map(str, valid))}")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_config(cfg: TrainConfig) -> None:
    """Check types, choices and ranges; raise :class:`ConfigError` naming the key and the fix."""
    from .data import DATASETS
    from .models import MODELS

    for f in fields(cfg):
        # nan/inf pass every range check below (nan compares False), so they are caught first.
        value = getattr(cfg, f.name)
        values = value if f.name == "betas" and isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, got {v}")
    _choose("dataset", cfg.dataset, DATASETS)
    _choose("model", cfg.model, tuple(MODELS))
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        if choices is not None:
            _choose(f.name, getattr(cfg, f.name), choices)
    _check(cfg.epochs >= 1, f"epochs must be ≥ 1, got {cfg.epochs}")
    _check(cfg.batch_size >= 1, f"batch_size must be ≥ 1, got {cfg.batch_size}")
    _check(cfg.accumulation_steps >= 1, f"accumulation_steps must be ≥ 1, got {cfg.accumulation_steps}")
    _check(cfg.micro_batch_size is None or cfg.micro_batch_size >= 1,
           f"micro_batch_size must be ≥ 1 or None, got {cfg.micro_batch_size}")
    _check(cfg.micro_batch_size is None or cfg.micro_batch_size <= cfg.batch_size,
           f"micro_batch_size={cfg.micro_batch_size} exceeds batch_size={cfg.batch_size}: a perturbation "
           "chunk cannot be larger than the batch; lower --micro-batch-size or leave it unset (whole batch)")
    _check(cfg.max_nonfinite_steps >= 0,
           f"max_nonfinite_steps must be ≥ 0 (0: never stop), got {cfg.max_nonfinite_steps}")
    _check(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    _check(0 <= cfg.lr_min <= cfg.lr, f"lr_min must be in [0, lr={cfg.lr}], got {cfg.lr_min}")
    _check(cfg.warmup_epochs >= 0, f"warmup_epochs must be ≥ 0, got {cfg.warmup_epochs}")
    _check(cfg.weight_decay >= 0, f"weight_decay must be ≥ 0, got {cfg.weight_decay}")
    _check(0 <= cfg.momentum < 1, f"momentum must be in [0, 1), got {cfg.momentum}")
    _check(isinstance(cfg.betas, (list, tuple)) and len(cfg.betas) == 2,
           f"betas must be a pair like [0.9, 0.999], got {cfg.betas!r}")
    _check(cfg.rho is None or cfg.rho >= 0, f"rho must be ≥ 0, got {cfg.rho}")
    _check(cfg.rho_min >= 0, f"rho_min must be ≥ 0, got {cfg.rho_min}")
    _check(cfg.perturb_every >= 1, f"perturb_every must be ≥ 1, got {cfg.perturb_every}")
    _check(cfg.perturb_from >= 0, f"perturb_from must be ≥ 0, got {cfg.perturb_from}")
    _check(cfg.wrapper != "none" or (cfg.perturb_every, cfg.perturb_from) == (1, 0),
           "perturb_every/perturb_from schedule the perturbation: set a wrapper (e.g. wrapper=sam)")
    _check(0 <= cfg.label_noise < 1, f"label_noise must be in [0, 1), got {cfg.label_noise}")
    _check(0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _check(0 <= cfg.val_fraction < 1, f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    _check(cfg.subset is None or cfg.subset >= 1, f"subset must be ≥ 1 or None, got {cfg.subset}")
    _check(cfg.clip_grad_norm is None or cfg.clip_grad_norm > 0,
           f"clip_grad_norm must be > 0 or None, got {cfg.clip_grad_norm}")
    _check(cfg.hessian_every >= 0, f"hessian_every must be ≥ 0 (0 turns it off), got {cfg.hessian_every}")
    _check(cfg.eval_every >= 1, f"eval_every must be ≥ 1, got {cfg.eval_every}")
    _check(cfg.log_every >= 1, f"log_every must be ≥ 1, got {cfg.log_every}")
    _check(cfg.num_workers >= 0, f"num_workers must be ≥ 0, got {cfg.num_workers}")
    _check(not ((cfg.resume or cfg.resume_if_present) and cfg.overwrite),
           "resume and overwrite exclude each other: resume continues the run in out_dir, overwrite replaces it")
    _check(isinstance(cfg.model_options, dict), f"model_options must be a mapping, got {cfg.model_options!r}")
    if isinstance(cfg.model_options, dict):
        from .models import check_model_options

        check_model_options(cfg.model, cfg.model_options)
    _check(isinstance(cfg.eval_sets, dict), f"eval_sets must be a mapping name: path, got {cfg.eval_sets!r}")
    if cfg.rho_schedule == "proportional":
        _check(cfg.wrapper != "none", "rho_schedule=proportional needs a wrapper (sam, gsam, ...); wrapper is none")
        _check(cfg.lr > cfg.lr_min, "rho_schedule=proportional needs lr > lr_min")
    if cfg.amp == "fp16":
        _check(not str(cfg.device).startswith("mps"), "amp=fp16 with GradScaler is not supported on mps; use amp=bf16")


# ------------------------------------------------------------------------------ values
def _field_kind(f: dataclasses.Field) -> str:
    """'bool', 'int', 'float', 'str', 'dict' or 'list' for a field (optionality aside)."""
    t = str(f.type)
    for kind in ("bool", "int", "float", "dict", "list", "str"):
        if t.startswith(kind):
            return kind
    raise AssertionError(f"unhandled config type {t} for {f.name}")


_KINDS = {f.name: _field_kind(f) for f in fields(TrainConfig)}
_OPTIONAL = {f.name: "None" in str(f.type) for f in fields(TrainConfig)}


def parse_value(key: str, value: Any) -> Any:
    """Coerce ``value`` (from YAML or a command-line string) to the type of config ``key``.

    Strings are read as YAML scalars/flow mappings, so ``--model-options "{pool: gap}"``,
    ``--model-options pool=gap,head_bias=-10``, ``--rho none`` and ``--quiet true`` all work.
    """
    if key not in _KINDS:
        raise _unknown_key_error(key)
    kind, optional = _KINDS[key], _OPTIONAL[key]
    if isinstance(value, str):
        text = value.strip()
        if kind == "dict" and "=" in text and not text.startswith("{"):
            value = {}
            for item in text.split(","):
                k, sep, v = item.partition("=")
                if not sep or not k.strip():
                    raise ConfigError(f"{key}: cannot read {item!r}; write key=value pairs separated by commas")
                value[k.strip()] = yaml.safe_load(v.strip()) if v.strip() else None
        elif kind == "str":
            value = None if (optional and text.lower() in ("none", "null", "~", "")) else text
        else:
            try:
                value = yaml.safe_load(text) if text else None
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: cannot read {value!r} ({e.__class__.__name__})") from None
            if isinstance(value, str) and value.lower() == "none":
                value = None
    if value is None:
        if optional:
            return None
        if kind in ("dict", "list"):
            return {} if kind == "dict" else []
        raise ConfigError(f"{key} cannot be None; give a {kind}")
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise TypeError
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "str":
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if kind == "dict":
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
        if kind == "list":
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {'a ' + kind if kind != 'int' else 'an int'}"
                          f"{' or none' if optional else ''}, got {value!r}") from None
    raise AssertionError(kind)


def config_from_dict(values: Mapping[str, Any], *, where: str = "") -> TrainConfig:
    """Build a validated :class:`TrainConfig` from a mapping; unknown keys raise ConfigError."""
    clean = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in _KINDS:
            raise _unknown_key_error(key, where)
        clean[key] = parse_value(key, value)
    return TrainConfig(**clean)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain-Python dict of every key (YAML/JSON-serialisable)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# ------------------------------------------------------------------------------ files
def list_presets(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the preset files (without ``.yaml``) in :data:`PRESETS_DIR`; ``_``-prefixed bases excluded."""
    d = Path(directory) if directory is not None else PRESETS_DIR
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml") if not p.name.startswith("_"))


def resolve_preset(name_or_path: str | os.PathLike, *, relative_to: Path | None = None) -> Path:
    """A YAML path from a path or a preset name (``digits_sam`` → ``PRESETS_DIR/digits_sam.yaml``)."""
    p = Path(name_or_path)
    candidates = [p]
    if relative_to is not None and not p.is_absolute():
        candidates.insert(0, relative_to / p)
    if not p.suffix:
        candidates.append(p.with_suffix(".yaml"))
    candidates += [PRESETS_DIR / p.name, PRESETS_DIR / (p.name if p.suffix else p.name + ".yaml")]
    for c in candidates:
        if c.is_file():
            return c
    names = list_presets()
    close = difflib.get_close_matches(p.stem, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(names) if names else f"(no presets found in {PRESETS_DIR})"
    raise ConfigError(f"no config file or preset named {str(name_or_path)!r}.{hint} Valid presets: {listing}")


def load_yaml_config(path: str | os.PathLike, _seen: tuple = ()) -> dict[str, Any]:
    """Read a YAML preset, following its ``base:`` chain (relative to the file), as a flat dict.

    Keys are checked against :class:`TrainConfig`; values are not yet coerced.
    """
    path = resolve_preset(path)
    real = path.resolve()
    if real in _seen:
        chain = " → ".join(str(s.name) for s in _seen + (real,))
        raise ConfigError(f"preset inheritance loops: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of key: value, got {type(data).__name__}")
    merged: dict[str, Any] = {}
    base = data.pop("base", None)
    if base is not None:
        merged.update(load_yaml_config(resolve_preset(base, relative_to=path.parent), _seen + (real,)))
    for key in data:
        k = str(key).replace("-", "_")
        if k not in _KINDS:
            raise _unknown_key_error(k, f" in {path}")
    merged.update({str(k).replace("-", "_"): v for k, v in data.items()})
    return merged


def make_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the preset at ``path`` (with its ``base`` chain), then ``overrides``.

    Example:
        >>> make_config("digits_sam", {"epochs": 2}).epochs
        2
    """
    values: dict[str, Any] = {}
    where = ""
    if path is not None:
        values.update(load_yaml_config(path))
        where = f" in {path}"
    for k, v in (overrides or {}).items():
        values[str(k).replace("-", "_")] = v
    return config_from_dict(values, where=where)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (every key, so the run can be repeated exactly)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ the demo
# The quickstart (`make demo`, `forgetting-sam demo`): one small CNN on scikit-learn's digits,
# trained with each optimizer. forgetting_sam/configs/digits_*.yaml hold the same settings (a test checks).
DEMO_BASE: dict[str, Any] = dict(
    dataset="digits", model="cnn", epochs=40, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9,
    weight_decay=5e-4, lr_schedule="cosine", warmup_epochs=1, label_noise=0.4, seed=0,
    track_forgetting=True,
)
DEMO_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": dict(wrapper="none"),
    "sam": dict(wrapper="sam", rho=0.05),
    "asam": dict(wrapper="asam", rho=0.5),
    "gsam": dict(wrapper="gsam", rho=0.05, alpha=0.4),
    "obf": dict(wrapper="obf", rho=0.05, gamma=1.0),
}


def demo_config(name: str, **overrides: Any) -> TrainConfig:
    """The demo's config for optimizer ``name`` (sgd, sam, asam, gsam, obf), with overrides."""
    if name not in DEMO_OPTIMIZERS:
        raise ConfigError(f"unknown demo optimizer {name!r}; valid: {', '.join(DEMO_OPTIMIZERS)}")
    return config_from_dict({**DEMO_BASE, **DEMO_OPTIMIZERS[name], **overrides})
