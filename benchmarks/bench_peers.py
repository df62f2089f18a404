"""Full-step cost of our SAM, ASAM and GSAM against the peers, side by side in one process (issue 13 §4).

Peers:

* ``pytorch-optimizer`` (``pip install pytorch-optimizer``, the ``bench`` extra; never a runtime
  dependency): its ``SAM`` (``adaptive=True`` for ASAM) and ``GSAM``;
* the popular PyTorch SAM (davda54/sam, not on PyPI): its per-tensor loop, written out as the
  reference loop ``LoopSAM`` in ``bench_step.py`` and imported from there (SAM and ASAM only:
  it has no GSAM).

Every contender runs the same two forward+backward passes on the same batch, with SGD
(momentum 0.9) as the base. Rounds are interleaved (each round times every contender once,
median of ``--repeats`` steps) and the reported time is the median over rounds, so drift in
machine load hits all alike. Printed: ms per step, ours / each peer, ours / fastest peer
(goal ≤ 1.00), and each step / (2 × SGD).

Also the optimizer-side work alone on the ViT-S/32 parameter list (ASAM vs the loop's adaptive
mode, GSAM vs our SAM), interleaved the same way.

Run: ``python benchmarks/bench_peers.py [--threads 1] [--rounds 5] [--repeats 5] [--only full|optimizer]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench_step import LoopSAM, mlp, released_step, small_cnn, timed, vit_params
from forgetting_sam import ASAM, GSAM, OBF, SAM, perturbed_step

RHO = {"SAM": 0.05, "ASAM": 0.5, "GSAM": 0.05}
ALPHA = 0.4
SGD_KW = dict(lr=0.01, momentum=0.9)
#: Set by --clock: wall time, or this process's CPU time (steadier on a shared machine; at one
#: thread it is the step's compute).
CLOCK = time.perf_counter


class ConstantRho:
    """pytorch-optimizer's GSAM asks a scheduler for ρ every step; a constant one matches ours."""

    def __init__(self, rho: float):
        self.rho = rho

    def step(self) -> float:
        return self.rho


def two_step(opt, model, x, y):
    """The first_step / second_step protocol shared by the loop and pytorch-optimizer's SAM."""
    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    return step


def contenders(model, x, y):
    """``{family: {name: step_fn}}``; ``ours`` first in each family."""
    import pytorch_optimizer as po

    params = list(model.parameters())

    def ours(opt):
        return lambda: perturbed_step(model, opt, x, y, F.cross_entropy)

    out = {
        "SAM": {
            "ours": ours(SAM(params, torch.optim.SGD, rho=RHO["SAM"], **SGD_KW)),
            "loop (ref)": two_step(LoopSAM(params, torch.optim.SGD, rho=RHO["SAM"], **SGD_KW), model, x, y),
            "pytorch-optimizer": two_step(po.SAM(params, torch.optim.SGD, rho=RHO["SAM"], **SGD_KW), model, x, y),
        },
        "ASAM": {
            # η = 0: the form both peers implement (T = |w|).
            "ours": ours(ASAM(params, torch.optim.SGD, rho=RHO["ASAM"], eta=0.0, **SGD_KW)),
            "loop (ref)": two_step(LoopSAM(params, torch.optim.SGD, rho=RHO["ASAM"], adaptive=True, **SGD_KW),
                                   model, x, y),
            "pytorch-optimizer": two_step(po.SAM(params, torch.optim.SGD, rho=RHO["ASAM"], adaptive=True, **SGD_KW),
                                          model, x, y),
        },
        "OBF": {"ours": ours(OBF(params, torch.optim.SGD, rho=0.05, **SGD_KW))},
    }
    gsam_ours = GSAM(params, torch.optim.SGD, rho=RHO["GSAM"], alpha=ALPHA, **SGD_KW)
    peer = po.GSAM(params, torch.optim.SGD(params, **SGD_KW), model, ConstantRho(RHO["GSAM"]), alpha=ALPHA)
    peer.set_closure(F.cross_entropy, x, y)
    out["GSAM"] = {"ours": ours(gsam_ours), "pytorch-optimizer": peer.step}
    return out


