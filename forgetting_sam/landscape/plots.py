"""Matplotlib figures of landscapes and spectra. Every function returns ``(fig, axes)``.

NaN values (points where the loss was not finite) are drawn as gaps: lines break, contours
and surfaces leave the cell empty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .evaluate import Landscape
from .hessian import SpectralDensity

_LABELS = {"loss": "loss", "accuracy": "accuracy (fraction correct)"}


def _metric(land: Landscape, metric: str) -> np.ndarray:
    if metric not in _LABELS:
        raise ValueError(f"Invalid metric: {metric!r} (allowed: 'loss' or 'accuracy')")
    values = land.loss if metric == "loss" else land.accuracy
    if values is None:
        raise ValueError("this landscape has no accuracy (outputs were not class scores); use metric='loss'")
    return values.detach().cpu().double().numpy()


def _check_landscape(land, ndim: int | None = None) -> None:
    if not isinstance(land, Landscape):
        raise TypeError(f"expected a Landscape (from loss_line / loss_surface), got {type(land).__name__}")
    if ndim is not None and land.ndim != ndim:
        what = "loss_surface" if ndim == 2 else "loss_line"
        raise ValueError(f"this plot needs a {ndim}-D landscape (from {what}), got a {land.ndim}-D one")


def _new_axes(ax, projection=None):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig = plt.figure(figsize=(5, 4))
    return fig, fig.add_subplot(111, projection=projection)


def plot_line(lines: Landscape | Sequence[Landscape], *, labels: Sequence[str] | None = None,
              metric: str = "loss", ax=None, title: str | None = None, log: bool = False):
    """Loss (or accuracy) along one or several 1-D lines on one axes.

    Args:
        lines: a :class:`Landscape` from :func:`loss_line` / :func:`interpolate`, or a list.
        labels: legend entries, one per line.
        metric: ``"loss"`` or ``"accuracy"``.
        log: logarithmic y axis (loss only).
    Returns:
        ``(fig, ax)``.
    """
    lines = [lines] if isinstance(lines, Landscape) else list(lines)
    if not lines:
        raise ValueError("lines is empty; pass at least one Landscape")
    for land in lines:
        _check_landscape(land, 1)
    if labels is not None and len(labels) != len(lines):
        raise ValueError(f"labels has {len(labels)} entries for {len(lines)} lines")
    fig, ax = _new_axes(ax)
    for i, land in enumerate(lines):
        ax.plot(land.alphas.numpy(), _metric(land, metric), marker=".",
                label=None if labels is None else labels[i])
    ax.set_xlabel("α (step along the direction, direction units)")
    ax.set_ylabel(_LABELS[metric])
    if log and metric == "loss":
        ax.set_yscale("log")
    ax.set_title(title or f"{_LABELS[metric]} along a direction")
    if labels is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig, ax


def _levels(values: Sequence[np.ndarray], n: int) -> np.ndarray:
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    if finite.size == 0:
        raise ValueError("every value is NaN: nothing to draw")
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    return np.linspace(lo, hi, n)


def plot_contour(surface: Landscape, *, metric: str = "loss", levels: int | Sequence[float] = 15, ax=None,
                 title: str | None = None, filled: bool = True, colorbar: bool = True, mark_origin: bool = True):
    """Contour plot of a 2-D landscape with labelled levels.

    Args:
        surface: a :class:`Landscape` from :func:`loss_surface`.
        levels: how many levels, or the level values (shared scales pass explicit values).
        filled: filled contours under the labelled lines.
    Returns:
        ``(fig, ax)``.
    """
    _check_landscape(surface, 2)
    z = _metric(surface, metric)
    lv = _levels([z], levels) if isinstance(levels, int) else np.asarray(levels, dtype=float)
    fig, ax = _new_axes(ax)
    a, b = surface.alphas.numpy(), surface.betas.numpy()
    masked = np.ma.masked_invalid(z)
    if filled:
        cf = ax.contourf(a, b, masked, levels=lv, cmap="viridis", extend="both")
        if colorbar:
            fig.colorbar(cf, ax=ax, label=_LABELS[metric])
    cs = ax.contour(a, b, masked, levels=lv, colors="k", linewidths=0.6)
    ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    if mark_origin:
        ax.plot([0], [0], marker="*", color="red", markersize=9, linestyle="none", label="the model")
    ax.set_xlabel("α (first direction)")
    ax.set_ylabel("β (second direction)")
    ax.set_title(title or f"{_LABELS[metric]} around the model")
    ax.set_aspect("equal", adjustable="box")
    return fig, ax


def plot_surface_3d(surface: Landscape, *, metric: str = "loss", ax=None, title: str | None = None,
                    vmin: float | None = None, vmax: float | None = None):
    """3-D surface of a 2-D landscape (NaN cells are left out).

    Returns:
        ``(fig, ax)`` with a 3-D axes.
    """
    _check_landscape(surface, 2)
    z = _metric(surface, metric)
    fig, ax = _new_axes(ax, projection="3d")
    aa, bb = np.meshgrid(surface.alphas.numpy(), surface.betas.numpy())
    finite = z[np.isfinite(z)]
    vmin = float(finite.min()) if vmin is None and finite.size else vmin
    vmax = float(finite.max()) if vmax is None and finite.size else vmax
    ax.plot_surface(aa, bb, np.ma.masked_invalid(z), cmap="viridis", vmin=vmin, vmax=vmax,
                    linewidth=0, antialiased=True)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel(_LABELS[metric])
    ax.set_title(title or f"{_LABELS[metric]} surface")
    return fig, ax


def plot_surfaces(surfaces: Sequence[Landscape], titles: Sequence[str] | None = None, *, kind: str = "contour",
                  metric: str = "loss", levels: int | Sequence[float] = 15, suptitle: str | None = None):
    """Several models' landscapes side by side, on one shared colour scale and level set.

    Draw every model on the same :class:`Plane` (``random_plane(model_a, seed=0)``) so the panels
    compare like with like.

    Args:
        surfaces: 2-D :class:`Landscape` objects (same grid recommended).
        titles: one per panel, e.g. ``["SGD", "SAM", "OBF"]``.
        kind: ``"contour"`` or ``"surface"`` (3-D).
        levels: how many shared levels, or their values.
    Returns:
        ``(fig, axes)`` with one axes per surface.

    Example:
        >>> fig, axes = plot_surfaces([s_sgd, s_sam, s_obf], titles=["SGD", "SAM", "OBF"])
    """
    import matplotlib.pyplot as plt

    surfaces = list(surfaces)
    if not surfaces:
        raise ValueError("surfaces is empty; pass at least one Landscape")
    for s in surfaces:
        _check_landscape(s, 2)
    if titles is not None and len(titles) != len(surfaces):
        raise ValueError(f"titles has {len(titles)} entries for {len(surfaces)} surfaces")
    if kind not in ("contour", "surface"):
        raise ValueError(f"Invalid kind: {kind!r} (allowed: 'contour' or 'surface')")
    values = [_metric(s, metric) for s in surfaces]
    lv = _levels(values, levels) if isinstance(levels, int) else np.asarray(levels, dtype=float)
    n = len(surfaces)
    kw = {"projection": "3d"} if kind == "surface" else {}
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), subplot_kw=kw, squeeze=False)
    axes = axes[0]
    for i, (s, ax) in enumerate(zip(surfaces, axes)):
        title = titles[i] if titles is not None else f"model {i + 1}"
        if kind == "contour":
            plot_contour(s, metric=metric, levels=lv, ax=ax, title=title, colorbar=False)
            if i:
                ax.set_ylabel("")  # shared β axis: label once, so panels do not overlap
        else:
            plot_surface_3d(s, metric=metric, ax=ax, title=title, vmin=float(lv[0]), vmax=float(lv[-1]))
            ax.set_zlim(float(lv[0]), float(lv[-1]))
    import matplotlib as mpl

    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin=float(lv[0]), vmax=float(lv[-1])), cmap="viridis")
    fig.colorbar(sm, ax=list(axes), label=_LABELS[metric], shrink=0.85)
    fig.suptitle(suptitle or f"{_LABELS[metric]} on a shared plane (same directions, same colour scale)")
    return fig, axes


def plot_density(densities: SpectralDensity | Sequence[SpectralDensity], *, labels: Sequence[str] | None = None,
                 ax=None, log: bool = True, title: str | None = None):
    """Hessian eigenvalue density (from :func:`spectral_density`), log scale by default.

    Returns:
        ``(fig, ax)``.
    """
    densities = [densities] if isinstance(densities, SpectralDensity) else list(densities)
    if not densities:
        raise ValueError("densities is empty")
    if labels is not None and len(labels) != len(densities):
        raise ValueError(f"labels has {len(labels)} entries for {len(densities)} densities")
    fig, ax = _new_axes(ax)
    for i, d in enumerate(densities):
        if not isinstance(d, SpectralDensity):
            raise TypeError(f"expected a SpectralDensity, got {type(d).__name__}")
        y = d.density.numpy()
        if log:
            y = np.where(y > 0, y, math.nan)  # empty regions are gaps, not log(0)
        ax.plot(d.grid.numpy(), y, label=None if labels is None else labels[i])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue (loss / parameter²)")
    ax.set_ylabel("density")
    ax.set_title(title or "Hessian eigenvalue density (stochastic Lanczos quadrature)")
    if labels is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig, ax
