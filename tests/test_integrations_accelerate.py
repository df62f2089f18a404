"""The accelerate loop with perturbed_backward, against the package's two-step API."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

accelerate = pytest.importorskip("accelerate")

from integrations_cases import FAMILY, max_weight_diff, replica_models, run_two_replicas, two_step_reference  # noqa: E402

from forgetting_sam import SAM, AscentLoss, perturbed_step  # noqa: E402
from forgetting_sam.integrations.accelerate import perturbed_backward  # noqa: E402

BATCH = 4
criterion = AscentLoss(F.cross_entropy)


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3)).to(dtype)


def _data(n=32, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def compute_loss(model, batch):
    x, y = batch
    logits = model(x)
    return criterion(logits, y), logits


def _loop(name, accumulation, mixed="no", dtype=torch.float64, x=None, y=None):
    """The documented loop: prepare the base optimizer, replace accelerator.backward."""
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulation,
                                         mixed_precision=mixed)
    model = _net(dtype)
    opt = FAMILY[name](model.parameters())
    if x is None:
        x, y = _data(dtype=dtype)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)
    model, base, loader = accelerator.prepare(model, opt.base_optimizer, loader)
    for batch in loader:
        with accelerator.accumulate(model):
            perturbed_backward(accelerator, model, opt, batch, compute_loss)
            base.step()
            base.zero_grad()
    return model, opt, accelerator


def _forward(model, batch):
    return model(batch[0]), batch[1]


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("accumulation", [1, 2])
def test_accelerate_loop_equals_two_step(name, accumulation):
    model, _, _ = _loop(name, accumulation)
    ref = _net()
    x, y = _data()
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    windows = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
    two_step_reference(ref, FAMILY[name](ref.parameters()), windows, _forward)
    assert max_weight_diff(model, _net()) > 1e-3
    assert max_weight_diff(model, ref) < 1e-9
    # BatchNorm updated once per micro-batch (the unperturbed pass), as in the reference
    assert torch.allclose(model[1].running_mean, ref[1].running_mean, atol=1e-12, rtol=0)
    assert int(model[1].num_batches_tracked) == len(batches)


def test_accelerate_obf_without_ascent_loss_raises():
    accelerator = accelerate.Accelerator(cpu=True)
    model = _net()
    opt = FAMILY["obf"](model.parameters())
    x, y = _data()
    with pytest.raises(RuntimeError, match="AscentLoss"):
        perturbed_backward(accelerator, model, opt, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    assert not opt.is_perturbed


def test_accelerate_refuses_a_perturb_schedule_it_cannot_count():
    accelerator = accelerate.Accelerator(cpu=True)
    model = _net()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, perturb_every=2)
    with pytest.raises(ValueError, match="perturb_every=2"):
        perturbed_backward(accelerator, model, opt, _data(), compute_loss)


def test_accelerate_scaler_path_equals_perturbed_step():
    """accelerate's GradScaler path; on CPU ``Accelerator(mixed_precision="fp16")`` makes no
    scaler (accelerate 1.x), so one is set by hand. An overflowing first batch skips the step
    and backs off the scale, as perturbed_step does."""
    x, y = _data(dtype=torch.float32)
    x[:BATCH] = 1e30
    accelerator = accelerate.Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    model = _net(torch.float32)
    opt = FAMILY["gsam"](model.parameters())
    ref = copy.deepcopy(model)
    ref_opt = FAMILY["gsam"](ref.parameters())
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    model, base = accelerator.prepare(model, opt.base_optimizer)
    for i in range(0, len(x), BATCH):
        batch = (x[i:i + BATCH], y[i:i + BATCH])
        with torch.autocast("cpu", dtype=torch.float16):
            perturbed_backward(accelerator, model, opt, batch, compute_loss)
            perturbed_step(ref, ref_opt, batch, compute_loss=compute_loss, scaler=ref_scaler)
        base.step()
        base.zero_grad()
    assert accelerator.scaler.get_scale() == ref_scaler.get_scale() < 2.0 ** 8
    assert max_weight_diff(model, ref) < 1e-6


def test_importing_the_package_imports_no_framework():
    import subprocess
    import sys

    code = ("import sys, forgetting_sam, forgetting_sam.engine, forgetting_sam.cli, "
            "forgetting_sam.integrations; "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate', 'timm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_integrations_accelerate import _data, _loop
for name in {names!r}:
    x, y = _data(n=64)
    model, opt, accelerator = _loop(name, 2, x=x, y=y)
    state = accelerator.unwrap_model(model).state_dict()
    torch.save(state, os.path.join({out!r}, f"{{name}}_rank{{accelerator.process_index}}.pt"))
"""


def test_accelerate_ddp_accumulation_two_processes(tmp_path):
    """Two gloo replicas under torchrun, gradient_accumulation_steps=2. accelerate hands
    replica r the global batches r, r + 2, ...; every micro-batch is perturbed with its own ε
    (as perturbed_step does under DDP) and the window's step uses the mean descent gradient
    over both replicas' micro-batches: the replicas stay identical and equal the two-step loop
    on windows of the four batches."""
    names = ["sam", "obf"]
    run_two_replicas(DDP_SCRIPT.format(tests=str(Path(__file__).resolve().parent), names=names,
                                       out=str(tmp_path)), tmp_path)
    x, y = _data(n=64)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    windows = [batches[i:i + 4] for i in range(0, len(batches), 4)]
    for name in names:
        ranks = replica_models(_net, tmp_path, name)
        assert torch.equal(ranks[0][1].running_mean, ranks[1][1].running_mean)
        ref = _net()
        two_step_reference(ref, FAMILY[name](ref.parameters()), windows, _forward)
        assert max_weight_diff(ranks[0], _net()) > 1e-3
        assert max_weight_diff(ranks[0], ref) < 1e-9, name
