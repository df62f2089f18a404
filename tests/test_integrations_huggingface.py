"""PerturbedTrainer (the Hugging Face Trainer) against the package's two-step API.

A 2-layer BERT built from a config (nothing downloaded), in float64, dropout off, batches in
order: the Trainer's weights must equal the hand-written two-step loop's.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from forgetting_sam.integrations.huggingface import PerturbedTrainer  # noqa: E402

from integrations_cases import FAMILY, max_weight_diff, replica_models, run_two_replicas, two_step_reference  # noqa: E402

BATCH, SEQ, N = 4, 8, 16


def _bert(dtype=torch.float64):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg).to(dtype)


def _data():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (N, SEQ), generator=g)
    labels = torch.randint(0, 3, (N,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
             "labels": labels[i]} for i in range(N)]


def _batches(data):
    return [{k: torch.stack([d[k] for d in data[i:i + BATCH]]) for k in data[0]}
            for i in range(0, len(data), BATCH)]


def _forward(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits, batch["labels"]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=BATCH, use_cpu=True,
                lr_scheduler_type="constant", max_grad_norm=0.0, report_to="none",
                save_strategy="no", logging_strategy="no", disable_tqdm=True,
                train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def _train(tmp_path, name, model, steps, accumulation=1, **kw):
    opt = FAMILY[name](model.parameters())
    trainer = PerturbedTrainer(model=model, args=_args(tmp_path, max_steps=steps,
                                                       gradient_accumulation_steps=accumulation, **kw),
                               train_dataset=_data(), optimizers=(opt, None))
    # transformers 5 believes BERT's classification loss divides by num_items_in_batch (its
    # forward takes **kwargs), so it would sum the window's gradients; the loss is a batch
    # mean, so make the Trainer divide by the accumulation steps, as the reference does.
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    return trainer


@pytest.mark.parametrize("name", sorted(FAMILY))
@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_equals_two_step(tmp_path, name, accumulation):
    model = _bert()
    ref = copy.deepcopy(model)
    steps = N // (BATCH * accumulation)
    _train(tmp_path, name, model, steps, accumulation)
    batches = _batches(_data())
    windows = [batches[i:i + accumulation] for i in range(0, len(batches), accumulation)]
    two_step_reference(ref, FAMILY[name](ref.parameters()), windows, _forward)
    assert max_weight_diff(model, _bert()) > 1e-3  # it trained
    assert max_weight_diff(model, ref) < 1e-9


def test_trainer_with_a_plain_optimizer_is_the_trainer(tmp_path):
    model, ref = _bert(), _bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    PerturbedTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=_data(),
                     optimizers=(opt, None)).train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    transformers.Trainer(model=ref, args=_args(tmp_path, max_steps=2), train_dataset=_data(),
                         optimizers=(ref_opt, None)).train()
    assert max_weight_diff(model, ref) == 0.0


def test_trainer_resumes_from_its_checkpoint(tmp_path):
    whole = _bert()
    _train(tmp_path / "whole", "gsam", whole, 4)
    first = _bert()
    trainer = _train(tmp_path / "cut", "gsam", first, 2, save_strategy="steps", save_steps=2)
    assert (tmp_path / "cut" / "checkpoint-2" / "optimizer.pt").is_file()
    resumed = _bert()
    opt = FAMILY["gsam"](resumed.parameters())
    PerturbedTrainer(model=resumed, args=_args(tmp_path / "cut", max_steps=4, save_strategy="no"),
                     train_dataset=_data(), optimizers=(opt, None)).train(
        resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    assert trainer.state.global_step == 2
    assert max_weight_diff(resumed, whole) < 1e-12
    assert opt.state  # the momentum came back with the checkpoint


def test_trainer_bf16_trains(tmp_path):
    model = _bert(torch.float32)
    start = copy.deepcopy(model)
    _train(tmp_path, "obf", model, 2, bf16=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max_weight_diff(model, start) > 1e-4


def test_trainer_obf_needs_labels(tmp_path):
    model = _bert()
    data = [{k: v for k, v in d.items() if k != "labels"} for d in _data()]
    opt = FAMILY["obf"](model.parameters())
    trainer = PerturbedTrainer(model=model, args=_args(tmp_path, max_steps=1),
                               train_dataset=data, optimizers=(opt, None))
    with pytest.raises((KeyError, ValueError), match="labels|loss"):
        trainer.train()


def _scaled_trainer(tmp_path, name, model, steps, init_scale):
    """A PerturbedTrainer whose accelerator has a GradScaler (on CPU it makes none itself)."""
    opt = FAMILY[name](model.parameters())
    trainer = PerturbedTrainer(model=model, args=_args(tmp_path, max_steps=steps),
                               train_dataset=_data(), optimizers=(opt, None))
    trainer.model_accepts_loss_kwargs = False  # see _train
    # Set before train(): prepare() hands this scaler to the AcceleratedOptimizer, which then
    # calls scaler.step / scaler.update itself.
    # growth_interval=1: each clean step doubles the scale, so the final scale shows that every
    # step went through scaler.update.
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
    return trainer


def _scaled_reference(model, name, steps, init_scale):
    """perturbed_step with its own GradScaler on the Trainer's batches; returns the scaler."""
    from forgetting_sam import AscentLoss, perturbed_step

    criterion = AscentLoss(torch.nn.functional.cross_entropy)

    def compute_loss(m, batch):
        logits, y = _forward(m, batch)
        return criterion(logits, y), logits

    opt = FAMILY[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1)
    for batch in _batches(_data())[:steps]:
        perturbed_step(model, opt, batch, compute_loss=compute_loss, scaler=scaler)
    return scaler


