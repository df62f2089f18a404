"""Run records: ``metrics.jsonl`` and ``metrics.csv`` (one row per epoch), ``summary.json``, and
PNG plots of the curves — for one run, or several side by side (``forgetting-sam compare``).

Only rank 0 writes (pass ``enabled=False`` elsewhere). Every file is rewritten through a
temporary file and ``os.replace``, so a reader never sees half a line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserInputError

__all__ = [
    "CorruptRunFileError",
    "METRICS_CSV",
    "METRICS_JSONL",
    "SUMMARY_JSON",
    "RunLogger",
    "compare_table",
    "text_table",
    "plot_curves",
    "plot_runs",
    "read_metrics",
    "read_summary",
]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"

# Curves drawn by default, with their panel titles; missing keys are skipped.
CURVE_PANELS = (
    (("train_loss", "test_loss"), "loss"),
    (("train_acc", "test_acc"), "accuracy"),
    (("lr",), "learning rate"),
    (("rho",), "ρ"),
    (("forgot_frac", "loss_increase", "kl"), "perturbed forgetting"),
    (("hessian_top_eig",), "top Hessian eigenvalue"),
)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, NaN/Inf kept as strings JSON can hold."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunLogger:
    """Appends one record per epoch to ``metrics.jsonl`` and mirrors it to ``metrics.csv``.

    Args:
        out_dir: the run directory (``None`` or ``enabled=False``: a logger that writes nothing
            but still keeps ``records`` in memory).
        enabled: False on non-zero ranks.
    Example:
        >>> log = RunLogger("runs/x")
        >>> log.log({"epoch": 1, "train_loss": 0.7, "test_acc": 0.81})
    """

    def __init__(self, out_dir: str | os.PathLike | None, enabled: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.enabled = enabled and self.out_dir is not None
        self.records: list[dict[str, Any]] = []
        if self.enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def restore(self, upto_epoch: int) -> None:
        """On resume: keep the records of epochs ``≤ upto_epoch`` (drop any written after the
        checkpoint) and rewrite both files to match."""
        if self.out_dir is None:
            return
        self.records = [r for r in read_metrics(self.out_dir) if r.get("epoch", 0) <= upto_epoch]
        if self.enabled:
            self._flush()

    def log(self, record: dict[str, Any]) -> None:
        """Add one record (a flat dict of numbers and strings)."""
        self.records.append(_clean(dict(record)))
        if self.enabled:
            self._flush()

    def _flush(self) -> None:
        _atomic_write(self.out_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.records))
        columns: list[str] = []
        for r in self.records:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.records)
        _atomic_write(self.out_dir / METRICS_CSV, buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (final numbers, status, wall time)."""
        if self.enabled:
            _atomic_write(self.out_dir / SUMMARY_JSON, json.dumps(_clean(summary), indent=2) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a run (``[]`` if it has none yet)."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CorruptRunFileError(f"{path}:{line_no}: not a JSON record ({e.msg}); the file is corrupt. "
                                          "Delete that line, or resume the run to rewrite it") from None
    return records


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``summary.json`` of a run, or None if there is none."""
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptRunFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); the file is corrupt") from None


class CorruptRunFileError(UserInputError, ValueError):
    """A run file (``metrics.jsonl``, ``summary.json``) that cannot be parsed; names file and line."""


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(r.get("epoch", len(xs) + 1))
            ys.append(v)
    return xs, ys


def plot_runs(runs: dict[str, Sequence[dict]], path: str | os.PathLike | None = None,
              panels: Iterable = CURVE_PANELS, title: str | None = None):
    """Plot the curves of several runs together, one panel per quantity.

    Args:
        runs: label → list of per-epoch records (as from :func:`read_metrics`).
        path: PNG file to write (None: only return the figure).
    Returns:
        The matplotlib Figure.
    """
    # A bare Figure needs no pyplot backend (headless servers, worker threads); notebooks
    # still display it.
    from matplotlib.figure import Figure

    used = []
    for keys, name in panels:
        present = [k for k in keys if any(_series(recs, k)[1] for recs in runs.values())]
        if present:
            used.append((present, name))
    n = max(1, len(used))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    styles = {"train": "-", "test": "--"}
    for ax, (keys, name) in zip(axes.flat, used):
        for i, (label, recs) in enumerate(runs.items()):
            color = f"C{i % 10}"
            for k in keys:
                xs, ys = _series(recs, k)
                if ys:
                    split = k.split("_")[0]
                    ls = styles.get(split, "-" if k == keys[0] else ":")
                    ax.plot(xs, ys, ls, color=color, label=f"{label} {k}" if len(keys) > 1 else label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(used):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_curves(run_dir: str | os.PathLike, path: str | os.PathLike | None = None):
    """Plot one run's curves to ``run_dir/curves.png`` (or ``path``); returns the path."""
    run_dir = Path(run_dir)
    path = Path(path) if path is not None else run_dir / "curves.png"
    plot_runs({run_dir.name: read_metrics(run_dir)}, path, title=run_dir.name)
    return path


_TABLE_COLUMNS = (
    ("wrapper", "wrapper"),
    ("optimizer", "base"),
    ("rho", "rho"),
    ("epochs_done", "epochs"),
    ("final_train_loss", "train loss"),
    ("final_train_acc", "train acc"),
    ("final_test_loss", "test loss"),
    ("final_test_acc", "test acc"),
    ("best_test_acc", "best test"),
    ("forgot_frac", "forgot frac"),
    ("hessian_top_eig", "λ_max"),
    ("wall_time_s", "time (s)"),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if abs(v) >= 1000 or (v != 0 and abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def compare_table(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str]] = _TABLE_COLUMNS) -> str:
    """A plain-text table, one row per run: ``rows`` maps label → summary-like dict.

    Columns absent from every row are left out.
    """
    cols = [(k, h) for k, h in columns if any(r.get(k) is not None for r in rows.values())]
    header = ["run"] + [h for _, h in cols]
    body = [[label] + [(f"{r[k]:.1f}" if k.endswith("_s") and isinstance(r.get(k), float) else _fmt(r.get(k)))
                       for k, _ in cols] for label, r in rows.items()]
    return text_table(header, body)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: Sequence[int] = (0,)) -> str:
    """Columns padded to their widest cell; columns in ``left`` left-aligned, the rest right.

    Example:
        >>> print(text_table(["run", "acc"], [["sam", "0.91"]]))
        run   acc
        ---  ----
        sam  0.91
    """
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
