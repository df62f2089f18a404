"""The family in the Hugging Face ``Trainer``: :class:`PerturbedTrainer`.

Change the class and hand the Trainer a family member; everything else stays::

    opt = forgetting_sam.SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=5e-5)
    trainer = PerturbedTrainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    trainer.train()

The Trainer's own loop keeps running the base optimizer's step, the LR scheduler, gradient
clipping, the fp16 GradScaler, accumulation and checkpoints; :meth:`PerturbedTrainer.training_step`
replaces the single backward with both passes of docs/algorithms.md §1 per micro-batch
(:func:`forgetting_sam.integrations.accelerate.perturbed_backward`). The Trainer is given the
family member's ``base_optimizer`` to step (they share ``param_groups`` and ``state``, so
schedulers and the saved ``optimizer.pt`` see the family's ``rho``, ``alpha``, ... too).
With ``gradient_accumulation_steps = k`` each micro-batch perturbs with its own ε and the
step takes the mean of the k descent gradients (m-sharpness with m = the micro-batch, §6).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from ..optim import AscentLoss, PerturbedOptimizer
from .accelerate import perturbed_backward

__all__ = ["PerturbedTrainer"]


class PerturbedTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is perturb-then-descend.

    Pass the family member as ``optimizers=(opt, scheduler_or_None)``; any plain torch
    optimizer (or none: the Trainer's default AdamW) trains exactly as with ``Trainer``.

    The loss is the one ``Trainer.compute_loss`` returns (the model's ``outputs.loss`` with
    ``labels`` in the batch, or ``compute_loss_func``). With an ascent objective (OBF,
    GSAM-OBF, ASAM-OBF) the ascent pass backpropagates ``opt.ascent_loss(outputs.logits,
    batch["labels"])`` instead, through :class:`forgetting_sam.AscentLoss`.

    Attributes:
        perturbed: the family member, or None when the optimizer is a plain one.
    """

    perturbed: PerturbedOptimizer | None = None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer; a family member is kept in ``perturbed`` and its base stepped."""
        if isinstance(self.optimizer, PerturbedOptimizer):
            self.perturbed = self.optimizer
            self.optimizer = self.perturbed.base_optimizer
            return self.optimizer
        return super().create_optimizer(model) if model is not None else super().create_optimizer()

    def _perturbed_loss(self, num_items_in_batch: Any):
        def compute_loss(model: nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
            with self.compute_loss_context_manager():
                loss, outputs = self.compute_loss(model, batch, return_outputs=True,
                                                  num_items_in_batch=num_items_in_batch)
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
            if self.perturbed.ascent_loss is not None and "labels" not in batch:
                raise KeyError(
                    f"{type(self.perturbed).__name__} ascends {self.perturbed.ascent_loss!r} of "
                    "(logits, labels), but the batch has no 'labels' key; put the targets under "
                    "'labels' (the Trainer's convention)"
                )
            # The model computed the training loss itself; AscentLoss only needs to swap in the
            # ascent objective's gradient during the ascent pass.
            criterion = AscentLoss(lambda _logits, _labels: loss)
            return criterion(logits, batch.get("labels")), logits.detach()
        return compute_loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> Tensor:
        """Both passes for the family member (a plain optimizer: ``Trainer.training_step``).

        Returns the micro-batch's training loss at ``w`` divided by the accumulation steps,
        as ``Trainer.training_step`` does (the Trainer sums it over the window for logging).
        """
        if self.perturbed is None:
            return super().training_step(model, inputs, num_items_in_batch)
        base = self.perturbed.base_optimizer
        if self.perturbed.state is not base.state or self.perturbed.param_groups is not base.param_groups:
            # Resuming loads optimizer.pt into the base optimizer, whose load_state_dict makes
            # new state and group objects: share them again (ρ schedules, GSAM's α, momentum).
            self.perturbed.param_groups = base.param_groups
            self.perturbed.state = base.state
        model.train()
        inputs = self._prepare_inputs(inputs)
        # Trainer.training_step's rule: divide by the accumulation steps unless the loss was
        # already normalized by num_items_in_batch (by the model or compute_loss_func).
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled_for_ga is None:
            scaled_for_ga = ((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                             or self.compute_loss_func is not None)
        scale = 1.0 if scaled_for_ga else 1.0 / self.current_gradient_accumulation_steps
        loss = perturbed_backward(self.accelerator, model, self.perturbed, inputs,
                                  self._perturbed_loss(num_items_in_batch), loss_scale=scale)
        return loss * scale
