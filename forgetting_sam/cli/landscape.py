"""Subcommands ``landscape`` and ``hessian``: thin faces over :mod:`forgetting_sam.landscape`.

    forgetting-sam landscape runs/digits_sam                          # 25×25 filter-normalized plane
    forgetting-sam landscape runs/digits_sgd --save-plane plane.pt    # draw a plane once ...
    forgetting-sam landscape runs/digits_obf --plane plane.pt         # ... and reuse it for every model
    forgetting-sam landscape runs/digits_sam --dim 1 --steps 51 --span -2 2
    forgetting-sam hessian runs/digits_sam --top-k 3 --trace --density

Both load a run with :func:`forgetting_sam.engine.load_run`, take a fixed, seeded slice of its
training (or test) set, and write a PNG plus the numbers (``.pt`` for the landscape, ``.json``
for the Hessian) next to it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

__all__ = ["register"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `forgetting-sam train`")
    p.add_argument("--checkpoint", default="last", help="checkpoint name in RUN_DIR/checkpoints or a .pt path "
                                                        "(default: last)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which data set (default: train)")
    p.add_argument("--samples", type=int, default=512, metavar="N",
                   help="examples used, a seeded random slice (default: 512)")
    p.add_argument("--batch-size", type=int, default=512, metavar="N",
                   help="examples per forward pass (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the slice and of the directions (default: 0)")
    p.add_argument("--mode", choices=("eval", "train"), default="eval",
                   help="layer mode: eval (running BatchNorm statistics) or train (batch statistics, running "
                        "statistics untouched) (default: eval)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    epilog = __doc__.split("\n\n")[1]
    p = subparsers.add_parser(
        "landscape", help="draw a run's loss landscape (1-D line or 2-D plane, filter-normalized)",
        description="Loss and accuracy of a trained run on a line or plane of weights w + α d₁ + β d₂.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    _common(p)
    p.add_argument("--dim", type=int, choices=(1, 2), default=2, help="1: a line, 2: a plane (default: 2)")
    p.add_argument("--steps", type=int, default=25, help="grid points per axis (default: 25)")
    p.add_argument("--span", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                   help="coordinate range per axis, in direction units (default: -1 1)")
    p.add_argument("--norm", choices=("filter", "layer", "weight", "none"), default="filter",
                   help="direction normalization (default: filter)")
    p.add_argument("--include-1d", action="store_true", help="also move biases and norm-layer parameters")
    p.add_argument("--plane", metavar="PATH", help="reuse directions saved with --save-plane (same architecture)")
    p.add_argument("--save-plane", metavar="PATH", help="save the directions for other runs")
    p.add_argument("--method", choices=("auto", "measure", "sequential", "vmap"), default="auto",
                   help="grid evaluation: auto picks by a pinned rule on CPU, by measuring elsewhere")
    p.add_argument("--kind", choices=("contour", "surface"), default="contour", help="2-D drawing (default: contour)")
    p.add_argument("--metric", choices=("loss", "accuracy"), default="loss", help="what to draw (default: loss)")
    p.add_argument("--out", metavar="PATH", help="PNG path (default: RUN_DIR/landscape.png); the numbers go "
                                                 "to the same name with .pt")
    p.set_defaults(func=cmd_landscape)

    h = subparsers.add_parser(
        "hessian", help="a run's Hessian: top eigenvalues (Lanczos), trace, spectral density",
        description="Curvature of a trained run's loss: top-k Hessian eigenvalues, Hutchinson trace and "
                    "the eigenvalue density (stochastic Lanczos quadrature).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    _common(h)
    h.add_argument("--top-k", type=int, default=1, metavar="K", help="eigenvalues to compute (default: 1)")
    h.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of the eigenvalues (default: 1e-3)")
    h.add_argument("--max-iter", type=int, default=None, metavar="N", help="Hessian-vector products at most")
    h.add_argument("--trace", action="store_true", help="also estimate the trace (Hutchinson)")
    h.add_argument("--trace-samples", type=int, default=64, metavar="N", help="Rademacher vectors (default: 64)")
    h.add_argument("--density", action="store_true", help="also draw the eigenvalue density")
    h.add_argument("--density-steps", type=int, default=64, metavar="N", help="Lanczos steps (default: 64)")
    h.add_argument("--density-vectors", type=int, default=1, metavar="N", help="random vectors (default: 1)")
    h.add_argument("--out", metavar="PATH", help="JSON of the results (default: RUN_DIR/hessian.json); the "
                                                 "density PNG goes next to it")
    h.set_defaults(func=cmd_hessian)


def _load(args):
    import torch

    from ..engine import load_run
    from . import UserError

    for name in ("samples", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    run = load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    dataset = run.data.train if args.split == "train" else run.data.test
    n = min(args.samples, len(dataset))
    if n == 0:
        raise UserError(f"the {args.split} set of {args.run_dir} is empty")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[:n].tolist()
    xs, ys = zip(*(dataset[i][:2] for i in idx))
    x, y = torch.stack(xs).to(args.device), torch.as_tensor(ys).to(args.device)
    bs = args.batch_size
    data = (x, y) if n <= bs else [(x[a:a + bs], y[a:a + bs]) for a in range(0, n, bs)]
    return run, data, n


def cmd_landscape(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .. import landscape as L
    from . import UserError

    # Checked here, where the input enters: the landscape floor's own ValueErrors are for callers.
    if args.steps < 2:
        raise UserError(f"--steps must be at least 2 to draw a line, got {args.steps}")
    if not all(math.isfinite(v) for v in args.span) or args.span[0] >= args.span[1]:
        raise UserError(f"--span needs two finite numbers LOW < HIGH, got {' '.join(map(str, args.span))}")
    run, data, n = _load(args)
    model = run.model
    norm = None if args.norm == "none" else args.norm
    if args.plane:
        path = Path(args.plane)
        if not path.is_file():
            raise UserError(f"no saved plane at {path}")
        try:
            plane = L.Plane.load(path)
        except ValueError:
            d = L.Direction.load(path)
            plane = L.Plane(d, d)
    else:
        plane = L.random_plane(model, seed=args.seed, norm=norm, include_1d=args.include_1d)
    if args.save_plane:
        plane.save(args.save_plane)
    kw = {"span": tuple(args.span), "steps": args.steps, "mode": args.mode, "method": args.method,
          "progress": not args.no_progress}
    if args.dim == 1:
        land = L.loss_line(model, plane.x, data, run.loss_fn, **kw)
        fig, _ = L.plot_line(land, metric=args.metric, title=f"{Path(args.run_dir).name}: {args.metric} along a "
                                                             f"{args.norm}-normalized direction")
    else:
        land = L.loss_surface(model, plane, data, run.loss_fn, **kw)
        title = f"{Path(args.run_dir).name} ({n} {args.split} examples)"
        if args.kind == "contour":
            fig, _ = L.plot_contour(land, metric=args.metric, title=title)
        else:
            fig, _ = L.plot_surface_3d(land, metric=args.metric, title=title)
    out = Path(args.out) if args.out else Path(args.run_dir) / "landscape.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    torch.save({"alphas": land.alphas, "betas": land.betas, "loss": land.loss, "accuracy": land.accuracy,
                "method": land.method, "mode": land.mode, "samples": n, "split": args.split}, out.with_suffix(".pt"))
    finite = land.loss[torch.isfinite(land.loss)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (math.nan, math.nan)
    centre = land.loss[land.loss.shape[0] // 2] if land.ndim == 1 else \
        land.loss[land.loss.shape[0] // 2, land.loss.shape[1] // 2]
    print(f"{land.ndim}-D landscape of {args.run_dir} on {n} {args.split} examples ({args.mode} mode): "
          f"loss at the grid centre {float(centre):.4g}, min {lo:.4g}, max {hi:.4g}; "
          f"{int(torch.isnan(land.loss).sum())} non-finite points")
    print(f"evaluated by {land.method} in {land.seconds:.2f}s ({land.reason})")
    print(f"plot: {out}\nnumbers: {out.with_suffix('.pt')}")
    if args.save_plane:
        print(f"plane: {args.save_plane}")
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    from .. import landscape as L
    from . import UserError

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise UserError(f"--tol must be a finite number > 0, got {args.tol}")
    for name in ("max_iter", "trace_samples", "density_steps", "density_vectors"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    run, data, n = _load(args)
    progress = not args.no_progress
    eig = L.hessian_eigenvalues(run.model, data, run.loss_fn, k=args.top_k, tol=args.tol, max_iter=args.max_iter,
                                mode=args.mode, seed=args.seed, progress=progress)
    result = {"run_dir": str(args.run_dir), "samples": n, "split": args.split, "mode": args.mode,
              "eigenvalues": [float(v) for v in eig.values], "hvp_count": eig.hvp_count,
              "converged": eig.converged}
    print(f"Hessian of {args.run_dir} on {n} {args.split} examples ({args.mode} mode)")
    print("top eigenvalues: " + ", ".join(f"{v:.6g}" for v in result["eigenvalues"])
          + f"  ({eig.hvp_count} Hessian-vector products, {'converged' if eig.converged else 'NOT converged'})")
    if args.trace:
        tr = L.hessian_trace(run.model, data, run.loss_fn, n_samples=args.trace_samples, mode=args.mode,
                             seed=args.seed, progress=progress)
        result.update(trace=tr.value, trace_std_error=None if math.isnan(tr.std_error) else tr.std_error)
        print(f"trace: {tr.value:.6g} ± {tr.std_error:.2g} ({args.trace_samples} Rademacher vectors)")
    out = Path(args.out) if args.out else Path(args.run_dir) / "hessian.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.density:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sd = L.spectral_density(run.model, data, run.loss_fn, steps=args.density_steps,
                                n_vectors=args.density_vectors, mode=args.mode, seed=args.seed, progress=progress)
        fig, _ = L.plot_density(sd, title=f"{Path(args.run_dir).name}: Hessian eigenvalue density")
        png = out.with_name(out.stem + "_density.png")
        fig.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(fig)
        result["density_plot"] = str(png)
        print(f"density plot: {png}")
    out.write_text(json.dumps(result, indent=2))
    print(f"numbers: {out}")
    return 0
