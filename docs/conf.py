"""Sphinx configuration of the website (``make docs``).

Sphinx reads the tree that tools/docs_stage.py lays out in build/docs_src (the README, the
notebooks with their committed outputs, this folder's pages, the evidence report, the presets
table and a generated API page) and writes build/site. Why Sphinx with myst-nb: see README.md
in this folder.
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "forgetting_sam"
author = "forgetting_sam developers"
copyright = "forgetting_sam developers"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]

# The notebooks are committed executed; the build shows those outputs and never runs a kernel.
nb_execution_mode = "off"
nb_output_stderr = "show"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

exclude_patterns = ["_build", "_files", "**/.ipynb_checkpoints"]

# Offline: MathJax is served from the site itself (copied from docs/node_modules when staging).
mathjax_path = "mathjax/tex-svg-full.js"
MATHJAX = ROOT / "docs" / "node_modules" / "mathjax" / "es5" / "tex-svg-full.js"

# A heading-level jump is a style nit of the page's author, not a broken page; every other
# warning (bad links, bad docstrings, missing files) fails the build.
suppress_warnings = ["myst.header"]

html_theme = "furo"
html_title = "forgetting_sam"
html_show_sourcelink = False
html_copy_source = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}


def _copy_mathjax(app, exception):
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MATHJAX, target / MATHJAX.name)


def setup(app):
    if not MATHJAX.is_file():
        raise FileNotFoundError(f"{MATHJAX} is missing: run `npm ci --prefix docs` (make docs does)")
    app.connect("build-finished", _copy_mathjax)
