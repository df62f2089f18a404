"""Lightning's automatic optimization with the family, against the package's two-step API.

One LightningModule (its loss through AscentLoss) trains with SGD, SAM, GSAM and OBF; in
float64 its weights must equal the hand-written two-step loop's on the same batches.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")

from integrations_cases import (  # noqa: E402
    FAMILY, max_weight_diff, replica_models, run_two_replicas, two_step_reference)

from forgetting_sam import AscentLoss, perturbed_step  # noqa: E402
from forgetting_sam.integrations.lightning import perturbed_precision  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH = 8


class Net(L.LightningModule):
    def __init__(self, name: str, loss_fn=None, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 3)).to(dtype)
        self.name = name
        self.criterion = loss_fn or AscentLoss(F.cross_entropy)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def configure_optimizers(self):
        if self.name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return FAMILY[self.name](self.parameters())


def _data(n=32, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def _loader(x, y):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def _trainer(precision="32", **kw):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False,
                plugins=[perturbed_precision(precision)])
    base.update(kw)
    return L.Trainer(**base)


def _forward(model, batch):
    x, y = batch
    return model(x), y


def _batches(x, y):
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_lightning_equals_two_step(name):
    module = Net(name)
    ref = copy.deepcopy(module.net)
    x, y = _data()
    _trainer(max_epochs=1).fit(module, _loader(x, y))
    two_step_reference(ref, FAMILY[name](ref.parameters()), [[b] for b in _batches(x, y)], _forward)
    assert max_weight_diff(module.net, Net(name).net) > 1e-3
    assert max_weight_diff(module.net, ref) < 1e-9


def test_lightning_sgd_unchanged_by_the_plugin():
    a, b = Net("sgd"), Net("sgd")
    x, y = _data()
    _trainer(max_epochs=1).fit(a, _loader(x, y))
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, max_epochs=1).fit(b, _loader(x, y))
    assert max_weight_diff(a.net, b.net) == 0.0


def test_lightning_obf_without_ascent_loss_raises():
    module = Net("obf", loss_fn=F.cross_entropy)
    x, y = _data()
    with pytest.raises(RuntimeError, match="AscentLoss"):
        _trainer(max_steps=1).fit(module, _loader(x, y))


def _accumulated_reference(name, windows):
    """perturbed_step with update=False on a window's earlier batches, update=True on its last."""
    module = Net(name)
    opt = FAMILY[name](module.net.parameters())
    for window in windows:
        for j, (xb, yb) in enumerate(window):
            perturbed_step(module.net, opt, (xb, yb), compute_loss=lambda m, b: module.criterion(m(b[0]), b[1]),
                           update=j == len(window) - 1)
    return module.net


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_lightning_accumulation_equals_perturbed_step_update_false(name):
    module = Net(name)
    x, y = _data()
    _trainer(max_epochs=1, accumulate_grad_batches=2).fit(module, _loader(x, y))
    batches = _batches(x, y)
    ref = _accumulated_reference(name, [batches[i:i + 2] for i in range(0, len(batches), 2)])
    assert max_weight_diff(module.net, Net(name).net) > 1e-3
    assert max_weight_diff(module.net, ref) < 1e-9


def test_lightning_sgd_accumulation_unchanged_by_the_plugin():
    a, b = Net("sgd"), Net("sgd")
    x, y = _data()
    _trainer(max_epochs=1, accumulate_grad_batches=2).fit(a, _loader(x, y))
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
              accumulate_grad_batches=2).fit(b, _loader(x, y))
    assert max_weight_diff(a.net, Net("sgd").net) > 1e-3
    assert max_weight_diff(a.net, b.net) == 0.0


