"""Overhead of the zero-overhead forgetting measures, relative to one SAM step.

``perturbed_step`` already returns the logits at ``w`` and ``w + ε``; measuring perturbed
forgetting from them costs a few elementwise kernels. This script times, on the 8×8 digits
(sklearn, bundled, no download), one ``perturbed_step`` and one ``perturbed_forgetting`` call
on its result (plus, optionally, a ``ForgettingTracker.update``), interleaved so load on a
shared machine hits both alike, and prints the medians and the ratio. Goal: ≤ 2 %.

    python benchmarks/bench_forgetting.py [--model mlp|cnn] [--batch 128] [--steps 200] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from forgetting_sam.forgetting import ForgettingTracker, perturbed_forgetting
from forgetting_sam.optim import SAM, perturbed_step


def digits(device):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32, device=device) / 16.0
    y = torch.tensor(d.target, dtype=torch.long, device=device)
    return x, y


def make_model(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 10),
    )


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings steady)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, y = digits(device)
    model = make_model(args.model).to(device)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9)
    tracker = ForgettingTracker(len(x), device=device)
    n = len(x)

    t_step, t_measure, t_tracker = [], [], []
    order = torch.randperm(n)
    for i in range(args.steps + 10):
        # epoch-style shuffled batches: distinct indices within a batch, as a DataLoader gives
        start = (i * args.batch) % (n - args.batch)
        idx = order[start:start + args.batch]
        xb, yb = x[idx.to(device)], y[idx.to(device)]
        sync(device)
        t0 = time.perf_counter()
        res = perturbed_step(model, opt, xb, yb, F.cross_entropy, micro_batch_size=args.micro_batch_size)
        sync(device)
        t1 = time.perf_counter()
        m = perturbed_forgetting(res.logits, res.perturbed_logits, yb)
        sync(device)
        t2 = time.perf_counter()
        tracker.update(idx, res.logits, yb)
        sync(device)
        t3 = time.perf_counter()
        if i >= 10:  # warm-up: allocator, kernel caches
            t_step.append(t1 - t0)
            t_measure.append(t2 - t1)
            t_tracker.append(t3 - t2)

    step, meas, trk = (statistics.median(t) for t in (t_step, t_measure, t_tracker))
    print(f"device={device} model={args.model} batch={args.batch} m={args.micro_batch_size} "
          f"steps={args.steps} threads={args.threads}")
    print(f"perturbed_step        median {step * 1e3:8.3f} ms")
    print(f"perturbed_forgetting  median {meas * 1e3:8.3f} ms  = {100 * meas / step:5.2f} % of a step")
    print(f"ForgettingTracker     median {trk * 1e3:8.3f} ms  = {100 * trk / step:5.2f} % of a step")
    print(f"with PerturbedForgettingMeter(every=k) the measures cost {100 * meas / step:.2f} % / k of a step")
    print("last measures: " + ", ".join(f"{k}={float(v):.4f}" for k, v in m.items()))
    return {"step_s": step, "measure_s": meas, "tracker_s": trk}


if __name__ == "__main__":
    main()
