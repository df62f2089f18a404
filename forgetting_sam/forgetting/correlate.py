"""Does a measure track generalization across runs? Rank correlation over a set of runs.

Vani et al. claim forgetting correlates with generalization better than flatness does. Test it
on your own runs: each run gives one number for the measure (perturbed forgetting, forgetting
events, sharpness, ...) and one for the target (test accuracy or the train–test gap), and
Kendall's τ (scipy.stats.kendalltau, τ-b) says how well the two orderings agree.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TARGETS", "CorrelationResult", "correlate", "correlate_all", "run_numbers"]

#: Target names with a built-in meaning; any other key of the runs works too.
TARGETS = ("test_acc", "gap")
_GAP_KEYS = ("gap", "train_test_gap", "generalization_gap")
_FINAL_KEYS = ("train_acc", "test_acc", "train_loss", "test_loss")
# Keys that describe a run's setup or outcome rather than measure it: correlate_all leaves
# them out of its default list of measures (by prefix of the key, or by its last dotted part).
_NOT_MEASURE_PREFIXES = ("epoch", "step", "lr", "rho", "alpha", "seed", "wall_time", "time",
                         "throughput", "batch_size", "micro_batch_size", "num_", "world_size",
                         "train_", "test_", "final_", "best_", "val_", "skipped", "name",
                         "config.", "extra_eval.")
_NOT_MEASURE_NAMES = ("num_examples", "updates", "presented", "steps", "epochs")


def _is_measure_key(key: str, target: str) -> bool:
    if key == target or key in _GAP_KEYS or key.endswith((".last", ".mean", ".max")):
        return False
    return not key.startswith(_NOT_MEASURE_PREFIXES) and key.rsplit(".", 1)[-1] not in _NOT_MEASURE_NAMES

@dataclass
class CorrelationResult:
    """One measure against one target across runs.

    Attributes:
        tau: the rank correlation (Kendall τ-b, or Spearman ρ with ``method="spearman"``),
            in ``[−1, 1]``; NaN when one side is constant.
        p_value: scipy's two-sided p-value for no association.
        n: runs used.
        skipped: names of runs left out (measure or target missing or not finite).
        ci: ``(low, high)`` bootstrap percentile interval of ``tau`` over runs, or None.
        measure, target, method: what was correlated, and how.
        x, y: the measure and target values of the runs used, in ``runs`` order.
        runs: names of the runs used.
    """

    tau: float
    p_value: float
    n: int
    skipped: list[str]
    ci: tuple[float, float] | None
    measure: str
    target: str
    method: str = "kendall"
    x: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    runs: list[str] = field(default_factory=list, repr=False)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_numbers(run_dir: str | os.PathLike, *, reduce: str = "mean") -> dict[str, Any]:
    """The per-run numbers of one run directory, as a flat dict (files only: the model is
    opened by ``forgetting_sam.engine.load_run``, the one ``load_run`` of the package).

    Reads ``summary.json`` (nested dicts flattened to dotted keys) and ``metrics.jsonl`` (one
    JSON record per line). Every numeric key of the summary is kept as is; a numeric key that
    appears only in the metrics records is reduced over the records that carry it —
    ``reduce="mean"`` (over training) or ``"last"`` — and also kept as ``KEY.last``,
    ``KEY.mean`` and ``KEY.max``. Accuracies and losses (``train_acc``, ``test_acc``,
    ``train_loss``, ``test_loss``) are the final values: the summary's ``final_test_acc`` etc.
    (as the engine's ``RunLogger`` writes them), else the last record's. ``name`` is the
    directory name.

    Raises:
        FileNotFoundError: neither file exists in ``run_dir``.
    """
    if reduce not in ("mean", "last"):
        raise ValueError(f"Invalid reduce: {reduce!r}; use 'mean' or 'last'")
    path = Path(run_dir)
    summary_path, metrics_path = path / "summary.json", path / "metrics.jsonl"
    if not summary_path.exists() and not metrics_path.exists():
        raise FileNotFoundError(
            f"{path} holds neither summary.json nor metrics.jsonl; pass the directory of a run "
            "written by the engine"
        )
    run: dict[str, Any] = {}
    if metrics_path.exists():
        series: dict[str, list[float]] = {}
        with open(metrics_path) as f:
            for line_no, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{metrics_path}:{line_no} is not valid JSON ({e})") from None
                for k, v in _flatten(rec).items():
                    if _is_number(v):
                        series.setdefault(k, []).append(float(v))
        for k, vals in series.items():
            run[f"{k}.last"] = vals[-1]
            run[f"{k}.mean"] = float(np.mean(vals))
            run[f"{k}.max"] = float(np.max(vals))
            # accuracies and losses are targets: the end of training, never an average
            run[k] = vals[-1] if (reduce == "last" or k in _FINAL_KEYS) else run[f"{k}.mean"]
    if summary_path.exists():
        with open(summary_path) as f:
            summary = json.load(f)
        if not isinstance(summary, Mapping):
            raise ValueError(f"{summary_path} must hold a JSON object, got {type(summary).__name__}")
        flat = _flatten(summary)
        run.update(flat)  # the run's own final numbers win over reductions
        for k in _FINAL_KEYS:  # the engine writes final_test_acc etc.; expose them as test_acc
            if _is_number(flat.get(f"final_{k}")) and k not in flat:
                run[k] = flat[f"final_{k}"]
    run["name"] = path.name or str(path)
    return run


def _as_runs(runs) -> list[dict[str, Any]]:
    if isinstance(runs, (str, os.PathLike, Mapping)):
        raise TypeError("runs must be a list of run directories or dicts (one per run), not a single run")
    out = []
    for i, r in enumerate(runs):
        if isinstance(r, (str, os.PathLike)):
            out.append(run_numbers(r))
        elif isinstance(r, Mapping):
            d = _flatten(r)
            d.setdefault("name", f"run{i}")
            d["name"] = str(d["name"])
            out.append(d)
        else:
            raise TypeError(f"runs[{i}] must be a run directory or a dict of numbers, got {type(r).__name__}")
    return out


def _value(run: Mapping[str, Any], key: str) -> float | None:
    v = run.get(key)
    if key == "gap" and v is None:
        for alt in _GAP_KEYS[1:]:
            if _is_number(run.get(alt)):
                v = run[alt]
                break
        else:
            tr, te = run.get("train_acc"), run.get("test_acc")
            if _is_number(tr) and _is_number(te):
                v = tr - te  # the train–test gap, in the runs' accuracy units
    if not _is_number(v) or not math.isfinite(v):
        return None
    return float(v)


def _statistic(method: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    with warnings.catch_warnings():
        # constant inputs make scipy warn and return NaN; NaN says it well enough here
        warnings.simplefilter("ignore")
        if method == "kendall":
            r = stats.kendalltau(x, y)
        else:
            r = stats.spearmanr(x, y)
    return float(r.statistic), float(r.pvalue)


def correlate(
    runs: Iterable[str | os.PathLike | Mapping[str, Any]],
    measure: str,
    target: str = "test_acc",
    *,
    method: str = "kendall",
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> CorrelationResult:
    """Rank correlation between a per-run measure and generalization, across runs.

    Args:
        runs: run directories (read with :func:`run_numbers`) or dicts of per-run numbers
            (nested dicts are flattened to dotted keys; an optional ``name`` key names the run).
        measure: the key of the per-run measure, e.g. ``"forgot_frac"``,
            ``"forgetting.mean_forgetting_count"``, ``"sharpness.top_eigenvalue"``.
        target: ``"test_acc"``, ``"gap"`` (the train–test gap: a ``gap`` /
            ``train_test_gap`` key, else ``train_acc − test_acc``), or any other key.
        method: ``"kendall"`` (τ-b, ``scipy.stats.kendalltau``) or ``"spearman"``.
        bootstrap: number of bootstrap resamples of the runs for a confidence interval
            (0 = none). Resamples where τ is undefined (all tied) are dropped.
        seed: seeds the bootstrap (same seed → same interval).
        confidence: level of the bootstrap percentile interval.

    Returns:
        :class:`CorrelationResult`.

    Raises:
        ValueError: fewer than 3 runs carry both numbers, or a bad argument.

    Runs missing the measure or target (or with NaN/inf there) are listed in ``.skipped`` and
    named in a ``UserWarning``; they are never used.

    Example:
        >>> r = correlate(["runs/sam", "runs/obf", "runs/sgd"], "forgot_frac", "test_acc")
        >>> r.tau, r.p_value
    """
    if method not in ("kendall", "spearman"):
        raise ValueError(f"Invalid method: {method!r}; use 'kendall' or 'spearman'")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"Invalid bootstrap: {bootstrap!r}; use a number of resamples ≥ 0")
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence!r}; use a level in (0, 1), e.g. 0.95")
    if not isinstance(measure, str) or not isinstance(target, str):
        raise TypeError("measure and target must be key names (str)")
    loaded = _as_runs(runs)
    xs, ys, used, skipped, reasons = [], [], [], [], []
    for run in loaded:
        x, y = _value(run, measure), _value(run, target)
        if x is None or y is None:
            skipped.append(run["name"])
            missing = [k for k, v in ((measure, x), (target, y)) if v is None]
            reasons.append(f"{run['name']} (no finite {' / '.join(missing)})")
            continue
        xs.append(x)
        ys.append(y)
        used.append(run["name"])
    if skipped:
        warnings.warn(f"correlate({measure!r}, {target!r}) skipped {len(skipped)} run(s): "
                      + ", ".join(reasons), UserWarning, stacklevel=2)
    if len(xs) < 3:
        raise ValueError(
            f"correlate needs at least 3 runs with both {measure!r} and {target!r}, got {len(xs)} "
            f"(of {len(loaded)} given{'; skipped: ' + ', '.join(reasons) if reasons else ''})"
        )
    x, y = np.asarray(xs), np.asarray(ys)
    tau, p = _statistic(method, x, y)
    ci = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        taus = []
        for _ in range(bootstrap):
            i = rng.integers(0, len(x), len(x))
            t, _ = _statistic(method, x[i], y[i])
            if math.isfinite(t):
                taus.append(t)
        if taus:
            a = (1 - confidence) / 2
            lo, hi = np.quantile(taus, [a, 1 - a])
            ci = (float(lo), float(hi))
        else:
            ci = (float("nan"), float("nan"))
    return CorrelationResult(tau=tau, p_value=p, n=len(xs), skipped=skipped, ci=ci,
                             measure=measure, target=target, method=method, x=x, y=y, runs=used)


def correlate_all(
    runs: Iterable[str | os.PathLike | Mapping[str, Any]],
    measures: Iterable[str] | None = None,
    target: str = "test_acc",
    **kwargs,
) -> list[CorrelationResult]:
    """:func:`correlate` for several measures; skips (with a warning) those under 3 runs.

    ``measures=None`` takes every numeric key present in at least 3 runs except the target,
    accuracies and losses, setup and bookkeeping numbers (epochs, steps, lr, rho, seeds, wall
    time, parameter counts, ``extra_eval.*``, the tracker's ``num_examples`` / ``updates`` /
    ``presented``) and the ``.last/.mean/.max`` variants.
    """
    loaded = _as_runs(runs)
    if measures is None:
        seen: dict[str, int] = {}
        for run in loaded:
            for k, v in run.items():
                if _is_number(v):
                    seen[k] = seen.get(k, 0) + 1
        measures = sorted(k for k, c in seen.items() if c >= 3 and _is_measure_key(k, target))
    results = []
    for m in measures:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                results.append(correlate(loaded, m, target, **kwargs))
            except ValueError as e:
                if "at least 3 runs" not in str(e):
                    raise
                warnings.warn(f"measure {m!r} left out: {e}", UserWarning, stacklevel=2)
                continue
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=2)
    return results
