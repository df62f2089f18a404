"""Floor 4 (faces): toy 2-D landscapes and an ipywidgets explorer for the notebooks.

The logic is in pure functions a test can reach without a browser:

* :func:`toy_losses` — analytic 2-D losses: a sharp and a flat basin side by side, and a
  curved valley;
* :func:`trajectory` — the path of GD, SAM, ASAM or GSAM on one of them, taken by the
  package's real optimizers on a 2-parameter tensor;
* :func:`perturbation` — the ε one of them would add at a point (for quiver plots).

:func:`explorer` wires sliders (ρ, learning rate, start point, steps) to a matplotlib plot
and redraws the trajectories when a slider moves. It uses plain ``ipywidgets.Output``,
so it renders in JupyterLab and classic Notebook without extra extensions.

:func:`direction_explorer` is the same idea for a real network (notebook 03): a slider moves
the weights along a landscape direction, ``w + α d``, and the plot shows the loss along the
line with the current point, and the predictions on a few examples there.
:func:`shifted_logits` is its pure part: the outputs at ``w + α d``, model untouched.

OBF is not among the toy optimizers: its ascent objective acts on a model's *outputs*
(logits), and a bare 2-D loss has none. The notebooks show OBF on logits and on real data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .optim import ASAM, GSAM, SAM

__all__ = ["TOY_OPTIMIZERS", "DirectionExplorer", "Explorer", "ToyLoss", "direction_explorer", "explorer",
           "contour_levels", "log_colorbar", "loss_grid", "make_optimizer", "perturbation", "shifted_logits", "toy_losses", "trajectory"]

TOY_OPTIMIZERS = ("gd", "sam", "asam", "gsam")
_COLORS = {"gd": "tab:blue", "sam": "tab:red", "asam": "tab:green", "gsam": "tab:purple"}
# Paths often run close together: a line style and marker each keep them apart in print too.
_STYLES = {"gd": ("-", "o"), "sam": ("--", "s"), "asam": (":", "^"), "gsam": ("-.", "D")}


@dataclass(frozen=True)
class ToyLoss:
    """A 2-D analytic loss ``fn(w) -> scalar`` for ``w`` of shape (2,), with plot limits."""

    name: str
    fn: Callable[[Tensor], Tensor]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    start: tuple[float, float]
    description: str

    def __call__(self, w: Tensor) -> Tensor:
        return self.fn(w)


def _bump(w: Tensor, center: tuple[float, float], width: float) -> Tensor:
    c = torch.tensor(center, dtype=w.dtype)
    return torch.exp(-((w - c) ** 2).sum(-1) / (2 * width**2))


def _two_basins(w: Tensor) -> Tensor:
    # A narrow dip at (-0.6, 0.7), deeper than the wide basin at (1, 0) whose slope it sits on.
    # Chosen (by trying) so that from the suggested start GD falls into the dip while SAM's
    # gradient, taken ρ uphill where the dip's pull has faded, carries it past to the wide basin.
    x, y = w[..., 0], w[..., 1]
    wide = torch.exp(-((x - 1.0) ** 2) / (2 * 1.8**2) - y**2 / (2 * 0.9**2))
    return 1.05 - 0.6 * _bump(w, (-0.6, 0.7), 0.18) - 0.8 * wide


def _valley(w: Tensor) -> Tensor:
    # A curved, steep-walled valley y = x²/4 whose floor slopes gently towards (0, 0).
    x, y = w[..., 0], w[..., 1]
    return 0.05 * x**2 + 2.0 * (y - 0.25 * x**2) ** 2


def toy_losses() -> dict[str, ToyLoss]:
    """The toy landscapes, by name: ``"two_basins"`` (sharp and flat basin) and ``"valley"``."""
    return {
        "two_basins": ToyLoss(
            "two_basins", _two_basins, (-2.5, 3.0), (-1.5, 2.0), (-2.0, 1.3),
            "sharp basin at (-0.6, 0.7), loss ≈ 0.05 (deeper); flat basin at (1, 0), loss 0.25",
        ),
        "valley": ToyLoss(
            "valley", _valley, (-3.0, 3.0), (-1.0, 3.0), (-2.8, 0.5),
            "curved valley along y = x²/4, steep walls, gentle floor, minimum at (0, 0)",
        ),
    }


def _get_loss(loss: str | ToyLoss) -> ToyLoss:
    if isinstance(loss, ToyLoss):
        return loss
    losses = toy_losses()
    if loss not in losses:
        raise ValueError(f"Unknown toy loss {loss!r} (choose from {', '.join(losses)})")
    return losses[loss]


def make_optimizer(name: str, params, *, rho: float, lr: float, alpha: float = 0.4,
                   eta: float = 0.01) -> torch.optim.Optimizer:
    """The package optimizer ``name`` (one of :data:`TOY_OPTIMIZERS`) over plain SGD."""
    if name == "gd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=rho, lr=lr)
    if name == "asam":
        return ASAM(params, torch.optim.SGD, rho=rho, eta=eta, lr=lr)
    if name == "gsam":
        return GSAM(params, torch.optim.SGD, rho=rho, alpha=alpha, lr=lr)
    if name == "obf":
        raise ValueError("OBF ascends an objective on logits; a 2-D toy loss has no logits "
                         "(see notebook 01's OBF section and notebook 02)")
    raise ValueError(f"Unknown toy optimizer {name!r} (choose from {', '.join(TOY_OPTIMIZERS)})")


def trajectory(loss_name: str | ToyLoss, optimizer_name: str, rho: float = 0.5,
               lr: float = 0.1, start: Sequence[float] | None = None, steps: int = 50,
               *, alpha: float = 0.4, eta: float = 0.01) -> np.ndarray:
    """The path of ``optimizer_name`` on a toy loss, one row per iterate.

    Uses the package optimizers on a float64 ``nn.Parameter`` of shape (2,), with the
    closure API (two evaluations per step for the SAM family).

    Args:
        loss_name: a key of :func:`toy_losses` (or a :class:`ToyLoss`).
        optimizer_name: "gd", "sam", "asam" or "gsam".
        rho, lr: perturbation radius and SGD learning rate (ρ is ignored by GD).
        start: the initial point; default the loss's suggested start.
        steps: number of optimizer steps.
        alpha, eta: GSAM's α and ASAM's η.
    Returns:
        (steps + 1, 2) array of iterates, ``start`` first.
    """
    loss = _get_loss(loss_name)
    w = torch.nn.Parameter(torch.tensor(start if start is not None else loss.start,
                                        dtype=torch.float64))
    opt = make_optimizer(optimizer_name, [w], rho=rho, lr=lr, alpha=alpha, eta=eta)

    def closure():
        opt.zero_grad()
        value = loss(w)
        value.backward()
        return value

    path = [w.detach().clone()]
    for _ in range(steps):
        opt.step(closure)
        path.append(w.detach().clone())
    return torch.stack(path).numpy()


def perturbation(loss_name: str | ToyLoss, point: Sequence[float], optimizer_name: str = "sam",
                 rho: float = 0.5, *, eta: float = 0.01) -> np.ndarray:
    """The ε that ``optimizer_name``'s ``first_step`` adds at ``point`` (shape (2,)).

    Computed by the package itself: ascent backward, ``first_step``, read ``w + ε − w``,
    ``restore``.
    """
    loss = _get_loss(loss_name)
    w = torch.nn.Parameter(torch.tensor(point, dtype=torch.float64))
    opt = make_optimizer(optimizer_name, [w], rho=rho, lr=0.0, eta=eta)
    if optimizer_name == "gd":
        return np.zeros(2)
    before = w.detach().clone()
    loss(w).backward()
    opt.first_step(zero_grad=True)
    eps = (w.detach() - before).numpy().copy()
    opt.restore()
    return eps


def loss_grid(loss_name: str | ToyLoss, n: int = 121) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, Z)``: the loss on an ``n × n`` grid over the loss's plot limits."""
    loss = _get_loss(loss_name)
    xs = torch.linspace(*loss.xlim, n, dtype=torch.float64)
    ys = torch.linspace(*loss.ylim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        Z = loss.fn(torch.stack([X, Y], dim=-1))
    return X.numpy(), Y.numpy(), Z.numpy()


def contour_levels(Z: np.ndarray, n: int = 30) -> dict:
    """``contourf`` keyword arguments for ``Z``: ``n`` log-spaced levels and a ``LogNorm`` when
    ``Z > 0`` everywhere (so a shallow minimum next to a deep one stays visible), linear otherwise."""
    from matplotlib.colors import LogNorm

    lo, hi = float(Z.min()), float(Z.max())
    if lo > 0:
        return {"levels": np.geomspace(lo, hi, n), "norm": LogNorm(lo, hi)}
    return {"levels": n}


def log_colorbar(fig, mappable, ax, label: str):
    """A colour bar for ``mappable`` with readable ticks: 1-2-5 steps (``%g`` labels) when its
    norm is logarithmic, matplotlib's default otherwise. Returns the colour bar."""
    from matplotlib.colors import LogNorm

    cb = fig.colorbar(mappable, ax=ax, label=label)
    norm = mappable.norm
    if isinstance(norm, LogNorm):
        decades = range(int(np.floor(np.log10(norm.vmin))), int(np.ceil(np.log10(norm.vmax))) + 1)
        ticks = [m * 10.0**e for e in decades for m in (1, 2, 5) if norm.vmin <= m * 10.0**e <= norm.vmax]
        cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        cb.minorticks_off()
    return cb


class _FigureWidget:
    """Display plumbing shared by the explorers: ``self.fig`` is redrawn into
    ``self.output`` (a plain ``ipywidgets.Output``, so no ipympl is needed) and the
    composed ``self.widget`` is what a notebook shows."""

    def _redraw(self) -> None:
        self.fig.canvas.draw_idle()
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display
            display(self.fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class Explorer(_FigureWidget):
    """Sliders for ρ, the learning rate, the start point and the number of steps, and a plot
    of the trajectories that redraws when they move.

    Attributes:
        sliders: dict of ipywidgets sliders: ``rho``, ``lr``, ``x0``, ``y0``, ``steps``.
        fig, ax: the matplotlib figure and axes.
        lines: dict optimizer name -> the ``Line2D`` of its trajectory.
        paths: dict optimizer name -> the (steps + 1, 2) array last drawn.
        widget: the ipywidgets box to display.
    """

    def __init__(self, loss_name: str = "two_basins",
                 optimizers: Sequence[str] = TOY_OPTIMIZERS, rho: float = 0.5, lr: float = 0.1,
                 steps: int = 60):
        import ipywidgets as W
        import matplotlib.pyplot as plt

        self.loss = _get_loss(loss_name)
        self.optimizers = tuple(optimizers)
        x0, y0 = self.loss.start
        slider = {"continuous_update": False, "style": {"description_width": "80px"}}
        self.sliders = {
            "rho": W.FloatSlider(value=rho, min=0.0, max=1.5, step=0.05, description="ρ", **slider),
            "lr": W.FloatLogSlider(value=lr, base=10, min=-3, max=0, step=0.1,
                                   description="learning rate", **slider),
            "x0": W.FloatSlider(value=x0, min=self.loss.xlim[0], max=self.loss.xlim[1],
                                step=0.05, description="start x", **slider),
            "y0": W.FloatSlider(value=y0, min=self.loss.ylim[0], max=self.loss.ylim[1],
                                step=0.05, description="start y", **slider),
            "steps": W.IntSlider(value=steps, min=1, max=300, step=1, description="steps",
                                 **slider),
        }
        with plt.ioff():
            self.fig, self.ax = plt.subplots(figsize=(7, 4.5))
        X, Y, Z = loss_grid(self.loss)
        cs = self.ax.contourf(X, Y, Z, **contour_levels(Z), cmap="viridis")
        log_colorbar(self.fig, cs, self.ax, "loss L(w) (log scale)" if Z.min() > 0 else "loss L(w)")
        self.ax.set_xlabel("w₁ (parameter units)")
        self.ax.set_ylabel("w₂ (parameter units)")
        self.ax.set_xlim(*self.loss.xlim)
        self.ax.set_ylim(*self.loss.ylim)
        self.lines = {name: self.ax.plot([], [], _STYLES.get(name, ("-", "."))[0],
                                         marker=_STYLES.get(name, ("-", "."))[1], ms=3, markevery=5,
                                         lw=1.6, color=_COLORS.get(name), label=name.upper())[0]
                      for name in self.optimizers}
        self.start_marker = self.ax.plot([], [], "w*", ms=12, mec="k")[0]
        self.ax.legend(loc="upper right", fontsize=8)
        self.paths: dict[str, np.ndarray] = {}
        self.output = W.Output()
        self.widget = W.HBox([W.VBox(list(self.sliders.values())), self.output])
        for s in self.sliders.values():
            s.observe(lambda change: self.update(), names="value")
        self.update()

    def values(self) -> dict[str, float]:
        """The sliders' current values."""
        return {k: s.value for k, s in self.sliders.items()}

    def update(self) -> None:
        """Recompute every trajectory from the sliders and redraw the plot."""
        v = self.values()
        start = (v["x0"], v["y0"])
        for name in self.optimizers:
            path = trajectory(self.loss, name, rho=v["rho"], lr=v["lr"], start=start,
                              steps=int(v["steps"]))
            self.paths[name] = path
            self.lines[name].set_data(path[:, 0], path[:, 1])
        self.start_marker.set_data([start[0]], [start[1]])
        self.ax.set_title(f"{self.loss.name}: ρ = {v['rho']:.2f}, lr = {v['lr']:.3g}, "
                          f"{int(v['steps'])} steps")
        self._redraw()


def explorer(loss_name: str = "two_basins", optimizers: Sequence[str] = TOY_OPTIMIZERS,
             rho: float = 0.5, lr: float = 0.1, steps: int = 60) -> Explorer:
    """Build the interactive trajectory explorer; display the returned object in a notebook.

    Example:
        >>> from forgetting_sam.widgets import explorer
        >>> explorer("valley")          # move the sliders: the paths redraw
    """
    return Explorer(loss_name, optimizers, rho=rho, lr=lr, steps=steps)


# ---------------------------------------------------------------------------------------------
# Moving a real network along a direction (notebook 03)
# ---------------------------------------------------------------------------------------------


def shifted_logits(model: torch.nn.Module, direction, inputs: Tensor, alpha: float) -> Tensor:
    """The model's outputs (eval mode) at the weights ``w + α d``; ``model`` is not modified.

    Args:
        model: any ``nn.Module``.
        direction: a :class:`~forgetting_sam.landscape.Direction` over the model's trainable
            parameters (e.g. ``random_direction(model)``, or one of a ``Plane``).
        inputs: a batch of inputs.
        alpha: the step along ``direction`` (direction units, as in ``loss_line``).
    Returns:
        The detached outputs, e.g. logits ``(N, K)``.
    """
    from torch.func import functional_call

    from .landscape import check_compatible

    check_compatible(model, direction)
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    shifted = {n: tensors[n].detach() + float(alpha) * d.to(tensors[n]) for n, d in direction.items()}
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return functional_call(model, shifted, (inputs,)).detach()
    finally:
        for m, flag in was_training.items():
            m.training = flag


class DirectionExplorer(_FigureWidget):
    """A slider for ``α`` that moves a network's weights to ``w + α d``, and a plot that shows
    the loss along the whole line (with the current point marked) and, for a few examples, the
    probability the model gives their label there (green: predicted correctly, red: not).

    The line is computed once with :func:`~forgetting_sam.landscape.loss_line`; each slider
    move costs one forward pass of ``batch``.

    Attributes:
        slider: the ipywidgets ``FloatSlider`` for α.
        line: the :class:`~forgetting_sam.landscape.Landscape` along the direction.
        fig, axes: the figure and its two axes (line, predictions).
        state: what the plot shows now: ``alpha``, ``loss``, ``accuracy``, ``probs`` (``(N, K)``
            softmax at ``w + α d``), ``label_prob`` and ``predicted`` of the shown examples.
        widget: the ipywidgets box to display.
    """

    def __init__(self, model: torch.nn.Module, direction, batch, loss_fn, *, span=(-1.0, 1.0),
                 steps: int = 41, n_show: int = 8, class_names: Sequence[str] | None = None,
                 title: str = ""):
        import ipywidgets as W
        import matplotlib.pyplot as plt

        from .landscape import loss_line

        self.model, self.direction, self.loss_fn = model, direction, loss_fn
        self.inputs, self.targets = batch
        self.n_show = min(int(n_show), len(self.targets))
        self.class_names = list(class_names) if class_names is not None else None
        self.title = title
        self.line = loss_line(model, direction, batch, loss_fn, span=span, steps=steps, progress=False)
        lo, hi = float(span[0]), float(span[1])
        self.slider = W.FloatSlider(value=min(max(0.0, lo), hi), min=lo, max=hi, step=(hi - lo) / (steps - 1),
                                    description="α", continuous_update=False,
                                    style={"description_width": "30px"}, layout=W.Layout(width="420px"))
        with plt.ioff():
            self.fig, self.axes = plt.subplots(1, 2, figsize=(11, 3.8))
        ax_line, ax_pred = self.axes
        ax_line.plot(self.line.alphas.numpy(), self.line.loss.numpy(), "k.-", ms=3, lw=1)
        self.marker = ax_line.plot([], [], "o", color="tab:red", ms=9)[0]
        ax_line.set_xlabel("α (step along the direction, direction units)")
        ax_line.set_ylabel("loss (nats)")
        ax_line.grid(alpha=0.3)
        self.bars = ax_pred.bar(np.arange(self.n_show), np.zeros(self.n_show), color="tab:green")
        ax_pred.axhline(0.5, color="k", ls=":", lw=0.8)
        ax_pred.set_ylim(0, 1)
        ax_pred.set_xticks(np.arange(self.n_show))
        ax_pred.set_xticklabels([f"#{i}\nlabel {self._name(int(self.targets[i]))}" for i in range(self.n_show)],
                                fontsize=8)
        ax_pred.set_ylabel("probability of the label")
        self.texts = [ax_pred.text(i, 0.02, "", ha="center", va="bottom", fontsize=8) for i in range(self.n_show)]
        self.fig.tight_layout()
        self.state: dict = {}
        self.output = W.Output()
        self.widget = W.VBox([self.slider, self.output])
        self.slider.observe(lambda change: self.update(), names="value")
        self.update()

    def _name(self, k: int) -> str:
        return self.class_names[k] if self.class_names else str(k)

    def update(self) -> None:
        """Recompute the outputs at the slider's α and redraw."""
        alpha = float(self.slider.value)
        logits = shifted_logits(self.model, self.direction, self.inputs, alpha)
        loss = float(self.loss_fn(logits, self.targets))
        probs = torch.softmax(logits.float(), -1)
        predicted = probs.argmax(-1)
        accuracy = float((predicted == self.targets).float().mean())
        shown = torch.arange(self.n_show)
        label_prob = probs[shown, self.targets[shown]]
        self.state = {"alpha": alpha, "loss": loss, "accuracy": accuracy, "probs": probs,
                      "label_prob": label_prob.numpy(), "predicted": predicted[shown].numpy()}
        self.marker.set_data([alpha], [loss])
        for i, (bar, text) in enumerate(zip(self.bars, self.texts)):
            ok = int(predicted[i]) == int(self.targets[i])
            bar.set_height(float(label_prob[i]))
            bar.set_color("tab:green" if ok else "tab:red")
            text.set_text(f"pred {self._name(int(predicted[i]))}")
        prefix = f"{self.title}: " if self.title else ""
        self.axes[0].set_title(f"{prefix}loss along w + α d (α = {alpha:+.2f}: loss {loss:.3f})")
        self.axes[1].set_title(f"predictions at α = {alpha:+.2f} (batch accuracy {accuracy:.1%})")
        self._redraw()


def direction_explorer(model: torch.nn.Module, direction, batch, loss_fn, *, span=(-1.0, 1.0),
                       steps: int = 41, n_show: int = 8, class_names: Sequence[str] | None = None,
                       title: str = "") -> DirectionExplorer:
    """Build the along-a-direction explorer for a trained network; display the result.

    Args:
        model: the trained network (never modified).
        direction: a :class:`~forgetting_sam.landscape.Direction`, e.g. ``random_plane(m)[0]``.
        batch: ``(inputs, targets)``; the first ``n_show`` examples are shown.
        loss_fn: ``loss_fn(logits, targets)``, batch mean (e.g. ``F.cross_entropy``).
        span, steps: the α range of the slider and of the loss line.

    Example:
        >>> from forgetting_sam.widgets import direction_explorer
        >>> direction_explorer(model, random_direction(model, seed=1), (x, y), F.cross_entropy)
    """
    return DirectionExplorer(model, direction, batch, loss_fn, span=span, steps=steps, n_show=n_show,
                             class_names=class_names, title=title)
