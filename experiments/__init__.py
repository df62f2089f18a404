"""Small-scale evidence for the paper's three claims (issue 7); see results/evidence/README.md.

One script per study (``study1_optimizers.py``, ``study2_micro_batch.py``,
``study3_correlation.py``), the statistics in :mod:`experiments.stats`, and the shared run
bookkeeping in :mod:`experiments.common`. ``make evidence`` runs all three.
"""
