"""Subcommands ``train``, ``demo`` and ``compare``: thin faces over :mod:`forgetting_sam.engine`.

    forgetting-sam train --config digits_sam --epochs 5 --rho 0.1
    torchrun --nproc_per_node 8 -m forgetting_sam train --config imagenet_vit_s32_obf --data-dir /data/imagenet
    forgetting-sam demo
    forgetting-sam compare runs/digits_sgd runs/digits_sam
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..engine import config as C

__all__ = ["register"]

_METAVARS = {"bool": "BOOL", "int": "N", "float": "X", "str": "NAME", "dict": "MAP", "list": "LIST"}
_GROUP_TITLES = {
    "data": "data", "model": "model", "loss": "loss", "optimizer": "base optimizer",
    "perturbation": "perturbation (SAM, ASAM, GSAM, OBF)", "schedule": "schedule and batch",
    "performance": "performance", "measures": "measures", "run": "run",
}


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--key value`` option per :class:`TrainConfig` field (``--batch-size`` and
    ``--batch_size`` both work). Only options given on the command line become overrides."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in C.config_fields():
        meta = f.metadata
        g = meta.get("group", "misc")
        if g not in groups:
            groups[g] = parser.add_argument_group(_GROUP_TITLES.get(g, g))
        kind = C._KINDS[f.name]
        default = f.default if f.default is not C.dataclasses.MISSING else f.default_factory()
        help_text = meta.get("help", "")
        if meta.get("choices"):
            help_text += f" {{{', '.join(meta['choices'])}}}"
        help_text += f" (default: {default!r})".replace("%", "%%")
        names = [f"--{f.name.replace('_', '-')}"]
        if "_" in f.name:
            names.append(f"--{f.name}")
        metavar = "PATH" if f.name in ("data_dir", "out_dir", "init_from") else _METAVARS[kind]
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)
        if kind == "bool":
            kwargs.update(nargs="?", const="true")  # `--quiet` alone means true
        groups[g].add_argument(*names, **kwargs)


def _overrides(args: argparse.Namespace) -> dict:
    keys = {f.name for f in C.config_fields()}
    return {k: v for k, v in vars(args).items() if k in keys}


def _default_out_dir(cfg_path: Path | None, values: dict) -> str:
    if cfg_path is not None:
        return str(Path("runs") / cfg_path.stem)
    return str(Path("runs") / f"{values.get('dataset', 'digits')}_{values.get('model', 'mlp')}_{values.get('wrapper', 'none')}")


def _resolve_train_config(args: argparse.Namespace) -> C.TrainConfig:
    overrides = _overrides(args)
    cfg_path = None
    if args.config is not None:
        cfg_path = C.resolve_preset(args.config)
    elif overrides.get("out_dir") and any(C.parse_value(k, overrides[k]) for k in ("resume", "resume_if_present")
                                          if k in overrides):
        saved = Path(overrides["out_dir"]) / "config.yaml"
        if saved.is_file():  # `train --resume --out-dir RUN` continues with the run's own config
            cfg_path = saved
    values = C.load_yaml_config(cfg_path) if cfg_path is not None else {}
    values.update(overrides)
    if values.get("out_dir") in (None, "", "none", "None"):
        values["out_dir"] = _default_out_dir(cfg_path, values)
    return C.config_from_dict(values, where=f" in {cfg_path}" if cfg_path else "")


def cmd_train(args: argparse.Namespace) -> int:
    if args.list_presets:
        names = C.list_presets()
        print("\n".join(names) if names else f"no presets found in {C.PRESETS_DIR}")
        return 0
    cfg = _resolve_train_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(C.config_to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
        return 0
    from ..engine import train

    result = train(cfg)
    s = result.summary
    if int(os.environ.get("RANK", "0")) == 0:
        acc = s.get("final_test_acc")
        print(f"{s['status']}: {s['epochs_done']}/{s['epochs']} epochs, test acc "
              f"{acc if acc is None else f'{acc:.4f}'}, {s['wall_time_s']:.1f} s → {result.out_dir}")
    return 0


# ------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..engine import compare_table, plot_runs, train

    if "OMP_NUM_THREADS" not in os.environ:
        # A small CNN on 8x8 images gains nothing from intra-op threads, and on a busy machine
        # OpenMP's spin-waiting can make 2 threads many times slower than 1.
        torch.set_num_threads(1)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    for n in names:
        if n not in C.DEMO_OPTIMIZERS:
            raise C.ConfigError(f"unknown demo optimizer {n!r}; valid: {', '.join(C.DEMO_OPTIMIZERS)}")
    out = Path(args.out)
    extra = {"quiet": True, "overwrite": True}
    if args.epochs is not None:
        extra["epochs"] = args.epochs
        extra["warmup_epochs"] = min(C.DEMO_BASE["warmup_epochs"], args.epochs - 1)
    if args.subset is not None:
        extra["subset"] = args.subset
    if args.label_noise is not None:
        extra["label_noise"] = args.label_noise
    base = C.demo_config("sgd", **extra)
    print(f"demo: a small CNN on scikit-learn's digits ({base.epochs} epochs, label noise "
          f"{base.label_noise:.0%}), one run per optimizer → {out}/")
    rows, curves = {}, {}
    for n in names:
        cfg = C.demo_config(n, out_dir=str(out / n), **extra)
        t0 = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - t0
        s = result.summary
        rows[n.upper()] = {**s, "wall_time_s": wall}
        curves[n.upper()] = result.history
        print(f"  {n.upper():5s} test acc {s['final_test_acc']:.4f}  ({wall:.1f} s)", flush=True)
    print()
    cols = (("wrapper", "wrapper"), ("rho", "rho"), ("final_train_acc", "train acc (noisy labels)"),
            ("final_test_acc", "test acc"), ("best_test_acc", "best test"), ("wall_time_s", "wall time (s)"))
    print(compare_table(rows, cols))
    plot = out / "curves.png"
    plot_runs(curves, plot, title="digits: SGD and the SAM family")
    print(f"\ncurves: {plot}")
    return 0


# ------------------------------------------------------------------------------ compare
def cmd_compare(args: argparse.Namespace) -> int:
    from ..engine import compare_table, plot_runs, read_metrics, read_summary

    rows, curves = {}, {}
    for d in args.runs:
        p = Path(d)
        summary = read_summary(p)
        records = read_metrics(p)
        if summary is None and not records:
            raise C.ConfigError(f"{p} holds no run (no summary.json or metrics.jsonl)")
        label = p.name or str(p)
        if label in rows:
            label = str(p)
        row = dict(summary or {})
        last = records[-1] if records else {}
        for key in ("forgot_frac", "hessian_top_eig"):
            if key in last:
                row[key] = last[key]
        row.setdefault("epochs_done", last.get("epoch"))
        rows[label] = row
        curves[label] = records
    print(compare_table(rows))
    if args.plot != "none":
        path = Path(args.plot)
        plot_runs(curves, path, title="compare")
        print(f"\ncurves: {path}")
    return 0


def register(subparsers) -> None:
    """Add ``train``, ``demo`` and ``compare`` to the ``forgetting-sam`` command."""
    p = subparsers.add_parser(
        "train", help="train a model from a preset and/or --key value options",
        description="Train one model. Values come from the dataclass defaults, then --config (with its "
                    "base: chain), then the options below. Every key of the config is an option.",
    )
    p.add_argument("--config", "-c", default=None, metavar="PRESET",
                   help="a YAML file or a preset name (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    d = subparsers.add_parser(
        "demo", help="the quickstart: SGD, SAM, ASAM, GSAM and OBF on digits, side by side",
        description="Train the same small CNN on scikit-learn's digits with each optimizer; print a table "
                    "of test accuracy and wall time; save the training curves to OUT/curves.png.")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--optimizers", default=",".join(C.DEMO_OPTIMIZERS),
                   help=f"comma-separated subset of {','.join(C.DEMO_OPTIMIZERS)}")
    d.add_argument("--epochs", type=int, default=None, help=f"epochs per run (default {C.DEMO_BASE['epochs']})")
    d.add_argument("--subset", type=int, default=None, help="cap the training set (quick checks)")
    d.add_argument("--label-noise", type=float, default=None,
                   help=f"symmetric label-noise rate (default {C.DEMO_BASE['label_noise']})")
    d.set_defaults(func=cmd_demo)

    c = subparsers.add_parser("compare", help="side-by-side table and curves of several runs",
                              description="Print one row per run directory and plot their curves together.")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `train`")
    c.add_argument("--plot", default="compare.png", help="where to save the plot, or 'none' (default: compare.png)")
    c.set_defaults(func=cmd_compare)