@pytest.mark.parametrize("name", ["sam", "gsam", "obf"])
def test_lightning_16_mixed_accumulation_equals_perturbed_step(name):
    x, y = _data(dtype=torch.float32)
    module = Net(name, dtype=torch.float32)
    trainer = _trainer("16-mixed", max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(module, _loader(x, y))
    assert trainer.global_step == 2
    ref = Net(name, dtype=torch.float32)
    opt, scaler = FAMILY[name](ref.parameters()), torch.amp.GradScaler("cpu")
    for j, (xb, yb) in enumerate(_batches(x, y)):
        with torch.autocast("cpu", dtype=torch.float16):
            perturbed_step(ref.net, opt, (xb, yb), compute_loss=lambda m, b: ref.criterion(m(b[0]), b[1]),
                           scaler=scaler, update=j % 2 == 1)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert max_weight_diff(module.net, Net(name, dtype=torch.float32).net) > 1e-4
    # Lightning's 1/k and our k cancel up to float32 rounding.
    assert max_weight_diff(module.net, ref.net) < 1e-6
    assert trainer.precision_plugin.scaler.get_scale() == scaler.get_scale()


def test_lightning_16_mixed_accumulation_overflow_skips_the_window():
    x, y = _data(dtype=torch.float32)
    x[BATCH:2 * BATCH] = 1e30  # the window's second batch overflows fp16
    module = Net("sam", dtype=torch.float32)
    start = copy.deepcopy(module.net)
    trainer = _trainer("16-mixed", max_steps=1, accumulate_grad_batches=2)
    trainer.fit(module, _loader(x, y))
    assert max_weight_diff(module.net, start) == 0.0
    assert trainer.precision_plugin.scaler.get_scale() < 2.0 ** 16


def _mixed_reference(name, precision, x, y):
    """perturbed_step under torch.autocast (and a GradScaler for fp16), float32 weights."""
    module = Net(name, dtype=torch.float32)
    opt = FAMILY[name](module.parameters())
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    for xb, yb in _batches(x, y):
        with torch.autocast("cpu", dtype=dtype):
            perturbed_step(module.net, opt, (xb, yb), compute_loss=lambda m, b: module.criterion(m(b[0]), b[1]),
                           scaler=scaler)
    return module.net, scaler


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["sam", "obf"])
def test_lightning_mixed_precision_equals_perturbed_step(name, precision):
    x, y = _data(dtype=torch.float32)
    module = Net(name, dtype=torch.float32)
    trainer = _trainer(precision, max_epochs=1)
    trainer.fit(module, _loader(x, y))
    ref, scaler = _mixed_reference(name, precision, x, y)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    # Same casts, same order: float32 master weights agree to float32 rounding.
    assert max_weight_diff(module.net, ref) < 1e-6
    if scaler is not None:
        assert trainer.precision_plugin.scaler.get_scale() == scaler.get_scale()


def test_lightning_16_mixed_overflow_skips_with_weights_restored():
    x, y = _data(dtype=torch.float32)
    x[:BATCH] = 1e30  # the first batch overflows fp16 in the ascent pass
    module = Net("gsam", dtype=torch.float32)
    start = copy.deepcopy(module.net)
    trainer = _trainer("16-mixed", max_steps=1)
    trainer.fit(module, _loader(x, y))
    assert max_weight_diff(module.net, start) == 0.0
    assert trainer.precision_plugin.scaler.get_scale() < 2.0 ** 16


def test_lightning_resume_from_checkpoint(tmp_path):
    x, y = _data(n=16)
    whole = Net("gsam")
    _trainer(max_epochs=2).fit(whole, _loader(x, y))
    first = Net("gsam")
    trainer = _trainer(max_epochs=1)
    trainer.fit(first, _loader(x, y))
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = Net("gsam")
    resumer = _trainer(max_epochs=2)
    resumer.fit(resumed, _loader(x, y), ckpt_path=str(ckpt))
    assert resumer.global_step == 4
    assert max_weight_diff(resumed.net, whole.net) < 1e-12
    assert resumer.optimizers[0].state  # momentum restored


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import lightning as L
from test_integrations_lightning import BATCH, Net, _data
from forgetting_sam.integrations.lightning import perturbed_precision
x, y = _data()
data = torch.utils.data.TensorDataset(x, y)
# Rank r takes examples r, r + 2, ...: step j takes each replica's j-th batch of those.
rank = int(os.environ.get("LOCAL_RANK", 0))
sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
for name in {names!r}:
    module = Net(name)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        plugins=[perturbed_precision("32")])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=BATCH, sampler=sampler))
    if trainer.global_rank == 0:
        torch.save(module.net.state_dict(), os.path.join({out!r}, name + ".pt"))