def bench(model_name, build, x, y, rounds, repeats):
    torch.manual_seed(0)
    model = build()
    sgd = torch.optim.SGD(model.parameters(), **SGD_KW)

    def sgd_step():
        sgd.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sgd.step()

    steps = contenders(model, x, y)
    times: dict[tuple[str, str], list[float]] = {("SGD", "SGD"): []}
    for fam, row in steps.items():
        for name in row:
            times[(fam, name)] = []
    device = x.device
    for _ in range(rounds):
        times[("SGD", "SGD")].append(timed(sgd_step, device, repeats, clock=CLOCK))
        for fam, row in steps.items():
            for name, fn in row.items():
                times[(fam, name)].append(timed(fn, device, repeats, clock=CLOCK))
    med = {k: statistics.median(v) for k, v in times.items()}
    sgd2 = 2 * med[("SGD", "SGD")]
    print(f"\n{model_name}: SGD step {med[('SGD', 'SGD')] * 1e3:.2f} ms")
    print("| family | ours ms (/ 2×SGD) | peers ms (/ 2×SGD) | ours / peer | ours / fastest peer |")
    print("|---|---|---|---|---|")
    for fam, row in steps.items():
        ours_t = med[(fam, "ours")]
        peers = {n: med[(fam, n)] for n in row if n != "ours"}
        peer_txt = "; ".join(f"{n} {t * 1e3:.2f} ({t / sgd2:.3f})" for n, t in peers.items()) or "none"
        ratio_txt = "; ".join(f"{n} {ours_t / t:.3f}" for n, t in peers.items()) or "-"
        fastest = f"{ours_t / min(peers.values()):.3f}" if peers else "-"
        print(f"| {fam} | {ours_t * 1e3:.2f} ({ours_t / sgd2:.3f}) | {peer_txt} | {ratio_txt} | {fastest} |")


def optimizer_side(rounds, repeats):
    """Perturb + restore on the ViT-S/32 parameter list (22.9M), interleaved rounds.

    Ours as ``perturbed_step`` calls it: ``first_step(zero_grad=True)`` (the ascent ``.grad``
    is released), new descent gradients in ``.grad``, ``unperturb()`` (GSAM corrects them).
    The reference loop keeps its gradients and restores its copies, as it does in training.
    """
    params = vit_params(torch.device("cpu"))
    torch.manual_seed(0)
    ascent = [torch.randn_like(p) for p in params]
    descent = [torch.randn_like(p) for p in params]
    device = params[0].device

    def loop_work(adaptive):
        loop = LoopSAM(params, torch.optim.SGD, lr=0.0, adaptive=adaptive)

        def work():
            for p, h in zip(params, ascent):
                p.grad = h
            loop.first_step()
            for group in loop.param_groups:
                for p in group["params"]:
                    p.data = loop.state[p]["old_p"]
        return work

    def ours_work(opt):
        return lambda: released_step(opt, params, ascent, descent)

    runs = {
        "loop SAM": loop_work(False),
        "loop ASAM": loop_work(True),
        "ours SAM": ours_work(SAM(params, torch.optim.SGD, lr=0.0)),
        "ours ASAM": ours_work(ASAM(params, torch.optim.SGD, eta=0.0, lr=0.0)),  # the loop's form (η = 0)
        "ours GSAM": ours_work(GSAM(params, torch.optim.SGD, alpha=0.4, lr=0.0)),
    }
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn, device, repeats, clock=CLOCK))
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nOptimizer side, ViT-S/32 parameter list (22.9M), perturb + restore: " +
          ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))
    print(f"| SAM: loop / ours | {med['loop SAM'] / med['ours SAM']:.2f}x |")
    print(f"| ASAM: loop adaptive / ours (goal ≥ 2.0) | {med['loop ASAM'] / med['ours ASAM']:.2f}x |")
    print(f"| GSAM / our SAM (goal ≤ 1.5) | {med['ours GSAM'] / med['ours SAM']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["full", "optimizer"], help="one of the two parts")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="cpu",
                        help="what to time (default: process CPU time, see CLOCK)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    print(f"torch {torch.__version__}; pytorch-optimizer {version('pytorch-optimizer')}; "
          f"{args.threads} thread(s); {args.rounds} interleaved rounds × median of {args.repeats} steps; "
          f"{args.clock} time")
    if args.only != "full":
        optimizer_side(args.rounds, args.repeats)
    if args.only == "optimizer":
        return
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    bench("small CNN (batch 128, 32×32×3)", small_cnn, x, y, args.rounds, args.repeats)
    bench("MLP (1.7M parameters, batch 128)", mlp, x, y, args.rounds, args.repeats)


if __name__ == "__main__":
    main()
