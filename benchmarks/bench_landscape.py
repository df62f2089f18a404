"""Benchmark of forgetting_sam.landscape (issue 4): planes, Hessian eigenvalues, HVP cost.

Run:  .venv/bin/python benchmarks/bench_landscape.py [--repeats 3] [--threads 1 2]

Everything is measured side by side in one process; each timing is the best of
``--repeats`` interleaved runs (the minimum is the least noisy estimate on a shared machine).

1. A 25×25 plane (625 points) for three cases — an MLP on all 1,797 digits, the same MLP on
   128 of them, a small CNN (with BatchNorm) on 256 digit images — at 1 and 2 threads:
   * the compute floor: 625 evaluations (loss + correct count) at fixed weights;
   * the classic per-point approach: build a state dict, ``load_state_dict``, evaluate;
   * ``loss_surface`` with ``method="auto"`` (and ``"vmap"`` for the record).
2. The top Hessian eigenvalue of the CNN (10k parameters, 256 images) and of a 111-parameter
   MLP: Lanczos (ours, tol 1e-3) against a PyHessian-style power iteration (tol 1e-3, cap 100)
   reimplemented here as the reference, with the exact (eigvalsh) or a tightly converged value.
3. One Hessian-vector product against one forward+backward.

``--only-lanczos SEEDS`` (issue 13) runs only this: the top eigenvalue of the issue's digits
CNN (62k parameters, 256 images) by our Lanczos and by the real PyHessian package
(``pip install pyhessian``, the ``bench`` extra), interleaved per seed, against a converged
reference.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from forgetting_sam.landscape import hessian_eigenvalues, loss_surface, random_plane
from forgetting_sam.landscape.hessian import HessianOperator


def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * 16, 10))


def warm_up_cnn(model, x, y, steps=30):
    # A few SGD steps so BatchNorm statistics and the Hessian are not those of the init.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


def timed(fn):
    """(wall seconds, process CPU seconds) of ``fn()``; CPU time is less disturbed by other
    processes on a shared machine (at 2 threads it sums both threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


@torch.no_grad()
def floor_run(model, x, y, n=625):
    model.eval()
    for _ in range(n):
        out = model(x)
        F.cross_entropy(out, y)
        (out.argmax(1) == y).sum()


@torch.no_grad()
def classic_run(model, plane, x, y, steps=25):
    """The per-point approach of the classic loss-landscape code: load a state dict per point."""
    model.eval()
    sd0 = {k: v.clone() for k, v in model.state_dict().items()}
    d1, d2 = plane
    coords = torch.linspace(-1, 1, steps).tolist()
    for b in coords:
        for a in coords:
            sd = {k: (v + a * d1[k] + b * d2[k]) if k in d1 else v for k, v in sd0.items()}
            model.load_state_dict(sd)
            out = model(x)
            F.cross_entropy(out, y)
            (out.argmax(1) == y).sum()
    model.load_state_dict(sd0)


def ours_run(model, plane, x, y, method="auto"):
    return loss_surface(model, plane, (x, y), F.cross_entropy, steps=25, method=method, progress=False)


def ours_time(model, plane, x, y, method="auto"):
    s = ours_run(model, plane, x, y, method)
    return s.seconds, s


def bench_planes(threads, repeats):
    x, y = digits()
    cases = [
        ("MLP, 1,797 digits", mlp().eval(), x, y),
        ("MLP, 128 digits", mlp().eval(), x[:128], y[:128]),
        ("CNN, 256 images", warm_up_cnn(cnn(), x[:256].view(-1, 1, 8, 8), y[:256]), x[:256].view(-1, 1, 8, 8),
         y[:256]),
    ]
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for name, model, xb, yb in cases:
            plane = random_plane(model, seed=0)
            floor_run(model, xb, yb, n=5)
            best = {k: [float("inf"), float("inf")] for k in ("floor", "classic", "ours")}
            out = {}
            runs = {"floor": functools.partial(floor_run, model, xb, yb),
                    "classic": functools.partial(classic_run, model, plane, xb, yb),
                    "ours": lambda m=model, p=plane, a=xb, b=yb, o=out: o.__setitem__("s", ours_run(m, p, a, b))}
            # Interleaved, best of `repeats` (3× more for sub-second cases: noise is relatively larger).
            reps = repeats if timed(runs["floor"])[0] > 0.5 else 3 * repeats
            for _ in range(reps):
                for key, fn in runs.items():
                    wall, cpu = timed(fn)
                    best[key] = [min(best[key][0], wall), min(best[key][1], cpu)]
            vmap_sec, _ = ours_time(model, plane, xb, yb, method="vmap")
            rows.append((t, name, best, out["s"].method, vmap_sec))
            print(f"  threads={t} {name}: " + ", ".join(f"{k} {v[0]:.3f}s wall {v[1]:.3f}s cpu" for k, v in best.items())
                  + f"; ours ran {out['s'].method}; vmap {vmap_sec:.3f}s", flush=True)
    return rows


def bench_gpu():
    if not torch.cuda.is_available():
        return None
    x, y = digits()
    dev = torch.device("cuda")
    model = mlp().to(dev).eval()
    x, y = x.to(dev), y.to(dev)
    plane = random_plane(model, seed=0)
    ours_time(model, plane, x, y, method="vmap")
    torch.cuda.synchronize()
    seq = min(ours_time(model, plane, x, y, method="sequential")[0] for _ in range(3))
    vm = min(ours_time(model, plane, x, y, method="vmap")[0] for _ in range(3))
    auto_s, surf = ours_time(model, plane, x, y, method="auto")
    return seq, vm, auto_s, surf.method


# ---- Hessian ----------------------------------------------------------------------------------

def pyhessian_power(model, x, y, max_iter=100, tol=1e-3, seed=0, history=False):
    """PyHessian's ``eigenvalues(top_n=1)`` power iteration, reimplemented (graph built once).

    Returns ``(eigenvalue, HVP count)``; with ``history`` it ignores ``tol`` and returns the
    estimate after every product instead.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / (norm + 1e-6) for t in v]
    eigenvalue, count, seen = None, 0, []
    for _ in range(max_iter):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        count += 1
        tmp = float(sum((a * b).sum() for a, b in zip(hv, v)))
        seen.append(tmp)
        norm = torch.sqrt(sum((t * t).sum() for t in hv))
        v = [t / (norm + 1e-6) for t in hv]
        if not history and eigenvalue is not None and abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
            eigenvalue = tmp
            break
        eigenvalue = tmp
    return (seen if history else (eigenvalue, count))


def hvps_to_accuracy(seen, ref, rel=1e-3):
    """First product count after which the power estimate stays within ``rel`` of ``ref``."""
    ok = [abs(v - ref) <= rel * abs(ref) for v in seen]
    for i in range(len(ok)):
        if all(ok[i:]):
            return i + 1
    return None


def exact_top(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    m64 = model

    def f(v):
        ps, o = [], 0
        for s in shapes:
            ps.append(v[o:o + s.numel()].view(s))
            o += s.numel()
        return F.cross_entropy(functional_call(m64, dict(zip(names, ps)), (x,)), y)

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat))[-1])


def eigen_row(name, model, xb, yb, ref, how):
    t0 = time.perf_counter()
    py_val, py_count = pyhessian_power(model, xb, yb)
    py_t = time.perf_counter() - t0
    to_acc = hvps_to_accuracy(pyhessian_power(model, xb, yb, max_iter=300, history=True), ref)
    t0 = time.perf_counter()
    eig = hessian_eigenvalues(model, (xb, yb), F.cross_entropy, k=1, tol=1e-3, progress=False)
    ours_t = time.perf_counter() - t0
    return (name, ref, how, py_val, py_count, py_t, to_acc, float(eig.values[0]), eig.hvp_count, ours_t)


def bench_eigen():
    torch.set_num_threads(1)
    x, y = digits()
    rows = []
    # 111 parameters (5 → 12 → 3, on 256 Gaussian inputs with 3 classes): exact reference.
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(256, 5, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (256,), generator=g)
    rows.append(eigen_row("MLP, 111 params, 256 points", tiny, xs, ys, exact_top(tiny, xs, ys), "exact"))
    xb, yb = x[:256].view(-1, 1, 8, 8), y[:256]
    for label, model in (("CNN at init", cnn().eval()), ("CNN after 30 SGD steps", warm_up_cnn(cnn(), xb, yb))):
        n = sum(p.numel() for p in model.parameters())
        ref = float(hessian_eigenvalues(model, (xb, yb), F.cross_entropy, tol=1e-10, max_iter=300,
                                        progress=False).values[0])
        rows.append(eigen_row(f"{label}, {n} params, 256 images", model, xb, yb, ref, "Lanczos to 1e-10"))
    return rows


def digits_cnn():
    """The issue-13 CNN (conv 1→16→32, linear 2048→28→10; 62,462 parameters), trained on digits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2048, 28), nn.ReLU(), nn.Linear(28, 10))
    x, y = digits()
    x = x.view(-1, 1, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # 3 epochs of minibatch SGD: a trained model, where λ₁ and λ₂ sit close
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x[:256], y[:256]


def bench_lanczos_vs_pyhessian(seeds):
    """Ours (Lanczos, tol 1e-3) against the real PyHessian package (``pip install pyhessian``;
    power iteration, tol 1e-3, 100 iterations at most) on the same model and batch, interleaved
    per seed. Reference: Lanczos to 1e-10."""
    from pyhessian import hessian as PyHessian

    torch.set_num_threads(1)
    model, xb, yb = digits_cnn()
    ref = float(hessian_eigenvalues(model, (xb, yb), F.cross_entropy, tol=1e-10, max_iter=300,
                                    progress=False).values[0])
    rows = []
    for seed in range(seeds):
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator
        t0 = time.perf_counter()
        py_val = PyHessian(model, F.cross_entropy, data=(xb, yb), cuda=False).eigenvalues(maxIter=100, tol=1e-3,
                                                                                         top_n=1)[0][0]
        py_t = time.perf_counter() - t0
        t0 = time.perf_counter()
        eig = hessian_eigenvalues(model, (xb, yb), F.cross_entropy, k=1, tol=1e-3, seed=seed, progress=False)
        ours_t = time.perf_counter() - t0
        rows.append((seed, py_val, py_t, float(eig.values[0]), eig.hvp_count, ours_t))
    return ref, rows


def bench_hvp(repeats=20):
    torch.set_num_threads(1)
    x, y = digits()
    out = []
    cases = [("MLP, 1,797 digits", mlp().eval(), x, y),
             ("CNN, 256 images", warm_up_cnn(cnn(), x[:256].view(-1, 1, 8, 8), y[:256]), x[:256].view(-1, 1, 8, 8),
              y[:256])]
    for name, model, xb, yb in cases:
        params = list(model.parameters())

        def fb(model=model, xb=xb, yb=yb, params=params):
            loss = F.cross_entropy(model(xb), yb)
            torch.autograd.grad(loss, params)

        def timeit(fn):
            fn()
            best = float("inf")
            for _ in range(3):
                t0 = time.process_time()  # CPU time: steadier on a shared machine
                for _ in range(repeats):
                    fn()
                best = min(best, (time.process_time() - t0) / repeats)
            return best

        t_fb = timeit(fb)
        res = {}
        for method in ("autograd", "func"):
            op = HessianOperator(model, (xb, yb), F.cross_entropy, hvp=method)
            v = torch.randn(op.n, dtype=torch.float64)
            res[method] = timeit(lambda op=op, v=v: op.matvec(v))
        # PyHessian's product: the graph built once, one grad(...) per product.
        loss = F.cross_entropy(model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        vs = [torch.randn_like(p) for p in params]
        res["pyhessian"] = timeit(functools.partial(torch.autograd.grad, grads, params, grad_outputs=vs,
                                                    retain_graph=True))
        out.append((name, t_fb, res))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--only-lanczos", type=int, metavar="SEEDS", default=0,
                    help="only the Lanczos-vs-PyHessian table over this many seeds (needs pyhessian)")
    args = ap.parse_args()
    if args.only_lanczos:
        ref, rows = bench_lanczos_vs_pyhessian(args.only_lanczos)
        print(f"### Top eigenvalue, digits CNN (62,462 params, 256 images, 1 thread); reference {ref:.6g}\n")
        print("| seed | PyHessian value, s | ours value, HVPs, s | ours / PyHessian time | ours rel. error | "
              "PyHessian rel. error |")
        print("|---|---|---|---|---|---|")
        for seed, pv, pt, ov, oc, ot in rows:
            print(f"| {seed} | {pv:.6g}, {pt:.3f} | {ov:.6g}, {oc}, {ot:.3f} | {ot / pt:.2f} | "
                  f"{abs(ov - ref) / ref:.1e} | {abs(pv - ref) / ref:.1e} |")
        py_total, ours_total = sum(r[2] for r in rows), sum(r[5] for r in rows)
        worst = max(abs(r[3] - ref) / ref for r in rows)
        print(f"\ntotal: ours {ours_total:.2f}s / PyHessian {py_total:.2f}s = {ours_total / py_total:.2f}; "
              f"worst relative error ours {worst:.1e}, PyHessian {max(abs(r[1] - ref) / ref for r in rows):.1e}")
        return
    print("## Loss landscape (issue 4)\n")
    print("### 25×25 plane (625 points), CPU")
    rows = bench_planes(args.threads, args.repeats)
    print("\n| threads | case | floor wall / CPU (s) | classic wall / CPU (s) | ours wall / CPU (s) | "
          "ours / floor, wall / CPU | ours / classic, wall / CPU | method | vmap forced, wall (× floor) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t, name, b, method, vm in rows:
        fl, cl, ours = b["floor"], b["classic"], b["ours"]
        print(f"| {t} | {name} | {fl[0]:.3f} / {fl[1]:.3f} | {cl[0]:.3f} / {cl[1]:.3f} | {ours[0]:.3f} / {ours[1]:.3f} "
              f"| {ours[0] / fl[0]:.3f} / {ours[1] / fl[1]:.3f} | {ours[0] / cl[0]:.3f} / {ours[1] / cl[1]:.3f} "
              f"| {method} | {vm:.3f} ({vm / fl[0]:.2f}×) |")
    gpu = bench_gpu()
    if gpu is not None:
        seq, vm, auto_s, method = gpu
        print(f"\nGPU, digits MLP plane: sequential {seq:.3f}s, vmap {vm:.3f}s ({seq / vm:.1f}× faster), "
              f"auto {auto_s:.3f}s ({method})")
    else:
        print("\nGPU: none available in this run.")
    print("\n### Top Hessian eigenvalue (1 thread)")
    print("\n| model | reference | power (PyHessian rule, tol 1e-3): value, HVPs, s | power: HVPs to be within 1e-3 "
          "| Lanczos (ours, tol 1e-3): value, HVPs, s | ours / power HVPs | ours rel. error | power rel. error |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ref, how, pv, pc, pt, to_acc, ov, oc, ot in bench_eigen():
        print(f"| {name} | {ref:.6g} ({how}) | {pv:.6g}, {pc}, {pt:.2f} | {to_acc if to_acc else '> 300'} | "
              f"{ov:.6g}, {oc}, {ot:.2f} | {oc / pc:.2f} (vs to-accuracy: {oc / (to_acc or 300):.2f}) | "
              f"{abs(ov - ref) / abs(ref):.1e} | {abs(pv - ref) / abs(ref):.1e} |")
    print("\n### One Hessian-vector product vs one forward+backward (1 thread)")
    print("\n| case | forward+backward (ms) | HVP autograd, cached graph (×) | HVP torch.func (×) | "
          "PyHessian-style HVP (×) |")
    print("|---|---|---|---|---|")
    for name, t_fb, res in bench_hvp():
        print(f"| {name} | {t_fb * 1e3:.2f} | {res['autograd'] / t_fb:.2f} | {res['func'] / t_fb:.2f} | "
              f"{res['pyhessian'] / t_fb:.2f} |")


if __name__ == "__main__":
    main()
