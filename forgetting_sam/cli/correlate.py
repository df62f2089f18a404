"""Subcommand ``correlate``: does a measure track generalization across runs? (Kendall τ)

    forgetting-sam correlate runs/digits_*                       # every measure, vs test accuracy
    forgetting-sam correlate runs/* --measure forgot_frac --target gap --bootstrap 1000
    forgetting-sam correlate runs/* --plot corr.png              # scatter plots, τ in each title

A thin face over :func:`forgetting_sam.forgetting.correlate`: it reads each run directory's
``summary.json`` and ``metrics.jsonl``, prints one table row per measure, and draws one scatter
plot per measure.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from ..engine.logging import text_table

__all__ = ["register"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "correlate",
        help="rank-correlate per-run measures (forgetting, sharpness) with generalization",
        description="Kendall τ between per-run measures and test accuracy (or the train–test gap) "
                    "across run directories written by `forgetting-sam train`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (3 or more)")
    p.add_argument("--measure", "-m", action="append", metavar="KEY",
                   help="measure key (repeatable), e.g. forgot_frac, kl, forgetting.mean_forgetting_count, "
                        "hessian_top_eig (default: every numeric measure the runs share)")
    p.add_argument("--target", default="test_acc", metavar="KEY",
                   help="test_acc (final test accuracy), gap (train − test accuracy) or any key "
                        "(default: test_acc)")
    p.add_argument("--method", choices=("kendall", "spearman"), default="kendall",
                   help="rank correlation (default: kendall τ-b)")
    p.add_argument("--reduce", choices=("mean", "last"), default="mean",
                   help="how per-epoch measures become one number per run (default: mean over training)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="bootstrap resamples over runs for a 95%% interval (default: 0, none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--plot", default="correlation.png", metavar="PATH",
                   help="PNG of the scatter plots (default: correlation.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.set_defaults(func=cmd_correlate)


def _fmt(v: float, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(results) -> str:
    """One line per :class:`CorrelationResult`: measure, n, τ, p, CI, skipped runs."""
    header = ["measure", "n", "tau", "p", "95% CI", "skipped"]
    rows = []
    for r in results:
        ci = f"[{_fmt(r.ci[0], '+.2f')}, {_fmt(r.ci[1], '+.2f')}]" if r.ci else "-"
        rows.append([r.measure, str(r.n), _fmt(r.tau, "+.3f"), _fmt(r.p_value, ".3g"), ci,
                     ", ".join(r.skipped) or "-"])
    return text_table(header, rows, left=(0, 5))


def _plot(results, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: works headless

    from ..forgetting.plots import plot_correlation

    n = len(results)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.5 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, r in zip(axes.flat, results):
        plot_correlation(r, ax=ax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def cmd_correlate(args: argparse.Namespace) -> int:
    from ..forgetting import correlate, correlate_all, run_numbers
    from . import UserError

    if len(args.runs) < 3:
        raise UserError(f"correlate needs at least 3 run directories, got {len(args.runs)}")
    try:
        runs = [run_numbers(d, reduce=args.reduce) for d in args.runs]
    except (FileNotFoundError, ValueError) as e:  # a mistyped or corrupt run directory
        raise UserError(str(e)) from None
    kwargs = {"method": args.method, "bootstrap": args.bootstrap, "seed": args.seed}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # the options are checked by argparse; what is left is about the runs given
            if args.measure:
                results = [correlate(runs, m, args.target, **kwargs) for m in args.measure]
            else:
                results = correlate_all(runs, None, args.target, **kwargs)
        except ValueError as e:  # too few runs carry the measure, an unknown key
            raise UserError(str(e)) from None
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if not results:
        raise UserError(f"no measure is shared by 3 or more runs with a {args.target!r}; "
                        "train with --track-forgetting true (or pass --measure KEY)")
    print(f"{len(runs)} runs, target {args.target}, {args.method} rank correlation")
    print(format_table(results))
    for note in notes:
        print(f"note: {note}")
    if not args.no_plot:
        _plot(results, Path(args.plot))
        print(f"scatter plots: {args.plot}")
    return 0