def _poison_first_ascent(model):
    """Put inf into one gradient in the first backward pass only (the first step's ascent)."""
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return torch.full_like(grad, float("inf")) if calls[0] == 1 else grad

    model.classifier.weight.register_hook(hook)
    return calls


@pytest.mark.parametrize("name", ["sam", "obf"])
def test_trainer_scaler_path_equals_perturbed_step(tmp_path, name):
    # float32 with power-of-two scales: scaling and unscaling are exact, so both sides run the
    # same float32 arithmetic and only summation order may differ (~1e-7 relative per op).
    model = _bert(torch.float32)
    ref = copy.deepcopy(model)
    trainer = _scaled_trainer(tmp_path, name, model, 3, 2.0 ** 8)
    trainer.train()
    ref_scaler = _scaled_reference(ref, name, 3, 2.0 ** 8)
    assert trainer.accelerator.scaler.get_scale() == ref_scaler.get_scale() == 2.0 ** 11
    assert max_weight_diff(model, _bert(torch.float32)) > 1e-3  # it trained
    assert max_weight_diff(model, ref) < 1e-5


@pytest.mark.parametrize("name", ["sam", "obf"])
def test_trainer_scaler_overflow_skips_the_step(tmp_path, name):
    model = _bert(torch.float32)
    start = copy.deepcopy(model)
    calls = _poison_first_ascent(model)
    trainer = _scaled_trainer(tmp_path, name, model, 1, 2.0 ** 8)
    trainer.train()
    assert calls[0] >= 1
    assert max_weight_diff(model, start) == 0.0  # skipped, and w + ε was not left behind
    assert trainer.accelerator.scaler.get_scale() == 2.0 ** 7  # backed off by the factor 0.5
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # The steps after the skip train as perturbed_step does after its own skip.
    model, ref = _bert(torch.float32), _bert(torch.float32)
    _poison_first_ascent(model)
    _poison_first_ascent(ref)
    trainer = _scaled_trainer(tmp_path, name, model, 3, 2.0 ** 8)
    trainer.train()
    ref_scaler = _scaled_reference(ref, name, 3, 2.0 ** 8)
    assert trainer.accelerator.scaler.get_scale() == ref_scaler.get_scale() == 2.0 ** 9  # halved, then doubled twice
    assert max_weight_diff(model, _bert(torch.float32)) > 1e-3
    assert max_weight_diff(model, ref) < 1e-5


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_integrations_huggingface import _bert, _train
out = Path({out!r})
for name in {names!r}:
    model = _bert()
    _train(out / f"run_{{name}}", name, model, steps=2, accumulation=2, ddp_backend="gloo")
    torch.save(model.state_dict(), out / f"{{name}}_rank{{os.environ['RANK']}}.pt")
"""


def test_trainer_ddp_accumulation_two_processes(tmp_path):
    """The Trainer under torchrun on two gloo replicas with gradient_accumulation_steps=2: the
    prepared loader hands replica r the batches r, r + 2 (here all four batches make one
    window), each batch is perturbed with its own ε on its replica, and the window steps on the
    mean over both replicas; the replicas stay identical and equal the two-step loop."""
    names = ["sam", "obf"]
    run_two_replicas(DDP_SCRIPT.format(tests=str(Path(__file__).resolve().parent), names=names,
                                       out=str(tmp_path)), tmp_path)
    batches = _batches(_data())
    for name in names:
        ranks = replica_models(_bert, tmp_path, name)
        ref = _bert()
        two_step_reference(ref, FAMILY[name](ref.parameters()), [batches, batches], _forward)  # 2 steps
        assert max_weight_diff(ranks[0], _bert()) > 1e-3
        assert max_weight_diff(ranks[0], ref) < 1e-9, name