"""


def test_lightning_ddp_two_processes(tmp_path):
    """Two gloo replicas with batch b each equal one process with batch 2b and m = b
    (docs/algorithms.md §6): each replica perturbs with its own gradients, and the mean descent
    gradient is all-reduced once."""
    names = ["obf"]  # the headline member; the single-process tests cover the others
    run_two_replicas(DDP_SCRIPT.format(tests=str(REPO / "tests"), names=names, out=str(tmp_path)),
                     tmp_path, torchrun=False)  # Lightning launches the second process itself
    x, y = _data()
    # rank r holds examples r, r + 2, ...; step j's window is both replicas' j-th batch
    replica = [(x[r::2], y[r::2]) for r in range(2)]
    windows = [[(xr[j * BATCH:(j + 1) * BATCH], yr[j * BATCH:(j + 1) * BATCH]) for xr, yr in replica]
               for j in range(len(x) // (2 * BATCH))]
    for name in names:
        ref = Net(name).net
        two_step_reference(ref, FAMILY[name](ref.parameters()), windows, _forward)
        trained = Net(name).net
        trained.load_state_dict(torch.load(tmp_path / f"{name}.pt"))
        assert max_weight_diff(trained, Net(name).net) > 1e-3
        assert max_weight_diff(trained, ref) < 1e-9, name


DDP_ACCUMULATE_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import lightning as L
from test_integrations_lightning import BATCH, Net, _data
from forgetting_sam.integrations.lightning import perturbed_precision
rank = int(os.environ.get("LOCAL_RANK", 0))

def fit(module, x, y, stem):
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        accumulate_grad_batches=2, plugins=[perturbed_precision("32")])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=BATCH, sampler=sampler))
    torch.save(module.net.state_dict(), os.path.join({out!r}, f"{{stem}}_rank{{trainer.global_rank}}.pt"))

x, y = _data(n=64)
for name in {names!r}:
    fit(Net(name), x, y, name)
# An Inf in one example of rank 1's first batch: its ascent is non-finite, so rank 1 skips the
# first window, and rank 0 must skip it too.
poisoned = x.clone()
poisoned[1, 0] = float("inf")
fit(Net("sam"), poisoned, y, "poisoned")
# BatchNorm: each replica's running statistics come from its own batches; rank 0's are
# broadcast at each window's end, as DDP does before a synced forward.
module = Net("sam")
torch.manual_seed(0)
module.net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(),
                                 torch.nn.Linear(16, 3)).double()
fit(module, x, y, "bn")
"""


def test_lightning_ddp_accumulation_two_processes(tmp_path):
    """accumulate_grad_batches=2 on two gloo replicas: every replica's batch gets its own ε
    (Lightning syncs no backward inside a window but the last), the window steps on the mean
    of all 2 × 2 descent gradients, and both replicas end with the same weights. Equals the
    two-step loop on windows of the four batches (SAM: ascent from Lightning's own loss;
    OBF: the re-run ascent pass); a skip on one replica skips the window on both, and
    BatchNorm's running statistics are rank 0's on both, as DDP keeps them."""
    names = ["sam", "obf"]
    run_two_replicas(DDP_ACCUMULATE_SCRIPT.format(tests=str(REPO / "tests"), names=names, out=str(tmp_path)),
                     tmp_path, torchrun=False)  # Lightning launches the second process itself
    x, y = _data(n=64)
    # rank r holds examples r, r + 2, ...; its j-th batch is the j-th BATCH of those
    replica = [(x[r::2], y[r::2]) for r in range(2)]
    batches = [[(xr[j * BATCH:(j + 1) * BATCH], yr[j * BATCH:(j + 1) * BATCH]) for xr, yr in replica]
               for j in range(len(x) // (2 * BATCH))]
    windows = [batches[j] + batches[j + 1] for j in range(0, len(batches), 2)]
    for name in names:
        ranks = replica_models(lambda name=name: Net(name).net, tmp_path, name)
        ref = Net(name).net
        two_step_reference(ref, FAMILY[name](ref.parameters()), windows, _forward)
        assert max_weight_diff(ranks[0], Net(name).net) > 1e-3
        assert max_weight_diff(ranks[0], ref) < 1e-9, name
    # a skip on rank 1 alone skips the first window on both; the second window steps as usual
    poisoned = replica_models(lambda: Net("sam").net, tmp_path, "poisoned")
    ref = Net("sam").net
    two_step_reference(ref, FAMILY["sam"](ref.parameters()), windows[1:], _forward)
    assert max_weight_diff(poisoned[0], ref) < 1e-9
    # BatchNorm: weights and running statistics identical on both replicas
    bn = [torch.load(tmp_path / f"bn_rank{r}.pt") for r in range(2)]
    assert bn[0]["1.running_mean"].abs().max() > 0
    for key in bn[0]:
        assert torch.equal(bn[0][key], bn[1][key]), key
