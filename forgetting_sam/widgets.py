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

__all__ = ["TOY_OPTIMIZERS", "Explorer", "ToyLoss", "explorer", "loss_grid", "make_optimizer",
           "perturbation", "toy_losses", "trajectory"]

TOY_OPTIMIZERS = ("gd", "sam", "asam", "gsam")
_COLORS = {"gd": "tab:blue", "sam": "tab:red", "asam": "tab:green", "gsam": "tab:purple"}


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
    # A narrow, deeper dip at (-1, 0) on the side of a wide, shallower basin at (1, 0).
    return 1.0 - 0.6 * _bump(w, (-1.0, 0.0), 0.25) - 0.8 * _bump(w, (1.0, 0.0), 1.5)


def _valley(w: Tensor) -> Tensor:
    # A curved, steep-walled valley y = x²/4 whose floor slopes gently towards (0, 0).
    x, y = w[..., 0], w[..., 1]
    return 0.05 * x**2 + 2.0 * (y - 0.25 * x**2) ** 2


def toy_losses() -> dict[str, ToyLoss]:
    """The toy landscapes, by name: ``"two_basins"`` (sharp and flat basin) and ``"valley"``."""
    return {
        "two_basins": ToyLoss(
            "two_basins", _two_basins, (-2.5, 3.0), (-2.0, 2.0), (-0.7, 0.6),
            "sharp basin near (-1, 0), loss ≈ 0.07 (deeper); flat basin at (1, 0), loss 0.20",
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


class Explorer:
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
        cs = self.ax.contourf(X, Y, Z, levels=30, cmap="viridis")
        self.fig.colorbar(cs, ax=self.ax, label="loss L(w)")
        self.ax.set_xlabel("w₁ (parameter units)")
        self.ax.set_ylabel("w₂ (parameter units)")
        self.ax.set_xlim(*self.loss.xlim)
        self.ax.set_ylim(*self.loss.ylim)
        self.lines = {name: self.ax.plot([], [], ".-", ms=3, lw=1.2, color=_COLORS.get(name),
                                         label=name.upper())[0] for name in self.optimizers}
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
        self.fig.canvas.draw_idle()
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display
            display(self.fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def explorer(loss_name: str = "two_basins", optimizers: Sequence[str] = TOY_OPTIMIZERS,
             rho: float = 0.5, lr: float = 0.1, steps: int = 60) -> Explorer:
    """Build the interactive trajectory explorer; display the returned object in a notebook.

    Example:
        >>> from forgetting_sam.widgets import explorer
        >>> explorer("valley")          # move the sliders: the paths redraw
    """
    return Explorer(loss_name, optimizers, rho=rho, lr=lr, steps=steps)
