"""The student edition (tools/make_student.py): stubs replace solutions, and the two editions behave.

The two-edition test runs each notebook's code cells in a real kernel, in order, up to its last
check cell. At every check cell it proves both sides in the same kernel: the master edition's
check passes; then the names that the exercise (and solution) cells since the previous check
define are deleted, the student stubs run instead, and the same check must fail. The master
cells then run again so the rest of the notebook sees the solved state.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_student)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def code(source, tags=(), hidden=False):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = list(tags)
    if hidden:
        cell.metadata["jupyter"] = {"source_hidden": True}
    return cell


def toy_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        code("import math"),
        code("def area(r):\n    '''circle area'''\n    # BEGIN SOLUTION\n    return math.pi * r ** 2\n"
             "    # END SOLUTION", ["exercise"], hidden=True),
        code("assert abs(area(2.0) - 4 * math.pi) < 1e-12\nprint('PASSED')", ["check"]),
        code("# BEGIN SOLUTION: the hypotenuse of 3 and 4\nhyp = math.hypot(3, 4)\n# END SOLUTION",
             ["exercise"]),
        code("hyp = 5.0  # the worked answer", ["solution"]),
        code("assert hyp == 5.0", ["check"]),
    ]
    return nb


def test_stub_keeps_indentation_and_uses_the_description():
    out, n = make_student.stub_source("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n")
    assert n == 1
    assert out == 'def f(x):\n    raise NotImplementedError("exercise: complete f")\n'
    out, _ = make_student.stub_source("# BEGIN SOLUTION: add one\ny = 1\n# END SOLUTION")
    assert out == 'raise NotImplementedError("exercise: add one")'


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without a '# BEGIN SOLUTION'"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside the region"),
])
def test_unbalanced_markers_are_refused_with_the_line(source, message):
    with pytest.raises(make_student.MarkerError, match=message):
        make_student.stub_source(source, "nb cell 3")


def test_studentize_drops_solutions_keeps_checks_and_unhides():
    nb = toy_notebook()
    student = make_student.studentize(nb, "toy")
    tags = [make_student.tags_of(c) for c in student.cells]
    assert ["solution"] not in tags and tags.count(["check"]) == 2
    exercise = student.cells[1]
    assert "NotImplementedError" in exercise.source and "math.pi" not in exercise.source
    assert "jupyter" not in exercise.metadata
    assert "math.pi * r" in nb.cells[1].source, "the master notebook must not be modified"


def test_an_exercise_without_a_solution_region_is_refused():
    nb = nbformat.v4.new_notebook()
    nb.cells = [code("x = 1", ["exercise"])]
    with pytest.raises(make_student.MarkerError, match="has no '# BEGIN SOLUTION'"):
        make_student.studentize(nb, "toy")


def defined_names(source: str) -> set[str]:
    """Top-level names a cell binds (def, class, assignment, import, for/with targets)."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    names: set[str] = set()
    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


def two_editions(nb, name: str, cwd: Path, scratch: Path | None = None) -> list[str]:
    """Run ``nb`` in a kernel and return the problems found at its check cells. ``scratch``
    becomes the kernel's TMPDIR: the run stops at the last check cell, before a notebook's own
    clean-up of its temporary folders, so they land there."""
    student = {id(c): s for c, s in zip(nb.cells, _aligned_student(nb, name))}
    last_check = max(i for i, c in enumerate(nb.cells) if "check" in make_student.tags_of(c))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    problems, pending = [], []
    env = {**os.environ, "FSAM_QUICK": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if scratch is not None:
        env["TMPDIR"] = str(scratch)
    with client.setup_kernel(env=env):
        def run(cell, index):
            client.execute_cell(cell, index, store_history=False)

        for index, cell in enumerate(nb.cells[: last_check + 1]):
            if cell.cell_type != "code":
                continue
            tags = make_student.tags_of(cell)
            run(cell, index)  # the master edition: every cell, check cells included, must pass
            if "exercise" in tags or "solution" in tags:
                pending.append((index, cell))
            if "check" not in tags:
                continue
            if not pending:
                problems.append(f"{name} cell {index}: a check cell with no exercise before it")
                continue
            names = set().union(*(defined_names(c.source) for _, c in pending))
            run(nbformat.v4.new_code_cell(f"for _n in {sorted(names)!r}:\n    globals().pop(_n, None)"), index)
            for i, c in pending:
                stub = student.get(id(c))
                if stub is not None:
                    try:
                        run(nbformat.v4.new_code_cell(stub), i)
                    except CellExecutionError:
                        pass  # a stub that raises at top level is the student's state too
            try:
                run(nbformat.v4.new_code_cell(cell.source), index)
                problems.append(f"{name} cell {index}: the check passes on the student stub")
            except CellExecutionError:
                pass
            for i, c in pending:
                run(c, i)
            pending = []
    return problems


def _aligned_student(nb, name):
    """The student source of every master cell (``None`` for a dropped solution cell)."""
    out = []
    for cell in nb.cells:
        if "solution" in make_student.tags_of(cell):
            out.append(None)
        elif "exercise" in make_student.tags_of(cell):
            out.append(make_student.stub_source(cell.source, name)[0])
        else:
            out.append(cell.source)
    return out


def test_two_editions_on_a_toy_notebook(tmp_path):
    assert two_editions(toy_notebook(), "toy", tmp_path) == []


def test_two_editions_catch_a_check_that_cannot_fail(tmp_path):
    nb = toy_notebook()
    nb.cells[5].source = "assert True"  # checks nothing
    assert two_editions(nb, "toy", tmp_path) == ["toy cell 5: the check passes on the student stub"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_exercises_whose_checks_can_fail_and_pass(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    n = make_student.count_exercises(nb)
    assert n > 0, f"{path.name} has no cell tagged 'exercise' (issue 10 asks for one per notebook)"
    assert any("check" in make_student.tags_of(c) for c in nb.cells), f"{path.name} has no check cell"
    assert two_editions(nb, path.name, path.parent, scratch=tmp_path) == []
