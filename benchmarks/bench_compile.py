"""``perturbed_step`` on a ``torch.compile``'d model against the eager model (issue 13 §5).

For each model (the MLP and small CNN of ``bench_step.py``, batch 128): the first step's
time (it compiles), the steady-state step time of SGD and SAM, eager and compiled, measured
in interleaved rounds, and what Dynamo did: graphs compiled and recompilations, read from
``torch._dynamo.utils.counters`` after the first step and again after all the others. A
recompilation after the first step would show as a growing count.

Run: ``python benchmarks/bench_compile.py [--threads 1] [--rounds 3] [--repeats 5]`` (the CPU;
on a GPU too when one is present). Inductor's first compile takes tens of seconds on a small
shared CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from bench_step import mlp, small_cnn, timed
from forgetting_sam import SAM, perturbed_step


def dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, recompilations) so far."""
    return counters["stats"]["unique_graphs"], sum(counters["recompiles"].values())


def bench(name, build, device, rounds, repeats):
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    torch._dynamo.reset()
    counters.clear()
    runs, first = {}, {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build().to(device)
        run = torch.compile(model) if mode == "compiled" else model
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9)

        def sgd_step(run=run, sgd=sgd):
            sgd.zero_grad()
            F.cross_entropy(run(x), y).backward()
            sgd.step()

        def sam_step(run=run, sam=sam):
            perturbed_step(run, sam, x, y, F.cross_entropy)

        for kind, fn in (("SGD", sgd_step), ("SAM", sam_step)):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            first[(mode, kind)] = time.perf_counter() - t0
            runs[(mode, kind)] = fn
    after_first = dynamo_counts()
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            times[key].append(timed(fn, device, repeats, warmup=1))
    after_all = dynamo_counts()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name} on {device.type}: graphs / recompilations after the first steps {after_first}, "
          f"after {rounds * (repeats + 1)} more steps of each {after_all}")
    print("| step | eager ms | compiled ms | compiled / eager | first compiled step s |")
    print("|---|---|---|---|---|")
    for kind in ("SGD", "SAM"):
        e, c = med[("eager", kind)], med[("compiled", kind)]
        print(f"| {kind} | {e * 1e3:.2f} | {c * 1e3:.2f} | {c / e:.3f} | {first[('compiled', kind)]:.1f} |")
    sam_sgd_e = med[("eager", "SAM")] / (2 * med[("eager", "SGD")])
    sam_sgd_c = med[("compiled", "SAM")] / (2 * med[("compiled", "SGD")])
    print(f"SAM / (2 × SGD): eager {sam_sgd_e:.3f}, compiled {sam_sgd_c:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["MLP", "small CNN"], choices=["MLP", "small CNN"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {args.threads} thread(s)")
    builds = {"MLP": mlp, "small CNN": small_cnn}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        for name in args.models:
            bench(name, builds[name], device, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
