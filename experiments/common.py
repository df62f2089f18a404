"""What the three study scripts share: the base training setup, one resumable run, the run
loop with a progress bar, command-line options, and small writers for CSV and markdown.

A run lives in its own directory under ``runs/evidence/<study>/`` (ignored by git). A run whose
``summary.json`` says ``finished`` is skipped; an interrupted one continues from its last
checkpoint; anything else there is replaced. So every script can be stopped and restarted.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from forgetting_sam.engine import make_config, read_metrics, read_summary, train

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "results" / "evidence"
RUNS_DIR = REPO / "runs" / "evidence"

#: Every study trains on scikit-learn's digits with this setup (the demo's optimizer settings,
#: a batch of 128 and a 20 % validation split held out of the 1,347 training images).
BASE: dict[str, Any] = {
    "dataset": "digits", "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
    "lr_schedule": "cosine", "warmup_epochs": 1, "val_fraction": 0.2, "device": "cpu", "quiet": True,
}
EPOCHS = {"mlp": 30, "cnn": 20}
#: The small CNN at half its default width (16-32-64 channels) so that study 1 fits the budget.
MODEL_OPTIONS = {"mlp": {}, "cnn": {"width": 16}}

#: Fixed settings of each optimizer besides ρ (the digits presets' values).
WRAPPER_EXTRA: dict[str, dict[str, Any]] = {
    "sgd": {"wrapper": "none"},
    "sam": {"wrapper": "sam"},
    "asam": {"wrapper": "asam", "eta": 0.01},
    "gsam": {"wrapper": "gsam", "alpha": 0.4},
    "obf": {"wrapper": "obf", "gamma": 1.0},
    "gsam_obf": {"wrapper": "gsam_obf", "alpha": 0.4, "gamma": 1.0},
}
LABELS = {"sgd": "SGD", "sam": "SAM", "asam": "ASAM", "gsam": "GSAM", "obf": "OBF", "gsam_obf": "GSAM-OBF"}


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true",
                   help="tiny mode for tests: a few 1-epoch runs (not evidence)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where tables and figures go (default {RESULTS_DIR.relative_to(REPO)})")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help=f"where run directories go (default {RUNS_DIR.relative_to(REPO)}/<study>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args


def dirs(args: argparse.Namespace, study: str) -> tuple[Path, Path]:
    """(results folder, runs folder) for ``study``; smoke runs default to a ``smoke`` subfolder."""
    out = args.out or (RESULTS_DIR if not args.smoke else RUNS_DIR / "smoke" / "results")
    runs = args.runs_dir or (RUNS_DIR / ("smoke" if args.smoke else "") / study)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    return out, runs


def config_for(opt: str, **overrides: Any) -> dict[str, Any]:
    """The base setup with optimizer ``opt`` (a key of :data:`WRAPPER_EXTRA`) and overrides."""
    cfg = {**BASE, **WRAPPER_EXTRA[opt], **overrides}
    cfg.setdefault("epochs", EPOCHS[cfg.get("model", "mlp")])
    cfg.setdefault("model_options", MODEL_OPTIONS[cfg.get("model", "mlp")])
    if opt == "sgd":
        cfg.pop("rho", None)
    return cfg


def run_one(overrides: dict[str, Any], run_dir: Path,
            after: Callable[[Any, Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one run in ``run_dir`` unless it is finished; return its summary.

    ``after(result_or_None, run_dir)`` computes extra per-run numbers once (kept in
    ``extra.json``, merged into the returned dict); it gets the :class:`TrainResult` when the
    run was just trained, None when it was already there (then it must load the run itself).
    """
    summary = read_summary(run_dir) if (run_dir / "summary.json").is_file() else None
    result = None
    if summary is None or summary.get("status") != "finished":
        resumable = (run_dir / "checkpoints" / "last.pt").is_file()
        cfg = make_config(None, {**overrides, "out_dir": str(run_dir),
                                 "resume": resumable, "overwrite": not resumable})
        result = train(cfg)
        summary = result.summary
    out = dict(summary)
    last = read_metrics(run_dir)[-1] if (run_dir / "metrics.jsonl").is_file() else {}
    out["final_val_acc"] = last.get("val_acc")  # the summary holds test numbers only
    if after is not None:
        extra_path = run_dir / "extra.json"
        if extra_path.is_file():
            extra = json.loads(extra_path.read_text())
        else:
            extra = after(result, run_dir)
            extra_path.write_text(json.dumps(extra, indent=1))
        out.update(extra)
    return out


def run_all(plan: Sequence[tuple[str, dict[str, Any]]], runs_dir: Path, desc: str,
            after: Callable[[Any, Path], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Run every ``(name, overrides)`` of ``plan`` in order (one at a time), with a progress
    bar; return one record per run: the overrides, the summary, ``name`` and ``run_dir``."""
    from tqdm.auto import tqdm

    records = []
    t0 = time.perf_counter()
    for name, overrides in tqdm(plan, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True):
        run_dir = runs_dir / name
        s = run_one(overrides, run_dir, after)
        records.append({**{f"config.{k}": v for k, v in overrides.items()}, **s, "name": name,
                        "run_dir": str(run_dir)})
    print(f"{desc}: {len(plan)} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return records


# ------------------------------------------------------------------------------ writers
def _cell(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    return v


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in columns})


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
