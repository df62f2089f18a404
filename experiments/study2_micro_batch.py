"""Study 2 — perturbation batch size: does a smaller m forget more and generalize better?

SAM and OBF (ρ 0.05 each) on the MLP, digits with 20 % label noise, a fixed global batch of
128 and m ∈ {4, 8, 16, 32, 64, 128} (m = 128: one perturbation per batch), seeds 0–4.
Reported against m: test accuracy and perturbed forgetting (the fraction of the perturbed
batch that is correct at w and wrong at w + ε, and the loss increase, averaged over
training), mean ± standard error over seeds, and Kendall τ of m against each across all runs
of an optimizer (bootstrap 95 % interval over runs).

The MLP is used because it has no BatchNorm: in the small CNN, BatchNorm sees chunks of m
examples, so m would also change the normalisation noise and the number of running-statistics
updates per step, which is a different effect.

    python experiments/study2_micro_batch.py            # ~4 min on 2 CPU cores, resumable
    python experiments/study2_micro_batch.py --smoke    # seconds; a test, not evidence
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    LABELS,
    config_for,
    dirs,
    markdown_table,
    parse_args,
    run_all,
    write_csv,
)
from experiments.stats import format_mean_se, kendall_ci, mean_se

MS = (4, 8, 16, 32, 64, 128)
OPTIMIZERS = ("sam", "obf")
RHO = 0.05
NOISE = 0.2
MODEL = "mlp"
SEEDS = (0, 1, 2, 3, 4)
MEASURES = (("test_acc", "test accuracy"), ("forgot_frac", "forgotten by ε"),
            ("loss_increase", "loss increase L(w+ε) − L(w)"), ("bias_forgotten", "output bias removed by ε"))
_SCALE = {"test_acc": 100, "forgot_frac": 100, "loss_increase": 1, "bias_forgotten": 100}


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    out, runs_dir = dirs(args, "study2")
    ms, seeds, extra = MS, SEEDS, {}
    if args.smoke:
        ms, seeds, extra = (64, 128), (0,), {"epochs": 1, "warmup_epochs": 0, "subset": 300}
    plan = [(f"{o}_m{m}_s{s}", config_for(o, model=MODEL, label_noise=NOISE, rho=RHO, micro_batch_size=m,
                                          seed=s, track_forgetting=True, **extra))
            for o in OPTIMIZERS for m in ms for s in seeds]
    records = run_all(plan, runs_dir, "study 2: m")
    from forgetting_sam.forgetting import run_numbers

    rows = []
    for r, (name, o) in zip(records, plan):
        run = run_numbers(r["run_dir"])  # per-epoch measures, mean over training
        rows.append({"optimizer": o["wrapper"], "m": o["micro_batch_size"], "seed": o["seed"], "rho": o["rho"],
                         "test_acc": r["final_test_acc"], "val_acc": r["final_val_acc"],
                         "train_acc": r["final_train_acc"], "forgot_frac": run.get("forgot_frac"),
                         "loss_increase": run.get("loss_increase"), "kl": run.get("kl"),
                         "bias_forgotten": run.get("bias_forgotten"), "wall_time_s": r["wall_time_s"], "run": name})
    write_csv(out / "study2_runs.csv", rows)

    summary, md = [], []
    for o in OPTIMIZERS:
        for m in ms:
            sel = [r for r in rows if r["optimizer"] == o and r["m"] == m]
            row = {"optimizer": o, "m": m, "n_seeds": len(sel)}
            for key, _ in MEASURES:
                row[f"{key}_mean"], row[f"{key}_se"] = mean_se([r[key] for r in sel])
            summary.append(row)
            md.append([LABELS[o], m, format_mean_se(row["test_acc_mean"], row["test_acc_se"]),
                       format_mean_se(row["forgot_frac_mean"], row["forgot_frac_se"]),
                       format_mean_se(row["loss_increase_mean"], row["loss_increase_se"], scale=1, digits=4),
                       format_mean_se(row["bias_forgotten_mean"], row["bias_forgotten_se"], digits=3)])
    write_csv(out / "study2_summary.csv", summary)

    taus, tmd = [], []
    for o in OPTIMIZERS:
        sel = [r for r in rows if r["optimizer"] == o]
        for key, label in MEASURES:
            if len(sel) < 3:  # smoke mode: too few runs for a rank correlation
                continue
            c = kendall_ci(sel, "m", key, bootstrap=0 if args.smoke else 2000)
            ci = c.ci or (float("nan"), float("nan"))
            taus.append({"optimizer": o, "target": key, "n": c.n, "tau": c.tau, "p": c.p_value, "ci_low": ci[0], "ci_high": ci[1]})
            tmd.append([LABELS[o], label, c.n, f"{c.tau:+.3f}", f"[{ci[0]:+.2f}, {ci[1]:+.2f}]", f"{c.p_value:.2g}"])
    write_csv(out / "study2_tau.csv", taus)
    (out / "study2_table.md").write_text(
        f"Mean ± standard error over {len(seeds)} seeds (MLP, digits, {int(NOISE * 100)} % label noise, "
        f"batch 128, ρ {RHO}). Perturbed-forgetting measures are averaged over training: the fraction of the "
        "perturbed batch correct at w and wrong at w + ε, the loss increase L(w + ε) − L(w) in nats, and the "
        "output bias removed by ε (total-variation distance of the mean prediction from uniform at w minus "
        "at w + ε, in percentage points).\n\n"
        + markdown_table(["optimizer", "m", "test accuracy (%)", "forgotten by ε (%)", "loss increase",
                          "output bias removed (pp)"], md)
        + "\nKendall τ of m against each quantity, over all runs of an optimizer (negative: smaller m, "
          "larger value):\n\n"
        + markdown_table(["optimizer", "quantity", "runs", "τ", "95 % CI", "p"], tmd))
    _plot(summary, ms, out / "study2_micro_batch.png")
    print((out / "study2_table.md").read_text())
    return 0


def _plot(summary, ms, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.6), layout="constrained")
    axes = fig.subplots(1, len(MEASURES))
    for ax, (key, label) in zip(axes, MEASURES):
        scale = _SCALE[key]
        for o in OPTIMIZERS:
            rs = [next(r for r in summary if r["optimizer"] == o and r["m"] == m) for m in ms]
            ax.errorbar(ms, [r[f"{key}_mean"] * scale for r in rs],
                        yerr=[np.nan_to_num(r[f"{key}_se"]) * scale for r in rs],
                        marker="o", capsize=3, label=LABELS[o])
        ax.set_xscale("log", base=2)
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.set_xlabel("perturbation batch m (global batch 128)")
        ax.set_ylabel(label + ("" if scale == 1 else " (%)"))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Study 2: m-sharpness on digits (MLP, {int(NOISE * 100)} % label noise), mean ± SE over seeds")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
