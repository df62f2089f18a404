"""The website tools' own logic, without a browser: link staging, raw-math and link checks, and the
JupyterLab widget check's settings, page functions, slider drag and process cleanup."""

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


# ---- tools/lab_widgets_check.py: the parts that need neither JupyterLab running nor a browser ----

lab = load("lab_widgets_check")


def test_lab_settings_are_valid_for_the_installed_jupyterlab():
    """A setting under the wrong plugin is rejected by its schema and silently ignored (that is how
    "autoStartDefaultKernel" once left a "Select Kernel" dialog blocking the run)."""
    pytest.importorskip("jupyterlab")
    jsonschema = pytest.importorskip("jsonschema")
    import json

    from jupyterlab.commands import get_app_dir

    schemas = Path(get_app_dir()) / "schemas" / "@jupyterlab"
    for plugin, values in lab.LAB_SETTINGS.items():
        schema = json.loads((schemas / f"{plugin}.json").read_text(encoding="utf-8"))
        assert set(values) <= set(schema["properties"]), (plugin, set(values) - set(schema["properties"]))
        jsonschema.validate(values, schema)


def test_lab_settings_files_land_where_jupyterlab_reads_them(tmp_path):
    import json

    lab.write_lab_settings(tmp_path)
    tracker = tmp_path / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    assert json.loads(tracker.read_text())["autoStartDefaultKernel"] is True


def test_the_page_functions_are_valid_javascript(tmp_path):
    """Each function handed to the page parses (a doubled brace from an f-string once made the
    redraw wait fail at once, reported as "did not redraw")."""
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    snippets = {"KERNEL_STATE": lab.KERNEL_STATE, "RUN_ALL": lab.RUN_ALL, "RUN_STATE": lab.RUN_STATE,
                "FIND_WIDGET": lab.FIND_WIDGET, "redrawn": lab.redrawn("ρ")}
    for name, js in snippets.items():
        path = tmp_path / f"{name}.js"
        path.write_text(f"const f = ({js});\n", encoding="utf-8")
        result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_the_drag_moves_the_handle_by_the_fraction_of_the_range():
    found = {"handle": {"x": 120.0, "y": 10.0}, "track": {"x": 100.0, "width": 150.0}}
    # rho slider: 0 to 1.5 over 150 px, so 0.2 -> 0.35 is 15 px to the right
    assert lab.drag_target_x(found, 0.2, 0.35, 0.0, 1.5) == pytest.approx(135.0)
    assert lab.drag_target_x(found, 1.2, 0.5, -1.5, 1.5) == pytest.approx(120.0 - 35.0)
    with pytest.raises(ValueError):
        lab.drag_target_x(found, 0.2, 2.0, 0.0, 1.5)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_descendants_finds_a_grandchild_in_its_own_session():
    """Kernels run in sessions of their own: the cleanup must still find them below the server."""
    import os
    import signal
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'], start_new_session=True); "
        "print(c.pid, flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    pids = [parent.pid]
    try:
        grandchild = int(parent.stdout.readline())
        pids.insert(0, grandchild)
        assert grandchild in lab.descendants(parent.pid)
        assert lab.descendants(grandchild) == []
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.wait()
        parent.stdout.close()
