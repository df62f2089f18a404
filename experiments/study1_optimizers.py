"""Study 1 — the optimizer table: does OBF beat SAM on digits?

Digits at 0 %, 20 % and 40 % symmetric label noise; the MLP and the small CNN; SGD, SAM, ASAM,
GSAM, OBF and GSAM-OBF. ρ is tuned per (model, noise, optimizer) on the validation split
(seed 0) from a 3-value grid; the tuned ρ then runs with seeds 0–4 (seed 0 is the tuning run
itself). Reported: test accuracy mean ± standard error over seeds, and a paired test across
seeds (same seed = same noise pattern, validation split and initialisation) for OBF vs SAM and
GSAM-OBF vs GSAM.

    python experiments/study1_optimizers.py            # ~8 min on 2 CPU cores, resumable
    python experiments/study1_optimizers.py --smoke    # seconds; a test, not evidence
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    LABELS,
    config_for,
    dirs,
    fmt_p,
    markdown_table,
    parse_args,
    run_all,
    write_csv,
)
from experiments.stats import format_mean_se, mean_se, paired_test

GRIDS = {"sam": (0.02, 0.05, 0.1), "asam": (0.2, 0.5, 1.0), "gsam": (0.02, 0.05, 0.1),
         "obf": (0.02, 0.05, 0.1), "gsam_obf": (0.02, 0.05, 0.1)}
OPTIMIZERS = ("sgd", "sam", "asam", "gsam", "obf", "gsam_obf")
MODELS = ("mlp", "cnn")
NOISES = (0.0, 0.2, 0.4)
SEEDS = (0, 1, 2, 3, 4)
TUNE_SEED = 0
PAIRS = (("obf", "sam"), ("gsam_obf", "gsam"), ("sam", "sgd"), ("obf", "sgd"))


def run_name(model: str, noise: float, opt: str, rho: float | None, seed: int) -> str:
    r = "" if rho is None else f"_rho{rho:g}"
    return f"{model}_noise{round(noise * 100)}_{opt}{r}_s{seed}"


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    out, runs_dir = dirs(args, "study1")
    models, noises, optimizers, seeds, grids = MODELS, NOISES, OPTIMIZERS, SEEDS, GRIDS
    extra = {}
    if args.smoke:
        models, noises, optimizers, seeds = ("mlp",), (0.2,), ("sam", "obf"), (0, 1)
        grids = {k: v[1:2] for k, v in GRIDS.items()}
        extra = {"epochs": 1, "warmup_epochs": 0, "subset": 300}

    def cfg(model, noise, opt, rho, seed):
        o = dict(model=model, label_noise=noise, seed=seed, **extra)
        if rho is not None:
            o["rho"] = rho
        return config_for(opt, **o)

    # ---- 1. tune ρ on the validation split (seed 0) ------------------------------------------
    tune_plan = [(run_name(m, n, o, r, TUNE_SEED), cfg(m, n, o, r, TUNE_SEED))
                 for m in models for n in noises for o in optimizers if o != "sgd" for r in grids[o]]
    tuning = run_all(tune_plan, runs_dir, "study 1: tuning ρ")
    tuned: dict[tuple, float] = {}
    tune_rows = []
    for m in models:
        for n in noises:
            for o in optimizers:
                if o == "sgd":
                    continue
                cands = [r for r in tuning if r["config.model"] == m and r["config.label_noise"] == n
                         and r["config.wrapper"] == config_for(o)["wrapper"]]
                # highest final validation accuracy; ties go to the smaller ρ (grid order)
                best = max(cands, key=lambda r: (r["final_val_acc"], -r["config.rho"]))
                tuned[m, n, o] = best["config.rho"]
                for r in cands:
                    tune_rows.append({"model": m, "label_noise": n, "optimizer": o, "rho": r["config.rho"],
                                          "val_acc": r["final_val_acc"], "test_acc": r["final_test_acc"],
                                          "chosen": r is best})
    write_csv(out / "study1_tuning.csv", tune_rows)

    # ---- 2. the tuned ρ with every seed -------------------------------------------------------
    plan = []
    for m in models:
        for n in noises:
            for o in optimizers:
                rho = tuned.get((m, n, o))
                plan += [(run_name(m, n, o, rho, s), cfg(m, n, o, rho, s)) for s in seeds]
    records = run_all(plan, runs_dir, "study 1: seeds")
    rows = []
    for r, (name, o) in zip(records, plan):
        rows.append({"model": o["model"], "label_noise": o["label_noise"],
                         "optimizer": _opt_of(o), "rho": o.get("rho"), "seed": o["seed"],
                         "test_acc": r["final_test_acc"], "val_acc": r["final_val_acc"],
                         "train_acc": r["final_train_acc"], "wall_time_s": r["wall_time_s"], "run": name})
    write_csv(out / "study1_runs.csv", rows)

    # ---- 3. tables ---------------------------------------------------------------------------
    acc = {}
    for row in rows:
        acc.setdefault((row["model"], row["label_noise"], row["optimizer"]), []).append(
            (row["seed"], row["test_acc"]))
    summary_rows, md_rows = [], []
    for m in models:
        for n in noises:
            cells = []
            for o in optimizers:
                vals = [a for _, a in sorted(acc[m, n, o])]
                mu, se = mean_se(vals)
                summary_rows.append({"model": m, "label_noise": n, "optimizer": o, "rho": tuned.get((m, n, o)),
                                         "n_seeds": len(vals), "test_acc_mean": mu, "test_acc_se": se})
                rho = tuned.get((m, n, o))
                cells.append(format_mean_se(mu, se) + ("" if rho is None else f" (ρ {rho:g})"))
            md_rows.append([m.upper() if m == "mlp" else "CNN", f"{round(n * 100)} %", *cells])
    write_csv(out / "study1_summary.csv", summary_rows)
    table = markdown_table(["model", "noise", *[LABELS[o] for o in optimizers]], md_rows)

    paired_rows, pmd = [], []
    for a, b in PAIRS:
        if a not in optimizers or b not in optimizers:
            continue
        for m in models:
            for n in noises:
                xa = [v for _, v in sorted(acc[m, n, a])]
                xb = [v for _, v in sorted(acc[m, n, b])]
                t = paired_test(xa, xb)
                paired_rows.append({"a": a, "b": b, "model": m, "label_noise": n, "n": t.n, "mean_diff": t.mean_diff,
                                        "se_diff": t.se_diff, "ci_low": t.ci[0], "ci_high": t.ci[1], "t": t.t,
                                        "p_t": t.p_t, "p_wilcoxon": t.p_wilcoxon, "wins": t.wins, "losses": t.losses})
                pmd.append([f"{LABELS[a]} − {LABELS[b]}", m.upper() if m == "mlp" else "CNN",
                            f"{round(n * 100)} %", f"{t.mean_diff * 100:+.2f}",
                            f"[{t.ci[0] * 100:+.2f}, {t.ci[1] * 100:+.2f}]", f"{t.wins}/{t.losses}",
                            fmt_p(t.p_t), fmt_p(t.p_wilcoxon)])
    write_csv(out / "study1_paired.csv", paired_rows)
    ptable = markdown_table(["comparison", "model", "noise", "mean diff (pp)", "95 % CI (pp)",
                             "wins/losses", "p (paired t)", "p (Wilcoxon)"], pmd)
    (out / "study1_table.md").write_text(
        "Test accuracy (%), mean ± standard error over "
        f"{len(seeds)} seeds at the ρ tuned on the validation split:\n\n{table}\n"
        "Paired differences across seeds (percentage points; wins/losses = seeds where the first "
        f"is better/worse):\n\n{ptable}")
    _plot(summary_rows, models, noises, optimizers, out / "study1_test_acc.png")
    print((out / "study1_table.md").read_text())
    return 0


def _opt_of(overrides: dict) -> str:
    w = overrides["wrapper"]
    return "sgd" if w == "none" else w


def _plot(summary_rows, models, noises, optimizers, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * len(models), 3.8), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    width = 0.8 / len(optimizers)
    for ax, m in zip(axes, models):
        for i, o in enumerate(optimizers):
            rs = [next(r for r in summary_rows if r["model"] == m and r["label_noise"] == n
                       and r["optimizer"] == o) for n in noises]
            x = np.arange(len(noises)) + (i - (len(optimizers) - 1) / 2) * width
            ax.bar(x, [r["test_acc_mean"] * 100 for r in rs], width,
                   yerr=[np.nan_to_num(r["test_acc_se"]) * 100 for r in rs], label=LABELS[o], capsize=2)
        ax.set_xticks(range(len(noises)), [f"{round(n * 100)} % noise" for n in noises])
        lo = min(r["test_acc_mean"] for r in summary_rows if r["model"] == m) * 100
        ax.set_ylim(max(0, lo - 3), 100)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{'MLP' if m == 'mlp' else 'small CNN'} on digits (mean ± SE over seeds)")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
