"""Study 3 — correlation: does forgetting track generalization better than sharpness does?

60 MLP runs on digits: the optimizer (SAM, ASAM, GSAM, OBF, GSAM-OBF) and the label noise
(0 %, 20 %, 40 %) cycle so that every pair appears 4 times; ρ (×{0.4, 1, 2, 4} of 0.05, ASAM
of 0.5), m ∈ {8, 16, 32, 128} and the learning rate ∈ {0.02, 0.05, 0.1} are drawn at random
(seeded). Per run:

- sharpness at the end: the top Hessian eigenvalue (Lanczos, 512 training images, logged by
  the engine), one-step ρ-sharpness on the whole training set and m-sharpness (m = 16), both at
  a fixed ρ = 0.05 so that every run is measured the same way;
- forgetting during training: the perturbed-forgetting measures of every step (fraction of the
  perturbed batch forgotten at w + ε, loss increase, KL, output bias removed), averaged over
  training, and the forgetting events of Toneva et al. (mean count per example, fraction never
  forgotten);
- generalization: test accuracy, and the gap = training accuracy at the end (on the training
  labels, noisy ones included) − test accuracy.

Reported: Kendall τ of each measure against each target over all runs, with a bootstrap 95 %
interval over runs, and the same within each noise level (noise alone moves every number).

    python experiments/study3_correlation.py            # ~4 min on 2 CPU cores, resumable
    python experiments/study3_correlation.py --smoke    # seconds; a test, not evidence
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    config_for,
    dirs,
    markdown_table,
    parse_args,
    run_all,
    write_csv,
)
from experiments.stats import kendall_ci, kendall_difference

N_RUNS = 60
OPTIMIZERS = ("sam", "asam", "gsam", "obf", "gsam_obf")
NOISES = (0.0, 0.2, 0.4)
RHO_MULT = (0.4, 1.0, 2.0, 4.0)
BASE_RHO = {"asam": 0.5}  # others 0.05
MS = (8, 16, 32, 128)
LRS = (0.02, 0.05, 0.1)
MEASURE_RHO, MEASURE_M = 0.05, 16

# (key, label, kind, expected sign of τ against test accuracy under the paper's story)
MEASURES = (
    ("hessian_top_eig", "top Hessian eigenvalue", "sharpness", -1),
    ("sharpness", "ρ-sharpness (whole batch)", "sharpness", -1),
    ("m_sharpness", f"m-sharpness (m = {MEASURE_M})", "sharpness", -1),
    ("forgot_frac", "perturbed forgetting: fraction forgotten", "forgetting", +1),
    ("loss_increase", "perturbed forgetting: loss increase", "forgetting", +1),
    ("kl", "perturbed forgetting: KL(p_w ‖ p_w+ε)", "forgetting", +1),
    ("bias_forgotten", "perturbed forgetting: output bias removed", "forgetting", +1),
    ("mean_forgetting_count", "forgetting events per example", "forgetting", 0),
    ("unforgettable_frac", "fraction never forgotten", "forgetting", 0),
)
TARGETS = (("test_acc", "test accuracy"), ("gap", "train − test accuracy"))
COMPARE_FORGETTING = ("forgot_frac", "kl")
COMPARE_SHARPNESS = ("hessian_top_eig", "m_sharpness")


def make_plan(n_runs: int, epochs: dict) -> list[tuple[str, dict]]:
    rng = random.Random(0)
    plan = []
    for i in range(n_runs):
        opt, noise = OPTIMIZERS[i % len(OPTIMIZERS)], NOISES[i % len(NOISES)]
        rho = round(BASE_RHO.get(opt, 0.05) * rng.choice(RHO_MULT), 6)
        m, lr = rng.choice(MS), rng.choice(LRS)
        cfg = config_for(opt, model="mlp", label_noise=noise, rho=rho, micro_batch_size=m, lr=lr, seed=i,
                         track_forgetting=True, **epochs)
        cfg["hessian_every"] = cfg["epochs"]  # the top eigenvalue at the end only
        plan.append((f"run{i:02d}_{opt}_noise{int(noise * 100)}_rho{rho:g}_m{m}_lr{lr:g}", cfg))
    return plan


def end_measures(result, run_dir: Path) -> dict:
    """Sharpness at the end and the end-of-training training accuracy (one pass, eval mode)."""
    import torch

    from forgetting_sam.engine import evaluate, load_run
    from forgetting_sam.landscape import sharpness

    run = load_run(run_dir)
    ds = run.data.train
    x, y = ds.tensors[0], ds.targets
    s_full = sharpness(run.model, (x, y), run.loss_fn, rho=MEASURE_RHO, progress=False)
    s_m = sharpness(run.model, (x, y), run.loss_fn, rho=MEASURE_RHO, micro_batch_size=MEASURE_M, progress=False)
    tr = evaluate(run.model, ds, run.loss_fn, batch_size=512, device=torch.device("cpu"))
    return {"sharpness": s_full.value, "m_sharpness": s_m.value, "train_acc_end": tr["acc"],
            "train_loss_end": tr["loss"]}


def main(argv=None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    out, runs_dir = dirs(args, "study3")
    n_runs, epochs = (N_RUNS, {}) if not args.smoke else (3, {"epochs": 1, "warmup_epochs": 0, "subset": 300})
    plan = make_plan(n_runs, epochs)
    records = run_all(plan, runs_dir, "study 3: sweep", after=end_measures)
    from forgetting_sam.forgetting import run_numbers

    rows = []
    for r, (name, o) in zip(records, plan):
        run = run_numbers(r["run_dir"])  # per-epoch measures averaged over training; forgetting.* summary
        row = {"run": name, "optimizer": o["wrapper"], "label_noise": o["label_noise"], "rho": o["rho"],
                   "m": o["micro_batch_size"], "lr": o["lr"], "seed": o["seed"], "test_acc": r["final_test_acc"],
                   "train_acc_end": r["train_acc_end"], "gap": r["train_acc_end"] - r["final_test_acc"],
                   "hessian_top_eig": run.get("hessian_top_eig.last"), "sharpness": r["sharpness"],
                   "m_sharpness": r["m_sharpness"], "wall_time_s": r["wall_time_s"]}
        for key in ("forgot_frac", "loss_increase", "kl", "bias_forgotten"):
            row[key] = run.get(key)
        for key in ("mean_forgetting_count", "unforgettable_frac"):
            row[key] = run.get(f"forgetting.{key}")
        rows.append(row)
    write_csv(out / "study3_runs.csv", rows)

    boot = 0 if args.smoke else 2000
    corr, md = [], []
    strata = [("all", rows)] + [(f"noise {int(n * 100)} %", [r for r in rows if r["label_noise"] == n])
                                for n in NOISES]
    results = {}
    for tkey, _tlabel in TARGETS:
        for key, label, kind, _sign in MEASURES:
            cells = [label, kind]
            for sname, sel in strata:
                if len(sel) < 3:
                    cells.append("–")
                    continue
                c = kendall_ci(sel, key, tkey, bootstrap=boot)
                results[tkey, key, sname] = c
                ci = c.ci or (float("nan"), float("nan"))
                corr.append({"target": tkey, "measure": key, "kind": kind, "stratum": sname, "n": c.n, "tau": c.tau,
                                 "p": c.p_value, "ci_low": ci[0], "ci_high": ci[1]})
                cells.append(f"{c.tau:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if sname == "all" else f"{c.tau:+.2f}")
            md.append((tkey, cells))
    write_csv(out / "study3_correlations.csv", corr)
    header = ["measure", "kind", "τ, all runs [95 % CI]"] + [s for s, _ in strata[1:]]
    text = (f"Kendall τ-b over {len(rows)} runs (bootstrap 95 % interval over runs, {boot} resamples); "
            "the last columns are τ within one noise level (20 runs each). Under the paper's story, "
            "forgetting measures correlate positively with test accuracy and sharpness measures "
            "negatively (and the reverse against the gap).\n")
    for tkey, tlabel in TARGETS:
        text += f"\n**Against {tlabel}:**\n\n" + markdown_table(header, [c for t, c in md if t == tkey])

    # The claim itself: does a forgetting measure beat a sharpness measure? Signed by the
    # direction each story predicts (forgetting +, sharpness − against test accuracy; reversed
    # against the gap), then a paired bootstrap over runs of the difference.
    diffs, dmd = [], []
    labels = {k: lab for k, lab, _, _ in MEASURES}
    if len(rows) >= 3:
        for tkey, tlabel in TARGETS:
            flip = 1 if tkey == "test_acc" else -1
            for fa in COMPARE_FORGETTING:
                for sb in COMPARE_SHARPNESS:
                    d = kendall_difference(rows, fa, sb, tkey, sign_a=flip, sign_b=-flip, bootstrap=boot)
                    diffs.append({"target": tkey, "forgetting": fa, "sharpness": sb, "n": d.n, "tau_forgetting": d.tau_a,
                                      "tau_sharpness": d.tau_b, "support_diff": d.diff, "ci_low": d.ci[0], "ci_high": d.ci[1]})
                    dmd.append([tlabel, labels[fa], labels[sb], f"{d.tau_a:+.2f}", f"{d.tau_b:+.2f}",
                                f"{d.diff:+.2f} [{d.ci[0]:+.2f}, {d.ci[1]:+.2f}]"])
        write_csv(out / "study3_claim.csv", diffs)
        text += ("\n**The claim, head to head.** Support = τ signed by the direction each story predicts "
                 "(forgetting: more forgetting, better generalization; flatness: sharper, worse). Difference = "
                 "support(forgetting) − support(sharpness), with a paired bootstrap 95 % interval over runs; "
                 "positive favours the paper.\n\n"
                 + markdown_table(["target", "forgetting measure", "sharpness measure", "τ forgetting",
                                   "τ sharpness", "difference [95 % CI]"], dmd))
    (out / "study3_table.md").write_text(text)
    if not args.smoke or len(rows) >= 3:
        _plot(results, rows, out)
    print(text)
    return 0


def _plot(results, rows, out: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    # τ with its interval, per measure, for both targets
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(TARGETS), sharey=True)
    for ax, (tkey, tlabel) in zip(axes, TARGETS):
        ys = np.arange(len(MEASURES))[::-1]
        for y, (key, _label, kind, _) in zip(ys, MEASURES):
            c = results.get((tkey, key, "all"))
            if c is None:
                continue
            lo, hi = c.ci if c.ci else (c.tau, c.tau)
            color = "tab:orange" if kind == "forgetting" else "tab:blue"
            ax.errorbar([c.tau], [y], xerr=[[c.tau - lo], [hi - c.tau]], fmt="o", color=color, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(ys, [m[1] for m in MEASURES], fontsize=8)
        ax.set_xlim(-1, 1)
        ax.set_xlabel(f"Kendall τ against {tlabel}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Study 3: τ over all runs with bootstrap 95 % intervals (blue: sharpness, orange: forgetting)")
    fig.savefig(out / "study3_tau.png", dpi=120)

    # scatter of each measure against test accuracy, coloured by label noise
    fig = Figure(figsize=(13, 9), layout="constrained")
    axes = fig.subplots(3, 3).flat
    for ax, (key, label, _kind, _) in zip(axes, MEASURES):
        for n, marker in zip(NOISES, "os^"):
            sel = [r for r in rows if r["label_noise"] == n and r[key] is not None]
            ax.scatter([r[key] for r in sel], [r["test_acc"] * 100 for r in sel], s=14, marker=marker,
                       label=f"noise {int(n * 100)} %")
        c = results.get(("test_acc", key, "all"))
        ax.set_title(f"{label}\nτ = {c.tau:+.2f}" if c is not None else label, fontsize=9)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        if key in ("hessian_top_eig",):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    next(iter(fig.axes)).legend(fontsize=7)
    fig.savefig(out / "study3_scatter.png", dpi=110)


if __name__ == "__main__":
    sys.exit(main())
