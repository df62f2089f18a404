"""The website tools' own logic, without a browser: link staging, raw-math and link checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage = load("docs_stage")
check = load("docs_check")


@pytest.mark.parametrize("text, raw", [
    ("the radius $\\rho$ of the ball", True),
    ("inline \\(x^2\\) left as source", True),
    ("display $$ L(w) $$ left", True),
    ("costs 5 dollars and 6 dollars", False),
    ("a rendered formula ρ·ĝ", False),
])
def test_raw_math_is_found_in_visible_text(text, raw):
    assert bool(check.RAW_MATH.findall(text)) is raw


def test_links_to_pages_are_rewritten_and_files_copied(tmp_path):
    pages = {"README.md": "index.md", "notebooks/01_x.ipynb": "notebooks/01_x.ipynb",
             "forgetting_sam/configs/README.md": "presets.md"}
    text = ("[nb](notebooks/01_x.ipynb) [presets](forgetting_sam/configs/README.md#digits) "
            "[ext](https://arxiv.org/abs/2010.01412) [self](#top) [code](pyproject.toml) "
            "[gone](no/such/file.md)")
    out = stage.rewrite_links(text, "README.md", pages, tmp_path)
    assert "[nb](notebooks/01_x.ipynb)" in out
    assert "[presets](presets.md#digits)" in out
    assert "[ext](https://arxiv.org/abs/2010.01412)" in out and "[self](#top)" in out
    assert "[code](_files/pyproject.toml)" in out and (tmp_path / "_files/pyproject.toml").is_file()
    assert "[gone](no/such/file.md)" in out  # left for Sphinx to report under -W


def test_a_link_from_a_moved_page_is_relative_to_its_new_place(tmp_path):
    pages = {"README.md": "index.md", "notebooks/README.md": "notebooks/README.md",
             "results/evidence/README.md": "evidence/README.md"}
    out = stage.rewrite_links("[e](../results/evidence/README.md)", "notebooks/README.md", pages, tmp_path)
    assert out == "[e](../evidence/README.md)"


def test_broken_links_and_anchors_are_reported(tmp_path):
    (tmp_path / "a.html").write_text("x")
    base = "http://127.0.0.1:1/"
    ids = {"a.html": {"top"}, "index.html": set()}
    links = {"index.html": [base + "a.html#top", base + "a.html#nope", base + "b.html", "https://x.org/"]}
    assert check.broken_links(tmp_path, base, ids, links) == [
        "index.html: link to a missing anchor: a.html#nope",
        "index.html: link to a missing file: b.html",
    ]


def test_widget_views_are_removed_and_solutions_collapsed(tmp_path):
    import json

    nb = {"metadata": {"widgets": {"state": {}}}, "nbformat": 4, "nbformat_minor": 5, "cells": [
        {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "x = 1", "execution_count": 1,
         "outputs": [{"output_type": "display_data", "metadata": {}, "data": {
             "text/plain": "Explorer(children=(...))",
             "application/vnd.jupyter.widget-view+json": {"model_id": "m"}}},
             {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}}]}]}
    src = tmp_path / "nb.ipynb"
    src.write_text(json.dumps(nb))
    pages = {"notebooks/nb.ipynb": "notebooks/nb.ipynb"}
    stage.stage_notebook(src, "notebooks/nb.ipynb", pages, tmp_path / "out")
    staged = json.loads((tmp_path / "out/notebooks/nb.ipynb").read_text())
    assert "widgets" not in staged["metadata"]
    cell = staged["cells"][0]
    assert "hide-input" in cell["metadata"]["tags"]
    assert [list(o["data"]) for o in cell["outputs"]] == [["image/png"]]
