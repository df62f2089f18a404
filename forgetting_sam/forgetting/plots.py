"""Plots of forgetting and output bias. Each returns ``(fig, ax)`` and draws into ``ax`` if given."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .bias import OutputBiasRecorder
from .correlate import CorrelationResult
from .events import ForgettingTracker

__all__ = [
    "plot_correlation",
    "plot_example_gallery",
    "plot_forgetting_curve",
    "plot_forgetting_histogram",
    "plot_output_bias",
]


def _axes(ax, figsize=(5, 3.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        fig = ax.figure
    return fig, ax


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_forgetting_curve(source, keys: Sequence[str] = ("forgot_frac",), *, x: str = "step",
                          smooth: int = 1, ax=None, label: str | None = None):
    """Forgetting over training.

    Args:
        source: a :class:`ForgettingTracker` (plots the fraction of each update's examples that
            had a forget event), or metric records — a list of dicts such as the lines of a
            run's ``metrics.jsonl`` — from which ``keys`` are drawn against ``x``.
        keys: which numbers to draw from records (e.g. ``"forgot_frac"``, ``"kl"``).
        x: the records' x key (``"step"`` or ``"epoch"``).
        smooth: moving-average window in points (1 = none).
        label: legend label prefix (e.g. the optimizer's name) to overlay runs on one ``ax``.

    Returns:
        ``(fig, ax)``.
    """
    fig, ax = _axes(ax)
    prefix = f"{label}: " if label else ""
    if isinstance(source, ForgettingTracker):
        h = source.history()
        steps, y = h["step"], h["forgot_frac"]
        xs = steps[len(steps) - len(_smooth(y, smooth)):]
        ax.plot(xs, _smooth(y, smooth), label=f"{prefix}forget events / examples")
        ax.set_xlabel("step (tracker update)")
        ax.set_ylabel("forget events per example presented")
        ax.set_title("Forgetting events over training")
    else:
        records = list(source)
        if not records or not all(isinstance(r, Mapping) for r in records):
            raise TypeError("source must be a ForgettingTracker or a non-empty list of metric dicts")
        drawn = 0
        for key in keys:
            pts = [(r[x], r[key]) for r in records
                   if isinstance(r.get(x), (int, float)) and isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = map(np.asarray, zip(*pts))
            ys_s = _smooth(ys, smooth)
            ax.plot(xs[len(xs) - len(ys_s):], ys_s, label=f"{prefix}{key}")
            drawn += 1
        if not drawn:
            raise ValueError(f"no record carries both {x!r} and any of {list(keys)}; "
                             f"keys present: {sorted(set().union(*records))}")
        ax.set_xlabel(x)
        ax.set_ylabel(", ".join(keys) + " (fraction / nats)")
        ax.set_title("Perturbed forgetting over training")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig, ax


def plot_forgetting_histogram(tracker: ForgettingTracker, *, ax=None, log: bool = False):
    """Histogram of forgetting counts over the presented examples.

    Never-learned examples are drawn as a separate bar at the right (they count as forgotten at
    every presentation, so they would otherwise mix with often-forgotten ones).

    Returns:
        ``(fig, ax)``.
    """
    fig, ax = _axes(ax)
    counts = tracker.forgetting_counts().cpu()
    presented = tracker.presented.cpu()
    learned = tracker.ever_learned.cpu()
    c = counts[presented & learned].numpy()
    n_never = int((presented & ~learned).sum())
    h = np.bincount(c) if c.size else np.zeros(1, dtype=int)
    ax.bar(np.arange(len(h)), h, width=0.8, label="learned examples")
    if n_never:
        ax.bar([len(h) + 0.5], [n_never], width=0.8, color="tab:red", label="never learned")
        ticks = list(range(len(h))) + [len(h) + 0.5]
        labels = [str(i) for i in range(len(h))] + ["never"]
        if len(ticks) > 20:  # keep the tick labels readable
            keep = set(np.linspace(0, len(h) - 1, 10).astype(int).tolist())
            ticks = [t for i, t in enumerate(ticks[:-1]) if i in keep] + [ticks[-1]]
            labels = [str(int(t)) for t in ticks[:-1]] + ["never"]
        ax.set_xticks(ticks, labels)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("forgetting events per example")
    ax.set_ylabel("examples")
    s = tracker.summary()
    ax.set_title(f"Forgetting counts ({s['unforgettable']} of {s['presented']} unforgettable)")
    ax.legend(fontsize="small")
    return fig, ax


def _as_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An (H, W) or (H, W, 3) image from one example, or raise if it is not image-like."""
    if x.ndim == 1:
        side = math.isqrt(x.size)
        if side * side != x.size:
            raise ValueError(f"a flat example of {x.size} features is not a square image")
        return x.reshape(side, side), "gray_r"
    if x.ndim == 3:
        if x.shape[0] in (1, 3):  # CHW -> HWC
            x = np.moveaxis(x, 0, -1)
        if x.shape[-1] == 1:
            return x[..., 0], "gray_r"
        lo, hi = x.min(), x.max()
        return (x - lo) / (hi - lo + 1e-12), None  # colour images: rescale to [0, 1] for imshow
    if x.ndim == 2:
        return x, "gray_r"
    raise ValueError(f"cannot show an example of shape {x.shape} as an image")


def plot_example_gallery(tracker: ForgettingTracker, images, labels=None, *, k: int = 8,
                         class_names: Sequence[str] | None = None, fig=None):
    """Two rows: the ``k`` most-forgotten examples and ``k`` unforgettable ones.

    Unforgettable examples are those learned earliest (smallest first-learned step) among the
    learned-and-never-forgotten. Each tile is titled with its dataset index, its label and its
    forgetting count ("never learned" for examples never classified correctly — with noisy
    labels, these are often the mislabelled ones).

    Args:
        tracker: a trained :class:`ForgettingTracker`.
        images: indexable by dataset index: a tensor/array ``(N, H, W)``, ``(N, C, H, W)`` or
            ``(N, D)`` with ``D`` a square (8×8 digits: ``D = 64``). Non-image data are shown
            as the feature vector's bar plot.
        labels: optional ``(N,)`` class indices, shown in the titles.
        k: examples per row.

    Returns:
        ``(fig, axes)``, axes an array of shape ``(2, k)``.
    """
    import matplotlib.pyplot as plt

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Invalid k: {k!r}; use a positive number of examples per row")
    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if len(imgs) != tracker.num_examples:
        raise ValueError(f"images holds {len(imgs)} examples but the tracker {tracker.num_examples}; "
                         "pass the training set the tracker saw, in dataset order")
    if labels is not None:
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    counts = tracker.forgetting_counts().cpu().numpy()
    worst = tracker.most_forgotten(k).cpu().numpy()
    unf = tracker.unforgettable().cpu()
    first = tracker.first_learned_step.cpu()[unf]
    best = unf[torch.sort(first, stable=True).indices[:k]].numpy()
    never = set(tracker.never_learned().cpu().tolist())

    if fig is None:
        fig = plt.figure(figsize=(1.4 * k, 3.6), layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    for row, (idxs, name) in enumerate(((worst, "most forgotten"), (best, "unforgettable"))):
        for j in range(k):
            ax = axes[row, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(idxs):
                ax.axis("off")
                continue
            i = int(idxs[j])
            try:
                img, cmap = _as_image(imgs[i])
                ax.imshow(img, cmap=cmap, interpolation="nearest")
            except ValueError:
                ax.bar(np.arange(imgs[i].size), imgs[i].ravel())
            lab = ""
            if labels is not None:
                y = int(labels[i])
                lab = f" {class_names[y] if class_names else y}"
            cnt = "never learned" if i in never else f"forgot {int(counts[i])}×"
            ax.set_title(f"#{i}{lab}\n{cnt}", fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("Most-forgotten (top) and unforgettable (bottom) training examples")
    return fig, axes


def plot_output_bias(source, *, ax=None, class_names: Sequence[str] | None = None,
                     what: str = "mean_prediction"):
    """Output bias over training from an :class:`OutputBiasRecorder` (or its ``history()``).

    ``what``: ``"mean_prediction"`` (one line per class, with the uniform level dashed),
    ``"per_class_bias"`` (logit units), or ``"entropy"`` (mean per-example entropy and the
    entropy of the mean prediction, against ``log K``).

    Returns:
        ``(fig, ax)``.
    """
    h = source.history() if isinstance(source, OutputBiasRecorder) else source
    if not isinstance(h, Mapping) or "mean_prediction" not in h:
        raise TypeError("source must be an OutputBiasRecorder or its history() dict")
    if len(h["step"]) == 0:
        raise ValueError("the recorder has no rows yet; call update() (and flush()) first")
    fig, ax = _axes(ax, figsize=(6, 3.5))
    steps = h["step"]
    k = h["mean_prediction"].shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    if what in ("mean_prediction", "per_class_bias"):
        data = h[what]
        for c in range(k):
            ax.plot(steps, data[:, c], label=names[c], lw=1)
        if what == "mean_prediction":
            ax.axhline(1.0 / k, color="k", ls="--", lw=1, label="uniform")
            ax.set_ylabel("mean predicted probability")
            ax.set_title("Mean prediction over training (TV from uniform: "
                         f"{h['bias_uniform'][0]:.3f} → {h['bias_uniform'][-1]:.3f})")
        else:
            ax.axhline(0.0, color="k", ls="--", lw=1)
            ax.set_ylabel("class logit mean − overall mean (logits)")
            ax.set_title("Per-class output bias over training")
        if k <= 20:  # outside the axes: ten crossing lines leave no free corner
            ax.legend(fontsize="x-small", ncol=1 if k <= 10 else 2, title="class",
                      loc="upper left", bbox_to_anchor=(1.01, 1.0))
    elif what == "entropy":
        ax.plot(steps, h["entropy"], label="mean per-example entropy")
        ax.plot(steps, h["entropy_of_mean"], label="entropy of mean prediction")
        ax.axhline(h["max_entropy"], color="k", ls="--", lw=1, label="log K (uniform)")
        ax.set_ylabel("entropy (nats)")
        ax.set_title("Prediction entropy over training")
        ax.legend(fontsize="small")
    else:
        raise ValueError(f"Invalid what: {what!r}; use 'mean_prediction', 'per_class_bias' or 'entropy'")
    ax.set_xlabel("step (recorder updates)")
    ax.grid(alpha=0.3)
    return fig, ax


def plot_correlation(result: CorrelationResult, *, ax=None, annotate: bool = True):
    """Scatter of a measure against the target over runs, with τ (and p, CI) in the title.

    Returns:
        ``(fig, ax)``.
    """
    if not isinstance(result, CorrelationResult):
        raise TypeError(f"result must be a CorrelationResult from correlate(), got {type(result).__name__}")
    fig, ax = _axes(ax)
    ax.scatter(result.x, result.y)
    if annotate and len(result.runs) <= 30:
        for name, xi, yi in zip(result.runs, result.x, result.y):
            ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    sym = "τ" if result.method == "kendall" else "ρ"
    title = f"{result.method} {sym} = {result.tau:.3f} (p = {result.p_value:.3g}, n = {result.n})"
    if result.ci is not None:
        title += f"\nbootstrap CI [{result.ci[0]:.2f}, {result.ci[1]:.2f}]"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(result.measure)
    target_label = {"test_acc": "test accuracy", "gap": "train − test accuracy gap"}
    ax.set_ylabel(target_label.get(result.target, result.target))
    ax.grid(alpha=0.3)
    return fig, ax
