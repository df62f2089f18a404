"""Floor 2: loss landscapes, Hessian spectra and sharpness, for any ``nn.Module``.

Draw SGD, SAM and OBF models on one shared plane in three lines::

    plane = random_plane(model_sgd, seed=0)                                   # filter-normalized
    surfaces = [loss_surface(m, plane, (x, y), F.cross_entropy) for m in (model_sgd, model_sam, model_obf)]
    fig, axes = plot_surfaces(surfaces, titles=["SGD", "SAM", "OBF"])          # one colour scale

Curvature and sharpness::

    hessian_eigenvalues(model, (x, y), F.cross_entropy, k=3).values          # Lanczos, top 3
    hessian_trace(model, (x, y), F.cross_entropy).value                       # Hutchinson
    plot_density(spectral_density(model, (x, y), F.cross_entropy))           # SLQ
    sharpness(model, (x, y), F.cross_entropy, rho=0.05, micro_batch_size=64).value

``data`` is always a batch ``(inputs, targets)`` or an iterable of batches (a DataLoader);
``loss_fn(outputs, targets)`` returns the batch mean. Every function leaves the model exactly
as it was (parameters, ``requires_grad``, buffers, train/eval flags) and takes an explicit
``mode`` (``"eval"`` by default; ``"train"`` uses batch statistics with BatchNorm running
statistics untouched).
"""

from .directions import (
    NORMS,
    Direction,
    Plane,
    check_compatible,
    model_direction,
    normalize_direction,
    random_direction,
    random_plane,
)
from .evaluate import METHODS, Landscape, evaluate_points, interpolate, loss_line, loss_surface
from .hessian import (
    HessianEigen,
    HessianOperator,
    SpectralDensity,
    TraceEstimate,
    eigen_directions,
    hessian_eigenvalues,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    lanczos,
    spectral_density,
)
from .plots import plot_contour, plot_density, plot_line, plot_surface_3d, plot_surfaces
from .sharpness import Sharpness, sharpness

__all__ = [
    "METHODS",
    "NORMS",
    "Direction",
    "HessianEigen",
    "HessianOperator",
    "Landscape",
    "Plane",
    "Sharpness",
    "SpectralDensity",
    "TraceEstimate",
    "check_compatible",
    "eigen_directions",
    "evaluate_points",
    "hessian_eigenvalues",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hvp",
    "interpolate",
    "lanczos",
    "loss_line",
    "loss_surface",
    "model_direction",
    "normalize_direction",
    "plot_contour",
    "plot_density",
    "plot_line",
    "plot_surface_3d",
    "plot_surfaces",
    "random_direction",
    "random_plane",
    "sharpness",
    "spectral_density",
]
