"""Floor 2: forgetting — make what SAM's perturbation forgets observable and measurable.

- Perturbed forgetting (docs/algorithms.md §8): :func:`perturbed_forgetting` from the logits at
  ``w`` and ``w + ε`` (free during training: ``perturbed_step`` returns both), and
  :func:`measure_perturbed_forgetting` on any model or checkpoint.
- Forgetting events (Toneva et al. 2019): :class:`ForgettingTracker`.
- Output bias: :class:`OutputBiasRecorder`, :func:`prediction_entropy`, :func:`per_class_bias`.
- Does it track generalization? :func:`correlate` (Kendall τ across runs).
- Plots: ``forgetting_sam.forgetting.plots`` (imported lazily, so matplotlib loads only when
  you draw).

Imports torch, numpy, scipy (lazily) and the optim floor; never the engine.
"""

from .bias import (
    OutputBiasRecorder,
    bias_from_uniform,
    mean_prediction,
    per_class_bias,
    prediction_entropy,
)
from .correlate import CorrelationResult, correlate, correlate_all, run_numbers
from .events import ForgettingTracker
from .measures import (
    MEASURE_KEYS,
    PerturbedForgettingMeter,
    measure_perturbed_forgetting,
    perturbed_forgetting,
    total_variation,
)

_PLOTS = (
    "plot_forgetting_curve",
    "plot_forgetting_histogram",
    "plot_example_gallery",
    "plot_output_bias",
    "plot_correlation",
)

__all__ = [
    "MEASURE_KEYS",
    "CorrelationResult",
    "ForgettingTracker",
    "OutputBiasRecorder",
    "PerturbedForgettingMeter",
    "bias_from_uniform",
    "correlate",
    "correlate_all",
    "mean_prediction",
    "measure_perturbed_forgetting",
    "per_class_bias",
    "perturbed_forgetting",
    "plot_correlation",
    "run_numbers",
    "plot_example_gallery",
    "plot_forgetting_curve",
    "plot_forgetting_histogram",
    "plot_output_bias",
    "prediction_entropy",
    "total_variation",
]


def __getattr__(name):
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
