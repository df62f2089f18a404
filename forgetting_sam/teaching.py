"""Helpers for the tutorial notebooks (a face: nothing below imports it).

:func:`claim` pairs a sentence that states a result with the computation behind it and
prints a verdict. The notebooks output-check those cells (``# NBVAL_CHECK_OUTPUT``), so a
claim that stops holding changes the printed verdict and fails ``make test``.
:func:`check` is the exercises' automatic check: it raises when the learner's answer is
wrong, so a check cell can fail and passes only on a right answer.
"""

from __future__ import annotations

__all__ = ["claim", "check"]


def claim(statement: str, holds: bool) -> bool:
    """Print whether ``statement`` holds on this run and return it as a bool.

    Args:
        statement: the sentence the notebook's prose makes, e.g. ``"SAM beats SGD at 40% noise"``.
        holds: the computed truth of it (a bool, or a 0-d tensor / numpy bool).

    Example:
        >>> claim("SAM ends in the flat basin", abs(w_sam[0] - 1.0) < 0.1)
        CLAIM HOLDS: SAM ends in the flat basin
        True
    """
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError(f"claim needs the sentence it checks as a non-empty string, got {statement!r}")
    verdict = bool(holds)
    print(f"CLAIM {'HOLDS' if verdict else 'DOES NOT HOLD'}: {statement}")
    return verdict


def check(description: str, passed: bool, hint: str = "") -> None:
    """An exercise's check: print ``PASSED`` or raise ``AssertionError`` with ``hint``.

    Example:
        >>> check("your SAM step equals forgetting_sam.SAM's", torch.allclose(mine, theirs))
        PASSED: your SAM step equals forgetting_sam.SAM's
    """
    if not bool(passed):
        raise AssertionError(f"NOT YET: {description}" + (f" (hint: {hint})" if hint else ""))
    print(f"PASSED: {description}")
