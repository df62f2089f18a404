"""Open every page of the built website in headless chromium and check it (``make docs-check``).

For each HTML page of the site, served on 127.0.0.1, the check fails when:

- an image does not load (``naturalWidth == 0``);
- raw math is left in the visible text (``$...$``, ``$$``, ``\\(...\\)`` or ``\\[...\\]`` outside
  code), or a MathJax error box shows;
- an internal link points to a page or anchor that does not exist;
- the browser console logs an error, or a request leaves 127.0.0.1 (the site must be offline).

It writes screenshots of the landing page and of one notebook page to build/screenshots/.
Chromium is the system's (``apt-get install chromium``); playwright only drives it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import threading
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RAW_MATH = re.compile(r"\$\$|\$[^$\s][^$\n]*\$|\\\(.+?\\\)|\\\[.+?\\\]")

# Visible text without code, and the facts a page check needs, gathered in the page.
PAGE_FACTS = """() => {
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea, [hidden]')
       .forEach(e => e.remove());
  return {
    text: clone.innerText,
    images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat(
         [...document.querySelectorAll('a[name]')].map(e => e.name)),
    mathErrors: document.querySelectorAll('mjx-merror, .MathJax_Error').length,
    mathRendered: document.querySelectorAll('mjx-container').length,
    mathSource: document.querySelectorAll('.math').length,
  };
}"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the check reports what matters; access logs are noise
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``site`` on a free loopback port in a daemon thread; returns (server, base URL)."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def launch(playwright, profile: Path):
    """A fresh headless chromium (its own profile folder) from the system's package."""
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install -y chromium chromium-driver")
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900})


def check_site(site: Path, shots: Path) -> list[str]:
    """Check every page of ``site``; returns the problems found (empty when all pass)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                   if "_static" not in p.parts and "_sources" not in p.parts)
    if "index.html" not in pages:
        return [f"{site} has no index.html: run make docs first"]
    problems: list[str] = []
    server, base = serve(site)
    ids_of: dict[str, set[str]] = {}
    links_of: dict[str, list[str]] = {}
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            context = launch(pw, Path(profile))
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            # chromium asks a fresh profile's first origin for /favicon.ico; the site has none by design
            page.on("console", lambda m: errors.append(f"{m.text} ({m.location.get('url', '')})")
                    if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if urlparse(r.url).hostname not in (None, "127.0.0.1") and not r.url.startswith("data:")
                    else None)
            for rel in pages:
                errors.clear()
                outside.clear()
                url = urljoin(base, rel)
                response = page.goto(url, wait_until="load")
                if response is None or response.status != 200:
                    problems.append(f"{rel}: HTTP {response.status if response else 'no response'}")
                    continue
                # MathJax typesets after load; wait until it says it is done
                page.wait_for_function("() => !window.MathJax || !MathJax.startup || "
                                       "MathJax.startup.promise.then(() => true)", timeout=30_000)
                page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
                facts = page.evaluate(PAGE_FACTS)
                for image in facts["images"]:
                    if not image["ok"]:
                        problems.append(f"{rel}: image does not load: {image['src']}")
                raw = RAW_MATH.findall(facts["text"])
                if raw:
                    problems.append(f"{rel}: raw math in the visible text: {raw[:3]}")
                if facts["mathErrors"]:
                    problems.append(f"{rel}: {facts['mathErrors']} MathJax error box(es)")
                if facts["mathSource"] and not facts["mathRendered"]:
                    problems.append(f"{rel}: {facts['mathSource']} math element(s) but none rendered")
                problems += [f"{rel}: console error: {e}" for e in errors]
                problems += [f"{rel}: request leaves the machine: {u}" for u in sorted(set(outside))]
                ids_of[rel] = set(facts["ids"])
                links_of[rel] = facts["links"]
                if rel == "index.html":
                    page.screenshot(path=str(shots / "landing.png"), full_page=False)
                elif rel.startswith("notebooks/01"):
                    page.screenshot(path=str(shots / "notebook_01.png"), full_page=False)
            context.close()
    finally:
        server.shutdown()
    problems += broken_links(site, base, ids_of, links_of)
    print(f"checked {len(pages)} pages in chromium: "
          f"{sum(len(v) for v in links_of.values())} links, screenshots in {shots}")
    return problems


def broken_links(site: Path, base: str, ids_of: dict[str, set[str]], links_of: dict[str, list[str]]) -> list[str]:
    """Internal links whose file is missing, or whose #anchor is not an id on the target page."""
    problems = []
    for rel, links in links_of.items():
        for link in links:
            if not link.startswith(base):
                continue
            target, anchor = urldefrag(link)
            path = target[len(base):] or "index.html"
            if path.endswith("/"):
                path += "index.html"
            if not (site / path).is_file():
                problems.append(f"{rel}: link to a missing file: {path}")
            elif anchor and path in ids_of and anchor not in ids_of[path]:
                problems.append(f"{rel}: link to a missing anchor: {path}#{anchor}")
    return sorted(set(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=ROOT / "build" / "site")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "build" / "screenshots")
    args = parser.parse_args(argv)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    problems = check_site(args.site.resolve(), args.screenshots)
    for problem in problems:
        print("FAIL", problem)
    if problems:
        print(f"{len(problems)} problem(s) on the website")
        return 1
    print("website: every page passes (images, math, links, console)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
