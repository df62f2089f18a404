"""Each notebook's first code cell names a missing package and the one line that installs it.

On a hosted notebook service the package is usually absent; the cell must stop the notebook
before any import fails deep inside, print a single install line, and install nothing itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))


def _first_code_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def _run(source: str, cwd: Path, missing: set[str], monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in missing else real(name, *a, **k))
    monkeypatch.chdir(cwd)
    exec(compile(source, "<setup cell>", "exec"), {})


def test_there_are_six_notebooks():
    assert len(NOTEBOOKS) == 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_is_silent_when_everything_is_installed(path, monkeypatch):
    _run(_first_code_cell(path), path.parent, set(), monkeypatch)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_cell_names_the_missing_package_and_the_install_line(path, monkeypatch, tmp_path):
    source = _first_code_cell(path)
    # In the checkout: install the checkout (the notebooks' parent holds pyproject.toml).
    with pytest.raises(ModuleNotFoundError, match=r"needs forgetting_sam: run `%pip install -e \.\.`"):
        _run(source, path.parent, {"forgetting_sam"}, monkeypatch)
    # Uploaded on its own (no checkout around it): install from the package index.
    alone = tmp_path / "notebooks"
    alone.mkdir()
    with pytest.raises(ModuleNotFoundError, match=r"needs ipywidgets, forgetting_sam: run `%pip install forgetting_sam`"):
        _run(source, alone, {"ipywidgets", "forgetting_sam"}, monkeypatch)
    assert "subprocess" not in source and "os.system" not in source  # it prints the line, never runs pip
