"""Step cost and memory of the SAM family, side by side in one process (issue 2).

Prints, at 1 and 2 threads on the CPU (and on a GPU when one is present):

1. Full step: time of one family step / (2 × one SGD step), for a small CNN (batch 128 at
   32×32×3) and an MLP. Two passes make 1.0 the floor. ``loop`` is the reference: the most
   popular PyTorch SAM's approach, a per-tensor Python loop that keeps a copy of each
   parameter and restores it.
2. Optimizer-side work alone (perturb + restore) on a ViT-S/32 parameter list, ours vs the
   per-tensor loop doing the same math (a speed-up; goal ≥ 1.8× on the CPU, ≥ 3× on a GPU).
3. Memory held by the optimizer, in parameter copies: the peak during a step and what is
   still held between steps, measured by tracking every storage the optimizer allocates.

Run: ``python benchmarks/bench_step.py`` (about 3 minutes on 2 cores). ``--quick`` for fewer
repeats.

On the CPU, glibc returns large freed blocks to the OS, so the ``w + ε`` buffer that our
optimizers allocate and free every step (they hold nothing between steps) page-faults anew
each time, while the loop keeps its copies between steps and does not. Run it a second time
as ``MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_MMAP_THRESHOLD_=4294967296 python ...`` to see
the same comparison without that effect (the header says which mode a run used). GPUs use
PyTorch's caching allocator and never see it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from forgetting_sam import ASAM, GSAM, OBF, SAM, perturbed_step


class LoopSAM(torch.optim.Optimizer):
    """The reference approach: per-tensor loop, a kept copy of each parameter."""

    def __init__(self, params, base_optimizer, rho=0.05, adaptive=False, **kwargs):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        grad_norm = torch.norm(torch.stack([
            ((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
            for g in self.param_groups for p in g["params"] if p.grad is not None]), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.ReLU(),
                         nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def vit_params(device):
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=224, patch_size=32, num_layers=12, num_heads=6,
                            hidden_dim=384, mlp_dim=1536).to(device)
    return [p for p in vit.parameters()]


def timed(fn, device, repeats, warmup=3, clock=time.perf_counter):
    """Median seconds of ``fn()`` over ``repeats`` calls. ``clock=time.process_time`` (CPU
    runs only) counts this process's CPU time, which other jobs on a shared machine disturb
    far less than wall time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - t0)
    return statistics.median(times)


