"""GPU check: step time of SGD, SAM and OBF on ResNet-18 and ViT-S/32, bf16 and fp16.

Synthetic CIFAR-shaped data (3x32x32, 10 classes). ResNet-18 is the CIFAR variant at 32 px;
ViT-S/32 sees the images resized to 224 px, as in the paper's CIFAR transfer runs. Every step
goes through ``perturbed_step`` (the engine's loop), with ``torch.autocast`` for bf16 and a
``GradScaler`` for fp16. Prints ms/step, images/s, the SAM-step / SGD-step time ratio (goal
<= 2.05: two passes make 2.0 the floor) and checks that no loss or weight went NaN.

    python benchmarks/gpu_check.py            # one GPU, <= 5 minutes
    python benchmarks/gpu_check.py --smoke    # tiny sizes on the CPU (what the tests run)

Exit status 1 if anything went non-finite.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forgetting_sam.engine import build_model
from forgetting_sam.optim import OBF, SAM, perturbed_step

GOAL = 2.05


def make_model(name: str, smoke: bool, device):
    if name == "resnet18":
        opts = dict(width=8, blocks=(1, 1, 1, 1)) if smoke else {}
        m = build_model("resnet18_cifar", num_classes=10, input_shape=(3, 32, 32), **opts)
        m = m.to(device, memory_format=torch.channels_last)
    else:
        size = 32 if smoke else 224
        opts = dict(patch_size=16, num_layers=1, hidden_dim=32, num_heads=2, mlp_dim=64) if smoke else {}
        m = build_model("vit_s32", num_classes=10, input_shape=(3, size, size), pool="gap", head_bias=-10.0, **opts)
        m = m.to(device)
    return m


def make_optimizer(kind: str, model):
    kw = dict(lr=0.01, momentum=0.9)
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), **kw)
    if kind == "sam":
        return SAM(model.parameters(), torch.optim.SGD, rho=0.05, **kw)
    return OBF(model.parameters(), torch.optim.SGD, rho=0.05, gamma=1.0, **kw)


def time_steps(model, init_state, model_name, kind, amp, args, device):
    # One model per architecture, reset to the same initial weights for every case: the
    # cases differ only in optimizer and precision (and kernels are set up once).
    model.load_state_dict(init_state)
    opt = make_optimizer(kind, model)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    bs = args.batch_size
    x = torch.randn(bs, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (bs,), device=device)
    if model_name == "resnet18":
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = F.interpolate(x, size=32 if args.smoke else 224, mode="bilinear", align_corners=False)
    model.train()
    losses = []

    def step():
        with torch.autocast(device.type, dtype=dtype):
            r = perturbed_step(model, opt, x, y, F.cross_entropy, scaler=scaler)
        losses.append(r.loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    finite = all(math.isfinite(v) for v in torch.stack(losses).float().tolist()) and all(
        torch.isfinite(p).all().item() for p in model.parameters())
    return {"model": model_name, "opt": kind, "amp": amp, "ms_per_step": dt * 1e3, "img_per_s": bs / dt,
            "finite": finite}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU, a few steps")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 (smoke: 4)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per case (default 30; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; smoke 1)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (4 if args.smoke else 128)
    args.steps = args.steps or (1 if args.smoke else 30)
    args.warmup = args.warmup or (1 if args.smoke else 10)
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        print("no GPU here: run with --smoke for the CPU check", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"device: {card}; torch {torch.__version__}; batch {args.batch_size}; {args.steps} timed steps")
    results = []
    print(f"{'model':9s} {'amp':5s} {'opt':4s} {'ms/step':>9s} {'img/s':>9s} {'vs SGD':>7s}  finite")
    for model_name in ("resnet18", "vit_s32"):
        torch.manual_seed(0)
        model = make_model(model_name, args.smoke, device)
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        for amp in ("bf16", "fp16"):
            base = None
            for kind in ("sgd", "sam", "obf"):
                r = time_steps(model, init_state, model_name, kind, amp, args, device)
                base = r["ms_per_step"] if kind == "sgd" else base
                r["ratio_vs_sgd"] = r["ms_per_step"] / base
                results.append(r)
                print(f"{model_name:9s} {amp:5s} {kind:4s} {r['ms_per_step']:9.2f} {r['img_per_s']:9.0f} "
                      f"{r['ratio_vs_sgd']:7.3f}  {r['finite']}", flush=True)
    print()
    for r in results:
        if r["opt"] == "sam":
            verdict = "ok" if r["ratio_vs_sgd"] <= GOAL else "above goal"
            if args.smoke:
                verdict = "smoke: not judged"
            print(f"SAM/SGD step-time ratio {r['model']} {r['amp']}: {r['ratio_vs_sgd']:.3f} "
                  f"(goal <= {GOAL}; {verdict})")
    bad = [r for r in results if not r["finite"]]
    print("no NaN: all losses and weights finite" if not bad else
          f"NaN/Inf in: {', '.join(r['model'] + '/' + r['amp'] + '/' + r['opt'] for r in bad)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": card, "results": results}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
