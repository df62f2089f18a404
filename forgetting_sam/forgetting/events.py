"""Forgetting events (Toneva et al., ICLR 2019), tracked per training example.

Conventions (docs/algorithms.md §8 and ours where it is silent), for one example over its
presentations ``1, 2, …`` with correctness ``c_1, c_2, …`` (argmax == label):

- Before its first presentation an example counts as *not learned* (``c_0 = 0``).
- A **learn event** is a presentation with ``c_{t−1} = 0`` and ``c_t = 1`` — so a first
  presentation that is already correct is a learn event.
- A **forget event** is a presentation with ``c_{t−1} = 1`` and ``c_t = 0`` between consecutive
  presentations of that example (what happens between them is not seen).
- **First-learned step**: the tracker step of the first correct presentation (``-1`` if none).
- **Forgetting count** (``forgetting_counts()``): the number of forget events for an example
  learned at least once; for a presented but **never-learned** example, its number of
  presentations — it "counts as forgotten at every presentation" and so ranks as the most
  forgotten, as in Toneva et al. Never-presented examples have count 0 and are left out of
  ``histogram()`` and every "presented" statistic.
- **Unforgettable**: learned at least once and never forgotten.
- An example seen twice in one update (sampling with replacement) is two consecutive
  presentations, in the order of ``indices``.

Everything lives in a few length-N tensors on one device and each update is a handful of
vectorized gathers and scatters: O(N) memory, no per-example Python.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["ForgettingTracker"]

_COUNT = torch.int32  # per-example counters: 2^31 presentations is far beyond any run


class ForgettingTracker:
    """Per-example learn / forget events over training.

    Args:
        num_examples: size ``N`` of the training set; indices are ``0 … N−1`` (e.g. from an
            index-returning dataset wrapper).
        device: where the state lives (default CPU); put it with the model's outputs so
            updates need no copies.

    Pass the indices as the loader returns them, on the CPU: then the range and duplicate
    checks run on the host and an update never waits for the accelerator. Indices already on
    the accelerator work too, at the cost of one sync per update for the checks.

    Example:
        >>> tracker = ForgettingTracker(len(train_set), device="cuda")
        >>> for idx, x, y in loader:
        ...     res = perturbed_step(model, opt, x, y, F.cross_entropy)
        ...     tracker.update(idx, res.logits, y)
        >>> tracker.unforgettable(), tracker.histogram(), tracker.summary()
    """

    def __init__(self, num_examples: int, device: torch.device | str | None = None):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise ValueError(f"Invalid num_examples: {num_examples!r}; use the training-set size (an int ≥ 1)")
        self.num_examples = num_examples
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.step = 0  # number of updates so far; first-learned steps are in these units
        n, dev = num_examples, self.device
        # -1 never presented, 0 wrong, 1 correct at the last presentation
        self.last_correct = torch.full((n,), -1, dtype=torch.int8, device=dev)
        # Columns: presentations, learn events, forget events, correct presentations. One
        # (N, 4) table so an update is a single index_add_ (see the views below).
        self._counts = torch.zeros(n, 4, dtype=_COUNT, device=dev)
        self.first_learned_step = torch.full((n,), -1, dtype=torch.int64, device=dev)
        # Per update: the step on the host; (presented, learned, forgotten, correct) on the
        # device, so recording the curve never waits for the accelerator.
        self._history_host: list[int] = []
        self._history: list[torch.Tensor] = []
        self._scratch: dict[torch.device, torch.Tensor] = {}  # duplicate detection, per device

    # ------------------------------------------------------------------ updates
    def update(self, indices, logits: torch.Tensor, targets: torch.Tensor, *, step: int | None = None) -> None:
        """Record one presentation of the examples ``indices``.

        Args:
            indices: ``(B,)`` integer dataset indices in ``[0, N)``.
            logits: ``(B, K)`` model outputs for those examples.
            targets: ``(B,)`` class indices, or ``(B, K)`` probabilities (argmax used).
            step: the step to file first-learned events under (default: the update count).
        """
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"logits must be a (B, K) tensor, got {shape}")
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
        if targets.shape == logits.shape:
            targets = targets.argmax(-1)
        elif targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(
                f"targets must have shape ({logits.shape[0]},) or {tuple(logits.shape)} to match "
                f"logits {tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        n_idx = indices.shape[0] if isinstance(indices, torch.Tensor) and indices.dim() == 1 else len(indices)
        if n_idx != logits.shape[0]:
            raise ValueError(
                f"indices has {n_idx} entries but logits {logits.shape[0]} rows; pass the dataset "
                "indices of exactly the examples in the batch"
            )
        correct = logits.detach().argmax(-1) == targets.to(logits.device)
        self.update_correct(indices, correct, step=step)

    def update_correct(self, indices, correct, *, step: int | None = None) -> None:
        """Record one presentation from per-example correctness.

        Args:
            indices: ``(B,)`` integer dataset indices in ``[0, N)``.
            correct: ``(B,)`` bool (or 0/1) tensor, True where the example was classified
                correctly.
            step: as in :meth:`update`.
        """
        raw = self._check_indices(indices)
        # non_blocking: loader indices on the CPU go up without waiting for the device
        idx = raw.to(device=self.device, non_blocking=True)
        if not isinstance(correct, torch.Tensor):
            correct = torch.as_tensor(correct)
        if correct.dim() != 1 or correct.shape[0] != idx.shape[0]:
            raise ValueError(
                f"correct must have shape ({idx.shape[0]},) to match indices, got {tuple(correct.shape)}"
            )
        if correct.is_floating_point() or correct.is_complex():
            raise ValueError(f"correct must be bool or integer 0/1, got dtype {correct.dtype}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"Invalid step: {step!r}; use a non-negative int or None")
        step = self.step if step is None else step
        c = correct.to(device=self.device, dtype=torch.int8) != 0

        if self._has_duplicates(raw):
            rounds = [sel.to(self.device) for sel in self._rounds(raw)]
            totals = sum(self._apply(idx[sel], c[sel], step) for sel in rounds)
        else:
            totals = self._apply(idx, c, step)
        self._history_host.append(step)
        self._history.append(totals)
        self.step += 1

    def _apply(self, idx: torch.Tensor, c: torch.Tensor, step: int) -> torch.Tensor:
        """One presentation of distinct indices; returns (presented, learned, forgotten,
        correct) totals as an int64 ``(4,)`` tensor."""
        prev = self.last_correct[idx]
        learn = c & (prev != 1)  # from wrong, or never presented (= not learned)
        forget = ~c & (prev == 1)
        inc = torch.stack([torch.ones_like(c), learn, forget, c], 1).to(_COUNT)
        self._counts.index_add_(0, idx, inc)
        self.last_correct[idx] = c.to(torch.int8)
        fl = self.first_learned_step[idx]
        self.first_learned_step[idx] = torch.where(c & (fl < 0), step, fl)
        return inc.sum(0, dtype=torch.int64)

    def _check_indices(self, indices) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            indices = torch.as_tensor(indices)
        if indices.dim() != 1:
            raise ValueError(f"indices must be a 1-D tensor of dataset indices, got shape {tuple(indices.shape)}")
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        if indices.numel() == 0:
            raise ValueError("indices is empty; pass the dataset indices of the batch")
        # Range check where the indices are: on the CPU (as loaders return them) it is free;
        # on an accelerator it costs one sync, which an out-of-range scatter would not forgive.
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= self.num_examples:
            raise ValueError(
                f"indices out of range: got values in [{lo}, {hi}] but the tracker holds "
                f"{self.num_examples} examples (valid 0 … {self.num_examples - 1}); was it built "
                "with the training-set size?"
            )
        return indices.to(torch.int64)

    def _has_duplicates(self, idx: torch.Tensor) -> bool:
        # Write each position into the scratch slot of its index: a repeated index keeps only
        # one position, so some read-back differs. Cheaper than a sort, O(N) memory, and on the
        # indices' own device (loader indices on the CPU never wait for the accelerator).
        scratch = self._scratch.get(idx.device)
        if scratch is None:
            scratch = self._scratch[idx.device] = torch.empty(self.num_examples, dtype=torch.int64, device=idx.device)
        pos = torch.arange(idx.numel(), device=idx.device)
        scratch[idx] = pos
        return bool((scratch[idx] != pos).any())

    def _rounds(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Split a batch with repeated indices into rounds of distinct ones, in order."""
        sorted_idx, order = torch.sort(idx, stable=True)
        new = torch.ones_like(sorted_idx, dtype=torch.bool)
        new[1:] = sorted_idx[1:] != sorted_idx[:-1]
        pos = torch.arange(idx.numel(), device=idx.device)
        start = torch.cummax(torch.where(new, pos, torch.zeros_like(pos)), 0).values
        rank = torch.empty_like(pos)
        rank[order] = pos - start  # k-th occurrence of its index, in batch order (stable sort)
        return [torch.nonzero(rank == r).squeeze(1) for r in range(int(rank.max()) + 1)]

    # ------------------------------------------------------------------ views
    @property
    def presentations(self) -> torch.Tensor:
        """``(N,)`` int32: times each example was presented."""
        return self._counts[:, 0]

    @property
    def learn_events(self) -> torch.Tensor:
        """``(N,)`` int32: learn events per example (not learned → correct)."""
        return self._counts[:, 1]

    @property
    def forget_events(self) -> torch.Tensor:
        """``(N,)`` int32: forget events per example (correct → wrong, consecutive presentations)."""
        return self._counts[:, 2]

    @property
    def correct_count(self) -> torch.Tensor:
        """``(N,)`` int32: presentations at which the example was classified correctly."""
        return self._counts[:, 3]

    @property
    def ever_learned(self) -> torch.Tensor:
        """``(N,)`` bool: correct at some presentation."""
        return self.first_learned_step >= 0

    @property
    def presented(self) -> torch.Tensor:
        """``(N,)`` bool: presented at least once."""
        return self.presentations > 0

    def forgetting_counts(self) -> torch.Tensor:
        """``(N,)`` int64 forgetting count per example (see the module docstring).

        Forget events if the example was ever learned; its presentation count if it was
        presented but never learned; 0 if never presented.
        """
        return torch.where(self.ever_learned, self.forget_events, self.presentations).to(torch.int64)

    def unforgettable(self) -> torch.Tensor:
        """Sorted int64 indices of examples learned at least once and never forgotten."""
        return torch.nonzero(self.ever_learned & (self.forget_events == 0)).squeeze(1)

    def never_learned(self) -> torch.Tensor:
        """Sorted int64 indices of examples presented but never classified correctly."""
        return torch.nonzero(self.presented & ~self.ever_learned).squeeze(1)

    def most_forgotten(self, k: int = 8) -> torch.Tensor:
        """Indices of the ``k`` presented examples with the highest forgetting counts.

        Ties go to the smaller index (deterministic).
        """
        counts = self.forgetting_counts()
        idx = torch.nonzero(self.presented).squeeze(1)
        # stable sort by descending count keeps ties in index order
        order = torch.sort(-counts[idx], stable=True).indices
        return idx[order[:k]]

    def _history_table(self) -> torch.Tensor:
        """``(T, 5)`` int64 rows (step, presented, learned, forgotten, correct), on the device."""
        if not self._history:
            return torch.zeros(0, 5, dtype=torch.int64, device=self.device)
        host = torch.tensor(self._history_host, dtype=torch.int64).to(self.device)
        return torch.cat([host[:, None], torch.stack(self._history)], 1)

    def histogram(self) -> torch.Tensor:
        """``h[c]`` = number of presented examples whose forgetting count is ``c`` (int64, CPU).

        Never-learned examples sit at their presentation counts (the convention above); use
        :meth:`never_learned` to tell them apart.
        """
        counts = self.forgetting_counts()[self.presented]
        if counts.numel() == 0:
            return torch.zeros(1, dtype=torch.int64)
        return torch.bincount(counts.cpu())

    def history(self) -> dict[str, Any]:
        """Per-update totals as numpy arrays: ``step``, ``presented``, ``learned``,
        ``forgotten`` (events in that update) and ``correct``, plus ``forgot_frac``
        (= forgotten / presented) — the forgetting curve."""
        import numpy as np

        if not self._history:
            empty = np.zeros(0)
            return {k: empty for k in ("step", "presented", "learned", "forgotten", "correct", "forgot_frac")}
        h = self._history_table().cpu().numpy()
        out = dict(zip(("step", "presented", "learned", "forgotten", "correct"), h.T))
        out["forgot_frac"] = out["forgotten"] / np.maximum(out["presented"], 1)
        return out

    def summary(self) -> dict[str, float | int]:
        """Plain-number summary (JSON-ready)."""
        presented = self.presented
        n_presented = int(presented.sum())
        counts = self.forgetting_counts()
        learned = self.ever_learned
        return {
            "num_examples": self.num_examples,
            "updates": self.step,
            "presented": n_presented,
            "ever_learned": int(learned.sum()),
            "never_learned": int((presented & ~learned).sum()),
            "unforgettable": int((learned & (self.forget_events == 0)).sum()),
            "forgotten_at_least_once": int((self.forget_events > 0).sum()),
            "learn_events": int(self.learn_events.sum()),
            "forget_events": int(self.forget_events.sum()),
            "mean_forgetting_count": float(counts[presented].float().mean()) if n_presented else 0.0,
            "unforgettable_frac": (int((learned & (self.forget_events == 0)).sum()) / n_presented
                                   if n_presented else 0.0),
        }

    # ------------------------------------------------------------------ persistence
    _STATE = (("last_correct", torch.int8), ("presentations", _COUNT), ("learn_events", _COUNT),
              ("forget_events", _COUNT), ("correct_count", _COUNT), ("first_learned_step", torch.int64))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain ints only, so ``torch.load(..., weights_only=True)`` reads it."""
        state: dict[str, Any] = {"num_examples": self.num_examples, "step": self.step}
        for name, _ in self._STATE:
            state[name] = getattr(self, name).clone()
        state["history"] = self._history_table().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the example count must match."""
        missing = {"num_examples", "step", "history", *(n for n, _ in self._STATE)} - set(state)
        if missing:
            raise KeyError(f"tracker state is missing {sorted(missing)}; was it saved by "
                           "ForgettingTracker.state_dict()?")
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"tracker state is for {int(state['num_examples'])} examples but this tracker has "
                f"{self.num_examples}; build it with ForgettingTracker({int(state['num_examples'])})"
            )
        for name, _ in self._STATE:
            if state[name].shape != (self.num_examples,):
                raise ValueError(f"tracker state {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected ({self.num_examples},)")
        hist = state["history"].to(device=self.device, dtype=torch.int64)
        if hist.dim() != 2 or hist.shape[1] != 5:
            raise ValueError(f"tracker state 'history' has shape {tuple(hist.shape)}, expected (T, 5)")
        self.last_correct = state["last_correct"].to(device=self.device, dtype=torch.int8).clone()
        self.first_learned_step = state["first_learned_step"].to(device=self.device, dtype=torch.int64).clone()
        self._counts = torch.stack([state[n] for n in ("presentations", "learn_events", "forget_events",
                                                       "correct_count")], 1).to(device=self.device, dtype=_COUNT)
        self.step = int(state["step"])
        self._history_host = hist[:, 0].tolist()
        self._history = list(hist[:, 1:].unbind(0))

    def save(self, path: str | os.PathLike) -> None:
        """``torch.save`` the state dict (tensors and ints; ``weights_only``-loadable)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str | None = None) -> ForgettingTracker:
        """A tracker from :meth:`save`'s file (read with ``weights_only=True``)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        tracker = cls(int(state["num_examples"]), device=device)
        tracker.load_state_dict(state)
        return tracker

    def __repr__(self) -> str:
        return f"ForgettingTracker(num_examples={self.num_examples}, updates={self.step}, device={self.device})"
