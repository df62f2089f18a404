"""Move the widgets' sliders in a real JupyterLab and check that their figures redraw.

Run by ``make docs-check`` after the website check. It starts JupyterLab from the project's
environment on 127.0.0.1 with a random token, in a scratch folder holding copies of the notebooks
without their outputs (so autosave never touches the committed ones, and every prompt number and
figure seen is this run's), and drives it with headless chromium:

- notebook 01: run all cells, find the trajectory explorer (forgetting_sam.widgets.explorer),
  drag its ρ slider with the mouse, and wait for the figure's image data to change;
- notebook 03: the same with the direction explorer's α slider.

A cell that errors, a run that does not finish, a slider that is not found, or a figure that does
not change fails the check. Readiness and completion are read from JupyterLab itself (the
kernel's connection and status, the promise of "run all cells", the cells' execution counts and
error outputs), not from the prompts' text. Screenshots go to build/screenshots/lab_01.png and
lab_03.png (and lab_NN_<what>.png on a failure). The server is always shut down at the end,
kernels included, also on an error, a SIGTERM, or this process's own death (the server gets a
SIGTERM then); any process below it that is still alive after the shutdown is killed by its id.

Usage: ``python tools/lab_widgets_check.py [01] [03]`` (default: both).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_check import launch  # noqa: E402  (the same chromium, flags and fresh profile)

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # notebook, the slider's description, the value to drag it to
    ("01_sam_from_scratch.ipynb", "ρ", 0.35),
    ("03_loss_landscapes.ipynb", "α", 0.5),
]
KERNEL_TIMEOUT_S = 120   # the notebook is open and its kernel connected and idle
RUN_TIMEOUT_S = 300      # every cell has run (each notebook takes tens of seconds on 2 busy cores)
REDRAW_TIMEOUT_S = 60    # the figure changes after the slider is released
SHOTS = ROOT / "build" / "screenshots"
LAB_SETTINGS = {  # @jupyterlab/<plugin>: settings that keep a fresh Lab from asking or fetching
    # every cell stays attached to the page; start the notebook's kernel without asking
    "notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
    # no news prompt and no request to the internet
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# The open notebook panel for `path`, with its kernel: connected and idle, or why not yet.
KERNEL_STATE = """(path) => {
  const app = window.jupyterapp;
  if (!app) return 'no jupyterapp';
  const panel = [...app.shell.widgets('main')].find(w => w.context && w.context.path === path);
  if (!panel) return 'notebook not open';
  if (!panel.context.isReady) return 'notebook not loaded';
  const dialog = document.querySelector('.jp-Dialog');
  if (dialog) return 'dialog: ' + dialog.textContent.slice(0, 200);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel) return 'no kernel';
  if (kernel.connectionStatus !== 'connected') return 'kernel ' + kernel.connectionStatus;
  if (kernel.status !== 'idle') return 'kernel ' + kernel.status;
  return 'ready';
}"""

# Start "run all cells" in the notebook at `path`; its promise settles after the last cell.
RUN_ALL = """(path) => {
  const app = window.jupyterapp;
  const panel = [...app.shell.widgets('main')].find(w => w.context && w.context.path === path);
  app.shell.activateById(panel.id);
  window.__labCheck = {done: false};
  app.commands.execute('notebook:run-all-cells').then(
    ok => { window.__labCheck = {done: true, ok: ok !== false}; },
    err => { window.__labCheck = {done: true, ok: false, error: String(err)}; });
  return true;
}"""

# How far the run is, from the notebook's model.
RUN_STATE = """(path) => {
  const panel = [...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path);
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const code = [...panel.content.model.cells].filter(c => c.type === 'code');
  const errors = [];
  code.forEach((c, i) => {
    for (let k = 0; k < c.outputs.length; k++) {
      const o = c.outputs.get(k).toJSON();
      if (o.output_type === 'error') errors.push(`code cell ${i + 1}: ${o.ename}: ${o.evalue}`);
    }
  });
  return {...window.__labCheck, kernel: kernel ? kernel.status : 'none', cells: code.length,
          ran: code.filter(c => c.executionCount !== null).length, errors};
}"""

# The output image of the widget box that holds a slider labelled `label`, that slider's readout,
# and the geometry needed to drag its handle.
FIND_WIDGET = """(label) => {
  for (const box of document.querySelectorAll('.jp-OutputArea-output .widget-box')) {
    const slider = [...box.querySelectorAll('.widget-slider')]
      .find(s => (s.querySelector('.widget-label') || {}).textContent?.trim() === label);
    const img = box.querySelector('.widget-output img');
    if (!slider || !img || !img.complete || !img.naturalWidth) continue;
    const handle = slider.querySelector('.noUi-handle'), track = slider.querySelector('.noUi-target');
    if (!handle || !track) continue;
    const h = handle.getBoundingClientRect(), t = track.getBoundingClientRect();
    return {src: img.src.slice(-200), len: img.src.length, readout: slider.querySelector('.widget-readout').textContent.trim(),
            handle: {x: h.x + h.width / 2, y: h.y + h.height / 2}, track: {x: t.x, width: t.width}};
  }
  return null;
}"""


def redrawn(label: str) -> str:
    """A page function of ``before`` (what FIND_WIDGET returned) that is true once the figure next
    to the slider labelled ``label`` shows other image data."""
    return (f"(before) => {{ const now = ({FIND_WIDGET})({json.dumps(label)});"
            f" return !!now && (now.src !== before.src || now.len !== before.len); }}")


def drag_target_x(found: dict, current: float, target: float, lo: float, hi: float) -> float:
    """Where to release the slider's handle so that it moves from ``current`` to ``target``.

    noUiSlider moves the handle by the pointer's displacement, as a fraction of the track's width
    times the range ``hi - lo``; the pointer starts at the handle's centre.
    """
    if not lo <= target <= hi or hi <= lo:
        raise ValueError(f"target {target} outside the slider's range [{lo}, {hi}]")
    return found["handle"]["x"] + (target - current) / (hi - lo) * found["track"]["width"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_lab_settings(folder: Path) -> None:
    """The user settings of :data:`LAB_SETTINGS`, one file per plugin, under ``folder``."""
    for plugin, value in LAB_SETTINGS.items():
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def start_lab(workdir: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port over ``workdir``, settings and state kept inside it."""
    write_lab_settings(workdir / ".lab-settings")
    env = {**os.environ, "FSAM_QUICK": "1", "OMP_NUM_THREADS": "1",
           "JUPYTER_TOKEN": token,  # not on the command line, where `ps` would show it
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "JUPYTERLAB_SETTINGS_DIR": str(workdir / ".lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(workdir / ".lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(workdir / ".runtime")}
    log = open(workdir / "lab.log", "w")
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", f"--ServerApp.root_dir={workdir}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
         "--allow-root", "--ServerApp.terminals_enabled=False"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
        preexec_fn=_term_with_parent)


