"""DDP (gloo, CPU, 2 processes): R replicas with local batch b equal one process with
batch R·b and micro_batch_size=b (docs/algorithms.md §6)."""

from __future__ import annotations

import gc

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


def _worker(rank, world, store, out):
    torch.set_num_threads(1)
    # A file store, not TCP: no port to race for, and no server living in rank 0 that the
    # other rank still needs while it tears down.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        # each DDP model lives and dies inside _train_replica, before the group is destroyed
        # (a DDP reducer outliving its group can abort the process at exit)
        results = {name: _train_replica(rank, build) for name, build in BUILDERS.items()}
        gc.collect()
        if rank == 0:
            torch.save(results, out)
        dist.barrier()  # both replicas are done before either leaves the group
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "params.pt"
    # one pair of processes runs every optimizer: spawning dominates the cost
    mp.spawn(_worker, args=(2, str(tmp / "store"), str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_two_replicas_equal_one_process_with_micro_batches(name, ddp_results):
    ddp_params = ddp_results[name]

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
