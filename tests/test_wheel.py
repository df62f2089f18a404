"""The package as a researcher installs it: a built wheel, not the checkout.

``pip wheel`` builds from a copy of the sources; the wheel is installed with ``pip --python``
into a fresh virtual environment that has no pip and no forgetting_sam of its own. A ``.pth``
file lends it the test environment's site-packages (torch, numpy, scikit-learn): a path in a
``.pth`` file is put on ``sys.path`` but the ``.pth`` files inside it are not run, so the
checkout's editable-install hook never loads and only the wheel can be imported. The CLI then
runs from a folder outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 240) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv's bin folder, a working folder outside the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the checkout.
    shutil.copytree(REPO / "forgetting_sam", src / "forgetting_sam",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          str(src), "-w", str(dist)], cwd=root)
    (wheel,) = dist.glob("forgetting_sam-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "forgetting_sam/configs/digits_sam.yaml" in names, "the wheel holds no presets"

    venv = root / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip",
          str(venv)], cwd=root)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).strip())
    (site / "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
          str(wheel)], cwd=root)
    work = root / "work"
    work.mkdir()
    return venv / "bin", work


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def test_wheel_is_imported_not_the_checkout(installed):
    bin_dir, work = installed
    out = _run([str(bin_dir / "python"), "-c",
                "import forgetting_sam, forgetting_sam.engine as e; "
                "print(forgetting_sam.__file__); print(e.PRESETS_DIR)"], cwd=work, env=_env())
    module, presets = out.split()
    assert str(bin_dir.parent) in module and str(REPO) not in module, module
    assert Path(presets, "digits_sam.yaml").is_file()


def test_wheel_cli_trains_a_preset(installed):
    bin_dir, work = installed
    cli = str(bin_dir / "forgetting-sam")
    listed = _run([cli, "train", "--list-presets"], cwd=work, env=_env()).split()
    assert "digits_sam" in listed and "imagenet_vit_s32_obf" in listed
    out = _run([cli, "train", "--config", "digits_sam", "--epochs", "2", "--subset", "128",
                "--out-dir", str(work / "run")], cwd=work, env=_env())
    assert "2/2 epochs" in out, out
    assert (work / "run" / "config.yaml").is_file()


def test_wheel_cli_demo(installed):
    bin_dir, work = installed
    _run([str(bin_dir / "forgetting-sam"), "demo", "--optimizers", "sgd,obf", "--epochs", "1",
          "--subset", "128", "--out", str(work / "demo")], cwd=work, env=_env())
    assert (work / "demo" / "curves.png").is_file()
