"""Cheaper SAM (docs/algorithms.md §9): wall time and digits test accuracy against SGD and SAM.

Trains the same MLP on the 8×8 digits (1297 train / 500 test, 20% of the training labels
flipped so that flatness matters) with plain SGD, SAM on every step, SAM every k-th step
SAM only over the last 25% of the steps, and LookSAM (SAM every 4th step, the orthogonal
part of the last SAM gradient reused in between). Runs are interleaved seed by seed so that load
on the machine hits every schedule alike; wall times are printed as ratios to SGD and SAM
measured in the same process.

    python benchmarks/bench_cheap_sam.py --seeds 3 --epochs 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from forgetting_sam.optim import SAM, LookSAM, perturbed_step


def digits(noise: float = 0.2):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)  # one fixed split and noise for every run
    perm = torch.randperm(len(y), generator=g)
    tr, te = perm[:1297], perm[1297:]
    ytr = y[tr].clone()
    flip = torch.rand(len(tr), generator=g) < noise
    ytr[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    return x[tr], ytr, x[te], y[te]


def run(schedule: tuple | None, seed: int, data, epochs: int, batch: int, rho: float):
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    kw = dict(lr=0.05, momentum=0.9)
    if schedule is None:
        opt = torch.optim.SGD(model.parameters(), **kw)
    else:
        cls, extra = schedule
        opt = cls(model.parameters(), torch.optim.SGD, rho=rho, **extra, **kw)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(batch):
            perturbed_step(model, opt, xtr[idx], ytr[idx], F.cross_entropy)
    wall = time.perf_counter() - start
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return wall, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rho", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = digits()
    steps = args.epochs * -(-len(data[1]) // args.batch)
    schedules = {
        "SGD": None,
        "SAM": (SAM, {}),
        "SAM every 2": (SAM, dict(perturb_every=2)),
        "SAM every 4": (SAM, dict(perturb_every=4)),
        "SAM last 25%": (SAM, dict(perturb_from=int(0.75 * steps))),
        "LookSAM k=4": (LookSAM, dict(k=4, reuse_alpha=0.7)),
    }
    walls = {k: [] for k in schedules}
    accs = {k: [] for k in schedules}
    for seed in range(args.seeds):
        for name, sched in schedules.items():
            wall, acc = run(sched, seed, data, args.epochs, args.batch, args.rho)
            walls[name].append(wall)
            accs[name].append(acc)
    sgd, sam = statistics.median(walls["SGD"]), statistics.median(walls["SAM"])
    sam_acc = accs["SAM"]
    print(f"digits MLP, {steps} steps, batch {args.batch}, rho {args.rho}, 20% label noise, "
          f"{args.seeds} seeds, 1 thread")
    print("| schedule | wall / SGD | wall / SAM | test acc (mean ± sd) | acc − SAM's, same seed (mean) |")
    print("|---|---|---|---|---|")
    for name in schedules:
        w = statistics.median(walls[name])
        a = accs[name]
        diff = statistics.mean(x - s for x, s in zip(a, sam_acc))
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        print(f"| {name} | {w / sgd:.2f} | {w / sam:.2f} | {100 * statistics.mean(a):.1f} ± {100 * sd:.1f} "
              f"| {100 * diff:+.1f} |")


if __name__ == "__main__":
    main()
