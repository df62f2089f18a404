"""Faces for the trainers researchers already use; each module imports its framework.

* :mod:`forgetting_sam.integrations.lightning`: precision plugins for ``lightning.Trainer``
  (``32``, ``bf16-mixed``, ``16-mixed``) that run the family's two passes in automatic
  optimization;
* :mod:`forgetting_sam.integrations.huggingface`: :class:`PerturbedTrainer`, a
  ``transformers.Trainer`` whose training step is perturb-then-descend;
* :mod:`forgetting_sam.integrations.accelerate`: :func:`perturbed_backward`, the drop-in for
  ``accelerator.backward(loss)`` in an ``accelerate`` loop.

``import forgetting_sam`` never imports these (``pip install forgetting_sam[integrations]``
brings the frameworks). They build on :mod:`forgetting_sam.optim` only.
"""
