"""Write the student edition of the tutorial notebooks (``make student``).

The master notebooks in ``notebooks/`` carry their own solutions. Three cell tags drive the
student edition:

- ``exercise``: the code between a ``# BEGIN SOLUTION`` line and its ``# END SOLUTION`` line is
  replaced by ``raise NotImplementedError("exercise: <description>")`` at the indentation of the
  ``BEGIN`` line; the cell is un-collapsed and its outputs are cleared. The description is the
  text after ``BEGIN SOLUTION`` (``# BEGIN SOLUTION: write the ascent step``), else the name of
  the enclosing ``def``.
- ``solution``: the cell is dropped (a collapsible worked answer).
- ``check``: the cell stays, outputs cleared, so the learner sees it fail until the answer is right.

Usage: ``python tools/make_student.py [--src notebooks] [--out build/student]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat

BEGIN = re.compile(r"^(?P<indent>[ \t]*)#\s*BEGIN SOLUTION\b[ \t]*[:\-—]?[ \t]*(?P<desc>.*?)\s*$")
END = re.compile(r"^[ \t]*#\s*END SOLUTION\b")
DEF = re.compile(r"^[ \t]*(?:async\s+)?def\s+(?P<name>\w+)\s*\(")


class MarkerError(ValueError):
    """A ``BEGIN SOLUTION`` / ``END SOLUTION`` pair is missing, nested or unbalanced."""


def tags_of(cell) -> list[str]:
    """The cell's ``metadata.tags`` list (empty when absent)."""
    return list(cell.get("metadata", {}).get("tags", []))


def stub_source(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace each solution region of ``source`` by a ``NotImplementedError`` stub.

    Returns the new source and the number of regions replaced. ``where`` names the cell in
    error messages. Raises :class:`MarkerError` on an unbalanced or nested marker.
    """
    out: list[str] = []
    lines = source.splitlines()
    open_at = None
    regions = 0
    for number, line in enumerate(lines, start=1):
        begin, end = BEGIN.match(line), END.match(line)
        if begin:
            if open_at is not None:
                raise MarkerError(f"{where}: '# BEGIN SOLUTION' at line {number} inside the region "
                                  f"opened at line {open_at}; close it with '# END SOLUTION' first")
            open_at = number
            desc = begin["desc"] or _enclosing_def(lines[: number - 1]) or f"the solution in {where}"
            out.append(f'{begin["indent"]}raise NotImplementedError({json.dumps("exercise: " + desc)})')
            regions += 1
        elif end:
            if open_at is None:
                raise MarkerError(f"{where}: '# END SOLUTION' at line {number} without a "
                                  "'# BEGIN SOLUTION' before it")
            open_at = None
        elif open_at is None:
            out.append(line)
    if open_at is not None:
        raise MarkerError(f"{where}: '# BEGIN SOLUTION' at line {open_at} is never closed; "
                          "add an '# END SOLUTION' line after the solution code")
    return "\n".join(out) + ("\n" if source.endswith("\n") else ""), regions


def _enclosing_def(lines_before: list[str]) -> str:
    for line in reversed(lines_before):
        found = DEF.match(line)
        if found:
            return f"complete {found['name']}"
    return ""


def studentize(nb, name: str = "notebook"):
    """Return the student edition of the notebook node ``nb`` (the input is not modified).

    Raises :class:`MarkerError` when an ``exercise`` cell has no solution region.
    """
    student = nbformat.from_dict(copy.deepcopy(dict(nb)))
    cells = []
    for index, cell in enumerate(student.cells):
        tags = tags_of(cell)
        if "solution" in tags:
            continue
        if "exercise" in tags:
            where = f"{name} cell {index}"
            cell.source, regions = stub_source(cell.source, where)
            if regions == 0:
                raise MarkerError(f"{where} is tagged 'exercise' but has no '# BEGIN SOLUTION' / "
                                  "'# END SOLUTION' region to replace")
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
            if "jupyter" in cell.metadata and not cell.metadata["jupyter"]:
                del cell.metadata["jupyter"]
        if cell.cell_type == "code" and ({"exercise", "check"} & set(tags)):
            cell.outputs = []
            cell.execution_count = None
        cells.append(cell)
    student.cells = cells
    return student


def count_exercises(nb) -> int:
    """How many cells of ``nb`` are tagged ``exercise``."""
    return sum("exercise" in tags_of(cell) for cell in nb.cells)


def write_student(src: Path, out: Path) -> dict[str, int]:
    """Write the student edition of every ``*.ipynb`` in ``src`` into ``out``; returns exercise counts."""
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder of notebooks")
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"--src {src} holds no .ipynb notebook")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    counts = {}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nbformat.write(studentize(nb, path.name), out / path.name)
        counts[path.name] = count_exercises(nb)
    # the learners' README (glossary, launch paths) goes along; the instructors' guide does not
    if (src / "README.md").is_file():
        shutil.copy2(src / "README.md", out / "README.md")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("notebooks"))
    parser.add_argument("--out", type=Path, default=Path("build/student"))
    args = parser.parse_args(argv)
    counts = write_student(args.src, args.out)
    for name, n in counts.items():
        print(f"  {name}: {n} exercise{'s' if n != 1 else ''}")
    print(f"student edition of {len(counts)} notebooks written to {args.out}")
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        print("note: no exercise in " + ", ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
