"""Lay out the website's source tree in ``build/docs_src`` from the repository (``make docs``).

The site's pages live where the repository keeps them (README, notebooks, results/evidence,
the presets table under ``configs/`` or ``forgetting_sam/configs/``), so Sphinx reads a staged
copy instead of the repository itself:

- every page goes to a fixed place in the site, whichever of the known paths it is found at;
- relative links between pages are rewritten to the staged places; a link to any other file of
  the repository (a script, a CSV, an image) copies that file into ``_files/`` and points there;
- notebooks are copied with their committed outputs (the build never executes them); live
  widget views are removed, since their static snapshots are already in the outputs, and
  solution cells are collapsed;
- the API page lists every name in the ``__all__`` of the public modules;
- MathJax comes from ``docs/node_modules`` (``npm ci --prefix docs``; docs/conf.py copies it
  into the site), so no page needs a CDN.

A link to a file that does not exist stays as written, so Sphinx's warning (an error under -W)
names it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]\n]*)\]\((?P<target><[^>\n]+>|[^)\s]+)(?P<title>\s+\"[^\"\n]*\")?\)")

# The public modules of the API page, in reading order (top level first, so a name re-exported
# further down is documented once, where users import it from).
PUBLIC_MODULES = [
    "forgetting_sam",
    "forgetting_sam.optim",
    "forgetting_sam.landscape",
    "forgetting_sam.forgetting",
    "forgetting_sam.engine",
    "forgetting_sam.teaching",
    "forgetting_sam.widgets",
    "forgetting_sam.cli",
    "forgetting_sam.integrations.accelerate",
    "forgetting_sam.integrations.huggingface",
]


def page_map() -> dict[str, str]:
    """Repository path -> site path of every page of the site (pages that exist only)."""
    pages = {"README.md": "index.md"}
    for sub in ("notebooks", "docs"):
        for path in sorted((ROOT / sub).glob("*")):
            if path.suffix in (".md", ".ipynb") and path.is_file():
                pages[f"{sub}/{path.name}"] = f"{sub}/{path.name}"
    if (ROOT / "results/evidence/README.md").is_file():
        pages["results/evidence/README.md"] = "evidence/README.md"
    for presets in ("configs/README.md", "forgetting_sam/configs/README.md"):
        if (ROOT / presets).is_file():
            pages[presets] = "presets.md"
            break
    else:
        raise FileNotFoundError("no presets table: neither configs/README.md nor "
                                "forgetting_sam/configs/README.md exists")
    return pages


def rewrite_links(text: str, repo_path: str, pages: dict[str, str], out: Path) -> str:
    """Point the relative links of ``text`` (a page at ``repo_path``) at their staged targets."""
    site_dir = Path(pages[repo_path]).parent
    src_dir = Path(repo_path).parent

    def fix(match: re.Match) -> str:
        target = match["target"].strip("<>")
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(src_dir / path).replace(os.sep, "/")
        if resolved in pages:
            new = pages[resolved]
        elif (ROOT / resolved).is_file() and not resolved.startswith(".."):
            new = f"_files/{resolved}"
            (out / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / resolved, out / new)
        elif (ROOT / resolved).is_dir():
            # a folder has no page of its own: name it as code
            return f"{match['text']} (`{resolved}/`)" if match["text"] else f"`{resolved}/`"
        else:
            return match[0]
        rel = os.path.relpath(new, site_dir).replace(os.sep, "/")
        return f"{match['bang']}[{match['text']}]({rel}{'#' + anchor if anchor else ''}{match['title'] or ''})"

    return LINK.sub(fix, text)


def stage_notebook(src: Path, repo_path: str, pages: dict[str, str], out: Path) -> None:
    """Copy a notebook without live widget views, with links fixed and solutions collapsed."""
    nb = json.loads(src.read_text(encoding="utf-8"))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            cell["source"] = rewrite_links(source, repo_path, pages, out)
        meta = cell.setdefault("metadata", {})
        tags = meta.setdefault("tags", [])
        hidden = meta.get("jupyter", {}).get("source_hidden")
        if ("solution" in tags or "exercise" in tags or hidden) and "hide-input" not in tags:
            tags.append("hide-input")
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data is not None:
                for mime in WIDGET_MIMES:
                    data.pop(mime, None)
                # the text/plain repr of a widget ("Explorer(children=...)") says nothing to a reader
                if not data or (set(data) == {"text/plain"} and _is_widget_repr(data["text/plain"])):
                    continue
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
    target = out / pages[repo_path]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def _is_widget_repr(text) -> bool:
    text = "".join(text) if isinstance(text, list) else text
    return bool(re.match(r"^\w*(Box|Explorer|Widget|Output|Slider)\(", text.strip()))


def api_page() -> str:
    """An RST page with one autodoc entry per public name, each documented once."""
    lines = ["API reference", "=============", "",
             "Every name in the ``__all__`` of the public modules, from its docstring. A name that",
             "a module re-exports is documented where it is first listed and linked from the others.",
             ""]
    seen: dict[int, str] = {}
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        lines += [f"``{modname}``", "-" * (len(modname) + 4), "",
                  f".. automodule:: {modname}", "   :no-members:", ""]
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            full = f"{modname}.{name}"
            key = id(obj)
            if key in seen and (isinstance(obj, type) or callable(obj)):
                lines += [f"- ``{name}``: see :py:obj:`{seen[key]}`", ""]
                continue
            if isinstance(obj, type):
                lines += [f".. autoclass:: {full}", "   :members:", ""]
            elif callable(obj):
                lines += [f".. autofunction:: {full}", ""]
            else:
                lines += [f".. py:data:: {full}", f"   :type: {type(obj).__name__}", "",
                          *(f"   {line}" for line in _attr_doc(module, name)), ""]
            seen[key] = full
    return "\n".join(lines) + "\n"


def _attr_doc(module, name: str) -> list[str]:
    """The ``#:`` comment or string under ``name``'s assignment, in ``module`` or where it came from."""
    from sphinx.pycode import ModuleAnalyzer

    for modname in (module.__name__, *sorted(m for m in sys.modules if m.startswith(module.__name__ + "."))):
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # a compiled or source-less module has no attribute comments
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line is not None]
    return [f"A module-level constant of ``{module.__name__}``."]