OURS = {
    "SAM": lambda p: SAM(p, torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
    "ASAM": lambda p: ASAM(p, torch.optim.SGD, rho=0.5, lr=0.01, momentum=0.9),
    "GSAM": lambda p: GSAM(p, torch.optim.SGD, rho=0.05, alpha=0.4, lr=0.01, momentum=0.9),
    "OBF": lambda p: OBF(p, torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
    "loop (ref)": lambda p: LoopSAM(p, torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9),
}


def full_step(device, repeats):
    print("\n1. Full step / (2 × SGD step)   [floor 1.0; goal ≤ 1.03; the loop measured ~1.10]")
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    for model_name, build in [("small CNN", small_cnn), ("MLP", mlp)]:
        model = build().to(device)
        sgd = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def sgd_step(model=model, sgd=sgd):
            sgd.zero_grad()
            F.cross_entropy(model(x), y).backward()
            sgd.step()

        row = []
        for name, make in OURS.items():
            opt = make(model.parameters())
            if isinstance(opt, LoopSAM):
                def step(opt=opt, model=model):
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    opt.first_step(zero_grad=True)
                    F.cross_entropy(model(x), y).backward()
                    opt.second_step(zero_grad=True)
            else:
                def step(opt=opt, model=model):
                    perturbed_step(model, opt, x, y, F.cross_entropy)
            # interleave SGD and the family step so drift in machine load hits both alike
            t_sgd = t_fam = 0.0
            for _ in range(3):
                t_sgd += timed(sgd_step, device, repeats)
                t_fam += timed(step, device, repeats)
            row.append(f"{name} {t_fam / (2 * t_sgd):.3f}")
        print(f"   {model_name:9s}: " + "   ".join(row))


def released_step(opt, params, ascent, descent):
    """Optimizer-side work as inside ``perturbed_step``: ``first_step`` releases the ascent
    ``.grad``, the descent pass brings new gradients, ``unperturb`` (GSAM corrects those)."""
    for p, h in zip(params, ascent):
        p.grad = h
    opt.first_step(zero_grad=True)
    for p, g in zip(params, descent):
        p.grad = g
    opt.unperturb()


def optimizer_side(device, repeats):
    print("\n2. Perturb + restore on ViT-S/32 parameters (22.9M): loop time / ours   [goal ≥ 1.8× CPU, ≥ 3× GPU]")
    params = vit_params(device)
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p)
    def time_loop(adaptive):
        loop = LoopSAM(params, torch.optim.SGD, lr=0.0, adaptive=adaptive)

        def work():
            loop.first_step()
            for group in loop.param_groups:
                for p in group["params"]:
                    p.data = loop.state[p]["old_p"]

        t = timed(work, device, repeats)
        loop.state.clear()
        return t

    t_loop, t_loop_ada = time_loop(adaptive=False), time_loop(adaptive=True)
    ours = {
        "SAM": SAM(params, torch.optim.SGD, lr=0.0),
        "OBF": OBF(params, torch.optim.SGD, lr=0.0),  # the same step: OBF differs in h only
        "ASAM": ASAM(params, torch.optim.SGD, eta=0.0, lr=0.0),  # the loop's form (η = 0)
        "GSAM": GSAM(params, torch.optim.SGD, alpha=0.4, lr=0.0),
    }
    # Two ways to call it. "kept": .grad stays as it is (what the reference loop does).
    # "released": as inside perturbed_step, first_step releases .grad (zero_grad=True) and
    # the descent pass brings new gradients before unperturb (GSAM corrects those).
    ascent = [p.grad for p in params]
    descent = [torch.randn_like(p) for p in params]
    times, released = {}, {}
    for name, opt in ours.items():
        def kept(opt=opt):
            opt.first_step()
            opt.unperturb()

        def release(opt=opt):
            released_step(opt, params, ascent, descent)

        times[name] = timed(kept, device, repeats)
        released[name] = timed(release, device, repeats)
        for p, h in zip(params, ascent):
            p.grad = h
    ms = lambda t: f"{t * 1e3:.1f} ms"  # noqa: E731
    for name, ref in (("SAM", t_loop), ("OBF", t_loop), ("ASAM", t_loop_ada)):
        print(f"   {name:4s}: loop {ms(ref)}; ours {ms(times[name])} -> {ref / times[name]:.2f}x "
              f"(grads released: {ms(released[name])} -> {ref / released[name]:.2f}x)")
    print(f"   GSAM: ours {ms(times['GSAM'])}, {times['GSAM'] / times['SAM']:.2f}x our SAM "
          f"(grads released: {ms(released['GSAM'])}, {released['GSAM'] / released['SAM']:.2f}x)")


class StorageTracker(TorchDispatchMode):
    """Net live bytes of tensor storages: those registered up front plus every new one.

    Counting frees of pre-existing storages too (a parameter whose storage is replaced)
    makes ``now() - start`` the net memory a step adds, whoever allocated it.
    """

    def __init__(self, tensors=()):
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # data_ptr -> (weak ref, nbytes)
        for t in tensors:
            self._add(t)
        self.start = self.peak = self.now()

    def _add(self, t):
        s = t.untyped_storage()
        if s.data_ptr() not in self.live and s.nbytes() > 0:
            self.live[s.data_ptr()] = (s._weak_ref(), s.nbytes())

    def now(self):
        for ptr, (ref, _) in list(self.live.items()):
            if torch.UntypedStorage._expired(ref):
                torch.UntypedStorage._free_weak_ref(ref)
                del self.live[ptr]
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.now())
        return out


def _measure(model, opt, step):
    for _ in range(2):  # momentum buffers exist before measuring
        step()
    opt.zero_grad(set_to_none=True)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    registered = list(model.parameters()) + list(model.buffers()) + state
    tracker = StorageTracker(registered)
    del registered, state
    with tracker:
        step()
    return tracker.peak - tracker.start, tracker.now() - tracker.start


def memory(device):
    print("\n3. Extra memory over an SGD step, in parameter copies   "
          "[goal: SAM/ASAM/OBF peak ≤ 1 and 0 held between steps; GSAM peak ≤ 2]")
    torch.manual_seed(0)
    # an MLP at batch 2: activations are negligible next to the weights, so the step's
    # peak is parameters + gradients + optimizer state + what the optimizer adds
    model = mlp().to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (2,), device=device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def sgd_step():
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        sgd.step()

    base_peak, base_end = _measure(model, sgd, sgd_step)
    for name, make in OURS.items():
        opt = make(model.parameters())
        if isinstance(opt, LoopSAM):
            def step(opt=opt):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.first_step(zero_grad=True)
                F.cross_entropy(model(x), y).backward()
                opt.second_step()
        else:
            def step(opt=opt):
                perturbed_step(model, opt, x, y, F.cross_entropy)
        peak, end = _measure(model, opt, step)
        held = f"held between steps +{(end - base_end) / param_bytes:.2f}"
        if isinstance(opt, LoopSAM):
            held = "(its kept copies alias the parameters after the step)"
        print(f"   {name:10s}: peak +{(peak - base_peak) / param_bytes:.2f} copies, {held}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    repeats = 3 if args.quick else 10
    import os

    kept = "MALLOC_TRIM_THRESHOLD_" in os.environ
    print(f"torch {torch.__version__}; glibc trimming of freed memory: {'off' if kept else 'default (on)'}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n=== CPU, {threads} thread(s) ===")
        full_step(torch.device("cpu"), repeats)
        optimizer_side(torch.device("cpu"), repeats)
    memory(torch.device("cpu"))
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"\n=== GPU: {torch.cuda.get_device_name()} ===")
        full_step(dev, repeats)
        optimizer_side(dev, repeats * 3)


if __name__ == "__main__":
    main()
