"""Floor 3: the engine — data, models, the training loop, checkpoints, logging, presets.

Start with :func:`train` and :func:`make_config`; :func:`load_run` opens a finished run for the
landscape and forgetting tools. Imports the floors below (optim, landscape, forgetting), never
the faces (CLI, widgets, notebooks).
"""

from .checkpoint import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from .config import (
    OPTIMIZERS,
    PRESETS_DIR,
    WRAPPERS,
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_yaml_config,
    make_config,
    resolve_preset,
    save_config,
)
from .data import (
    DATASETS,
    DataBundle,
    DatasetNotFoundError,
    IndexedDataset,
    build_datasets,
    symmetric_label_noise,
)
from .distributed import DistEnv, setup_distributed
from .errors import OutputWriteError, UserInputError
from .logging import RunLogger, compare_table, plot_curves, plot_runs, read_metrics, read_summary
from .models import MODELS, build_model, count_parameters, model_options
from .optim_factory import (
    SGDW,
    LRSchedule,
    SigmoidBCELoss,
    build_loss,
    build_optimizer,
    build_schedules,
)
from .run import Run, load_run
from .train import RunExistsError, TrainingDiverged, TrainingInterrupted, TrainResult, evaluate, train

__all__ = [
    "DATASETS",
    "MODELS",
    "OPTIMIZERS",
    "PRESETS_DIR",
    "SGDW",
    "WRAPPERS",
    "CheckpointError",
    "ConfigError",
    "DataBundle",
    "DatasetNotFoundError",
    "DistEnv",
    "IndexedDataset",
    "LRSchedule",
    "OutputWriteError",
    "Run",
    "RunExistsError",
    "RunLogger",
    "SigmoidBCELoss",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "UserInputError",
    "build_datasets",
    "build_loss",
    "build_model",
    "build_optimizer",
    "build_schedules",
    "compare_table",
    "config_from_dict",
    "config_to_dict",
    "count_parameters",
    "evaluate",
    "list_presets",
    "load_checkpoint",
    "load_pretrained",
    "load_run",
    "load_yaml_config",
    "make_config",
    "model_options",
    "plot_curves",
    "plot_runs",
    "read_metrics",
    "read_summary",
    "resolve_preset",
    "save_checkpoint",
    "save_config",
    "setup_distributed",
    "symmetric_label_noise",
    "train",
]
