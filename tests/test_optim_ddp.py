"""DDP (gloo, CPU, 2 processes): R replicas with local batch b equal one process with
batch R·b and micro_batch_size=b (docs/algorithms.md §6); and with BatchNorm, gradient
accumulation and an overflow on one rank only, every rank ends with the same parameters
and buffers (docs/algorithms.md §7) instead of hanging."""

from __future__ import annotations

import datetime
import gc
import math
import time
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from forgetting_sam import GSAM, OBF, SAM, perturbed_step

BUILDERS = {
    "sam": lambda p: SAM(p, torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9),
    "gsam": lambda p: GSAM(p, torch.optim.SGD, rho=0.3, alpha=0.5, lr=0.1, momentum=0.9),
    "obf": lambda p: OBF(p, torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
}
B, STEPS = 6, 3


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def make_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2 * B, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (2 * B,), generator=g))
            for _ in range(STEPS)]


def _train_replica(rank, build):
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = build(model.parameters())
    for x, y in make_batches():
        sl = slice(rank * B, (rank + 1) * B)
        perturbed_step(model, opt, x[sl], y[sl], F.cross_entropy)
    return [p.detach().clone() for p in model.module.parameters()]


def make_bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


# (step, call, rank): an Inf in the ascent pass of that perturbed_step call on that rank
# only. Step 1's overflow is in an update=False call, step 2's in the updating call.
BN_OVERFLOWS = {(1, 0, 1), (2, 1, 0)}
BN_BUILDERS = {name: BUILDERS[name] for name in ("sam", "gsam", "sgd")}


def _train_bn_replica(rank, build):
    """Each step: update=False on one half of the local batch, update=True on the other."""
    model = nn.parallel.DistributedDataParallel(make_bn_model())
    opt = build(model.parameters())
    at = {"step": -1, "call": -1}
    blow_up = lambda m, i, out: out * math.inf if (at["step"], at["call"], rank) in BN_OVERFLOWS else out  # noqa: E731
    model.module[-1].register_forward_hook(blow_up)
    skipped = []
    for step, (x, y) in enumerate(make_batches()):
        local_x, local_y = x[rank * B:(rank + 1) * B], y[rank * B:(rank + 1) * B]
        for call, sl in enumerate((slice(0, B // 2), slice(B // 2, B))):
            at.update(step=step, call=call)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = perturbed_step(model, opt, local_x[sl], local_y[sl], F.cross_entropy, update=call == 1)
            at["call"] = -1  # hooks fire on the perturbed pass too: only the ascent blows up
        skipped.append(res.skipped)
    module = model.module
    return {
        "params": [p.detach().clone() for p in module.parameters()],
        "buffers": [b.detach().clone() for b in module.buffers()],
        "skipped": torch.tensor(skipped),
    }


def _worker(rank, world, store, out):
    torch.set_num_threads(1)
    # A file store, not TCP: no port to race for, and no server living in rank 0 that the
    # other rank still needs while it tears down. The timeout turns a collective that one
    # rank never joins into an error instead of a stalled test.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        # each DDP model lives and dies inside _train_replica, before the group is destroyed
        # (a DDP reducer outliving its group can abort the process at exit)
        results = {name: _train_replica(rank, build) for name, build in BUILDERS.items()}
        results["bn"] = {name: _train_bn_replica(rank, build) for name, build in BN_BUILDERS.items()}
        gc.collect()
        torch.save(results, f"{out}.{rank}")
        dist.barrier()  # both replicas are done before either leaves the group
    finally:
        dist.destroy_process_group()


def _spawn_with_deadline(fn, args, nprocs, seconds):
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"DDP workers still running after {seconds} s (a rank hangs in a collective)")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "params.pt"
    # one pair of processes runs every optimizer: spawning dominates the cost
    _spawn_with_deadline(_worker, (2, str(tmp / "store"), str(out)), nprocs=2, seconds=240)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_two_replicas_equal_one_process_with_micro_batches(name, ddp_results):
    ddp_params = ddp_results[0][name]

    model = make_model()
    opt = BUILDERS[name](model.parameters())
    for x, y in make_batches():
        perturbed_step(model, opt, x, y, F.cross_entropy, micro_batch_size=B)
    for a, b in zip(ddp_params, model.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # and it is not trivially the whole-batch step
    whole = make_model()
    opt = BUILDERS[name](whole.parameters())
    for x, y in make_batches():
        perturbed_step(whole, opt, x, y, F.cross_entropy)
    if name != "sgd":
        assert not all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(ddp_params, whole.parameters()))


@pytest.mark.parametrize("name", list(BN_BUILDERS))
def test_every_rank_ends_with_the_same_parameters_and_buffers(name, ddp_results):
    ranks = [r["bn"][name] for r in ddp_results]
    for key in ("params", "buffers"):
        for a, b in zip(ranks[0][key], ranks[1][key]):
            assert torch.equal(a, b), f"{key} differ across ranks"
    assert all(torch.isfinite(p).all() for p in ranks[0]["params"])
    # the running statistics did move, and the parameters too
    fresh = make_bn_model()
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0]["buffers"], fresh.buffers()))
    assert not all(torch.equal(a, b) for a, b in zip(ranks[0]["params"], fresh.parameters()))
    # a one-rank overflow skips that step on every rank (for SGD, whose one pass is the
    # descent, the all-reduced gradient carries the Inf to both ranks)
    for r in ranks:
        assert r["skipped"].tolist() == [False, True, True]