def index_toctree(pages: dict[str, str]) -> str:
    """The landing page's hidden table of contents over every staged page."""
    site = sorted(set(pages.values()) - {"index.md"})
    groups = [
        ("Tutorials", [p for p in site if p.startswith("notebooks/")]),
        ("Math", [p for p in site if p.startswith("docs/")]),
        ("Reference", ["api.rst", "presets.md"]),
        ("Evidence", [p for p in site if p.startswith("evidence/")]),
    ]
    blocks = []
    for caption, entries in groups:
        if entries:
            names = "\n".join(os.path.splitext(e)[0] for e in entries)
            blocks.append(f"```{{toctree}}\n:hidden:\n:caption: {caption}\n\n{names}\n```\n")
    return "\n\n" + "\n".join(blocks)


def stage(out: Path) -> Path:
    """Write the site's source tree into ``out`` (emptied first); returns ``out``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pages = page_map()
    for repo_path, site_path in pages.items():
        src = ROOT / repo_path
        if src.suffix == ".ipynb":
            stage_notebook(src, repo_path, pages, out)
            continue
        text = rewrite_links(src.read_text(encoding="utf-8"), repo_path, pages, out)
        if site_path == "index.md":
            text += index_toctree(pages)
        (out / site_path).parent.mkdir(parents=True, exist_ok=True)
        (out / site_path).write_text(text, encoding="utf-8")
    (out / "api.rst").write_text(api_page(), encoding="utf-8")
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(f"site source staged in {stage(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / 'build/docs_src')}")
