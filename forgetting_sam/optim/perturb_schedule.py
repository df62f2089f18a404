"""Cheaper SAM: which steps perturb (docs/algorithms.md §9).

Step ``t`` (0-based, counting every step the optimizer takes) perturbs when
``t >= perturb_from`` and ``(t - perturb_from) % perturb_every == 0``; any other step is the
base optimizer's plain step on ``∇L(w)``, which costs one forward and backward instead of two.
``perturb_every=1, perturb_from=0`` is SAM on every step.

The counter is saved in the optimizer's ``state_dict`` under :data:`KEY` (beside ``state``
and ``param_groups``, so the base optimizer's ``state`` holds nothing new), and a resumed run
continues the schedule where it stopped. A ``state_dict`` without it (older checkpoints, a
plain base optimizer's) resumes at step 0.
"""

from __future__ import annotations

#: The key of the step counter in ``optimizer.state_dict()``.
KEY = "perturb_schedule"


def check(every: int, start: int) -> tuple[int, int]:
    """Validate ``perturb_every >= 1`` and ``perturb_from >= 0`` (integers); return them."""
    for name, value, low in (("perturb_every", every, 1), ("perturb_from", start, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"Invalid {name}: {value!r} ({name} must be an integer >= {low})")
    return every, start


def decide(t: int, every: int, start: int) -> bool:
    """Whether step ``t`` perturbs under the schedule ``(every, start)``."""
    return t >= start and (t - start) % every == 0


def save(state_dict: dict, steps: int) -> dict:
    """``state_dict`` with the step counter added under :data:`KEY`."""
    return {**state_dict, KEY: {"step": int(steps)}}


def load(state_dict: dict) -> tuple[dict, int]:
    """``(state_dict without the counter, steps taken)``; 0 when it has none."""
    rest = dict(state_dict)
    entry = rest.pop(KEY, None)
    if entry is None:
        return rest, 0
    step = entry.get("step") if isinstance(entry, dict) else None
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"Invalid state_dict[{KEY!r}]: {entry!r} (expected {{'step': int >= 0}})")
    return rest, step