def _term_with_parent() -> None:
    """In the server's process (Linux): a SIGTERM when this check dies, even by SIGKILL, so that
    the server shuts its kernels down instead of living on."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_up(base: str, token: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before answering")
        try:
            urllib.request.urlopen(f"{base}api/status?token={token}", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on {base} within {timeout:.0f} s")


def descendants(pid: int) -> list[int]:
    """The ids of every living process below ``pid`` (kernels run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_lab(base: str, token: str, proc: subprocess.Popen) -> None:
    """Ask the server to shut down (it stops its kernels), then make sure nothing it started lives on."""
    below = descendants(proc.pid)
    try:
        request = urllib.request.Request(f"{base}api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10)
    except OSError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in below:  # a kernel the server could not stop
        try:
            os.kill(pid, signal.SIGKILL)
            print(f"  killed process {pid}, left behind by JupyterLab", flush=True)
        except (ProcessLookupError, PermissionError):
            pass


def wait_kernel(page, path: str) -> str | None:
    """Wait until the notebook is open with its kernel connected and idle; None, or what it was stuck at."""
    deadline, state = time.time() + KERNEL_TIMEOUT_S, ""
    while time.time() < deadline:
        state = page.evaluate(KERNEL_STATE, path)
        if state == "ready":
            return None
        time.sleep(0.5)
    return state


def run_all(page, path: str, name: str) -> list[str]:
    """Run every cell of the open notebook; the problems (empty when every cell ran without error)."""
    page.evaluate(RUN_ALL, path)
    started = reported = time.time()
    while True:
        state = page.evaluate(RUN_STATE, path)
        if state["errors"]:
            return [f"{name}: a cell raised in JupyterLab: {e}" for e in state["errors"]]
        if state["done"]:
            break
        if time.time() - reported >= 15:
            print(f"  {name}: {state['ran']}/{state['cells']} code cells run after "
                  f"{time.time() - started:.0f} s", flush=True)
            reported = time.time()
        if time.time() - started > RUN_TIMEOUT_S:
            page.screenshot(path=str(SHOTS / f"lab_{name[:2]}_timeout.png"))
            return [f"{name}: still running after {RUN_TIMEOUT_S} s ({state['ran']}/{state['cells']} "
                    f"code cells run, kernel {state['kernel']})"]
        time.sleep(0.5)
    if not state["ok"] or state["ran"] != state["cells"]:
        return [f"{name}: run all cells failed ({state.get('error', 'no error output')}; "
                f"{state['ran']}/{state['cells']} code cells run)"]
    print(f"  {name}: all {state['cells']} code cells ran in {time.time() - started:.0f} s", flush=True)
    return []


def check_notebook(page, base: str, token: str, name: str, label: str, value: float) -> list[str]:
    """Open ``name``, run it, drag the slider labelled ``label`` to ``value``; returns problems."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    path = f"notebooks/{name}"
    page.goto(f"{base}lab/tree/{path}?token={token}", wait_until="load")
    stuck = wait_kernel(page, path)
    if stuck:
        page.screenshot(path=str(SHOTS / f"lab_{name[:2]}_no_kernel.png"))
        return [f"{name}: the notebook's kernel was not ready after {KERNEL_TIMEOUT_S} s ({stuck})"]
    problems = run_all(page, path, name)
    if problems:
        return problems
    try:
        page.wait_for_function(f"() => ({FIND_WIDGET})({json.dumps(label)})", timeout=30_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / f"lab_{name[:2]}_no_widget.png"), full_page=True)
        labels = page.evaluate("() => [...document.querySelectorAll('.widget-label')].map(e => e.textContent)")
        return [f"{name}: no widget with a {label} slider and a figure after the run (labels seen: {labels})"]
    slider = page.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=label)).first
    slider.scroll_into_view_if_needed()
    before = page.evaluate(FIND_WIDGET, label)
    lo, hi = (float(slider.locator(".noUi-handle").get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax"))
    current = float(slider.locator(".noUi-handle").get_attribute("aria-valuenow"))
    x = drag_target_x(before, current, value, lo, hi)
    page.mouse.move(before["handle"]["x"], before["handle"]["y"])
    page.mouse.down()
    page.mouse.move(x, before["handle"]["y"], steps=10)
    page.mouse.up()
    try:
        page.wait_for_function(redrawn(label), arg=before, timeout=REDRAW_TIMEOUT_S * 1000)
    except PlaywrightTimeout:
        page.screenshot(path=str(SHOTS / f"lab_{name[:2]}_no_redraw.png"))
        after = page.evaluate(FIND_WIDGET, label) or {}
        return [f"{name}: dragging the {label} slider from {current:g} to {value:g} did not redraw the figure "
                f"within {REDRAW_TIMEOUT_S} s (readout {before['readout']} -> {after.get('readout')})"]
    wait_kernel(page, path)  # the update has finished: the screenshot shows the settled widget
    after = page.evaluate(FIND_WIDGET, label)
    page.screenshot(path=str(SHOTS / f"lab_{name[:2]}.png"))
    if abs(float(after["readout"].replace("\u2212", "-")) - value) > 1e-6:
        return [f"{name}: the {label} slider was dragged to {value:g} but reads {after['readout']}"]
    print(f"  {name}: the {label} slider dragged from {before['readout']} to {after['readout']}, the figure "
          f"redrew ({before['len']} -> {after['len']} bytes of image data)", flush=True)
    return []


def _terminated(*_) -> None:
    print("SIGTERM: stopping JupyterLab", flush=True)
    sys.exit(143)


def main() -> int:
    from playwright.sync_api import sync_playwright

    # a SIGTERM (make's or CI's timeout) unwinds through the finally blocks, so the server is stopped
    signal.signal(signal.SIGTERM, _terminated)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("lab_*.png"):  # a failure's screenshot from an earlier run would mislead
        old.unlink()
    cases = [c for c in CASES if not sys.argv[1:] or c[0][:2] in sys.argv[1:]]

    token, port = secrets.token_hex(16), free_port()
    base = f"http://127.0.0.1:{port}/"
    problems: list[str] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lab-check-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        (workdir / "notebooks").mkdir()
        for name, _, _ in cases:
            # without the committed outputs, so every prompt number and figure seen is this run's
            nb = json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))
            nb.get("metadata", {}).pop("widgets", None)
            for cell in nb["cells"]:
                if cell["cell_type"] == "code":
                    cell["outputs"], cell["execution_count"] = [], None
            (workdir / "notebooks" / name).write_text(json.dumps(nb), encoding="utf-8")
        for shared in ("results", "docs", "configs"):  # what a notebook may read from ../
            if (ROOT / shared).exists():
                (workdir / shared).symlink_to(ROOT / shared)
        proc = start_lab(workdir, port, token)
        try:
            wait_up(base, token, proc)
            with sync_playwright() as pw, tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
                context = launch(pw, Path(profile))
                try:
                    page = context.pages[0] if context.pages else context.new_page()
                    for name, label, value in cases:
                        problems += check_notebook(page, base, token, name, label, value)
                        # one kernel at a time: the next notebook does not share 2 cores with this one
                        page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')"
                                      ".then(() => true, () => true)")
                finally:
                    context.close()
        except (RuntimeError, TimeoutError) as e:
            problems.append(str(e))
        finally:
            stop_lab(base, token, proc)
            if problems:
                print((workdir / "lab.log").read_text()[-3000:])
    for problem in problems:
        print("FAIL", problem)
    if problems:
        return 1
    print(f"JupyterLab: {len(cases)} explorer(s) redraw when their slider moves ({time.time() - started:.0f} s, "
          f"screenshots in {SHOTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
