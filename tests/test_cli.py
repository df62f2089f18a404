"""The ``forgetting-sam`` command: train, demo, compare, and every bad input as a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forgetting_sam.cli import main
from forgetting_sam.engine.config import config_fields

REPO = Path(__file__).resolve().parents[1]


FAST = ["--model", "mlp", "--model-options", "hidden_sizes=[16]", "--subset", "96", "--batch-size", "32",
        "--quiet"]


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def test_train_from_preset_with_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, _ = run(capsys, "train", "--config", "digits_sam", "--epochs", "2", "--rho", "0.1",
                        "--out-dir", str(out), *FAST)
    assert rc == 0 and "finished: 2/2 epochs" in stdout
    saved = (out / "config.yaml").read_text()
    assert "rho: 0.1" in saved and "wrapper: sam" in saved and "label_noise: 0.4" in saved
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # the same command again refuses to overwrite the finished run
    rc, _, err = run(capsys, "train", "--config", "digits_sam", "--epochs", "2", "--out-dir", str(out), *FAST)
    assert rc == 2 and "already holds a finished run" in err and "--overwrite" in err
    # --resume --out-dir alone picks up the run's own config
    rc, stdout, _ = run(capsys, "train", "--resume", "--out-dir", str(out), "--quiet")
    assert rc == 0 and "finished" in stdout


def test_help_shows_every_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    missing = [f.name for f in config_fields() if f"--{f.name.replace('_', '-')}" not in text]
    assert missing == []


def test_print_config_resolves_base_and_overrides(capsys):
    rc, out, _ = run(capsys, "train", "-c", "imagenet_resnet101_gsam", "--alpha", "0.02", "--print-config")
    assert rc == 0
    assert "model: resnet101" in out and "alpha: 0.02" in out and "rho_schedule: proportional" in out
    assert "out_dir: runs/imagenet_resnet101_gsam" in out


@pytest.mark.parametrize("argv,needle", [
    (["--learning-rate", "0.1"], "did you mean lr"),
    (["--model", "resnet5O"], "valid: mlp, cnn"),
    (["--optimizer", "adam"], "valid: sgd, adamw"),
    (["--wrapper", "sma"], "did you mean 'sam'"),
    (["--config", "digits_sma"], "Valid presets: "),
    (["--epochs", "many"], "epochs must be an int"),
    (["--model-options", "width=2"], "Unknown option(s) ['width'] for model 'mlp'"),
    (["--rho", "-1", "--wrapper", "sam"], "rho must be ≥ 0"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, needle):
    rc, _, err = run(capsys, "train", "--out-dir", str(tmp_path / "r"), "--quiet", *argv)
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "config.yaml").exists()  # nothing written for a bad run


def test_missing_dataset_says_where_and_how(tmp_path, capsys):
    rc, _, err = run(capsys, "train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere"),
                     "--out-dir", str(tmp_path / "r"), "--quiet")
    assert rc == 2 and str(tmp_path / "nowhere") in err and "--download" in err
    rc, _, err = run(capsys, "train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "nowhere"),
                     "--out-dir", str(tmp_path / "r"), "--quiet")
    assert rc == 2 and "train" in err and "val" in err


def test_corrupted_checkpoint_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--out-dir", str(out), *FAST)
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    summary["status"] = "interrupted"  # pretend it was cut short, then damage its checkpoint
    (out / "summary.json").write_text(json.dumps(summary))
    ck = out / "checkpoints" / "last.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    rc, _, err = run(capsys, "train", "--resume", "--out-dir", str(out), "--quiet")
    assert rc == 2 and "truncated or corrupted" in err
    rc, _, err = run(capsys, "train", "--dataset", "digits", "--out-dir", str(out), *FAST)
    assert rc == 2 and "unfinished run" in err and "--resume" in err


def test_demo_and_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "demo", "--epochs", "1", "--subset", "64", "--out", "demo")
    assert rc == 0
    for name in ("SGD", "SAM", "ASAM", "GSAM", "OBF"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "test acc" in out and "wall time (s)" in out
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 1000
    rc, out, _ = run(capsys, "compare", "demo/sgd", "demo/obf", "--plot", "cmp.png")
    assert rc == 0 and "sgd" in out and "obf" in out and "test acc" in out
    assert (tmp_path / "cmp.png").is_file()
    rc, _, err = run(capsys, "compare", "demo/nothing")
    assert rc == 2 and "holds no run" in err
    rc, _, err = run(capsys, "demo", "--optimizers", "sgd,adam")
    assert rc == 2 and "valid: sgd, sam, asam, gsam, obf" in err


def test_module_entry_point_and_gpu_check_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "forgetting_sam", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env=env)
    assert proc.returncode == 0 and "train" in proc.stdout and "demo" in proc.stdout and "compare" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in ("resnet18", "vit_s32", "sgd", "sam", "obf", "bf16", "fp16", "SAM/SGD", "no NaN"):
        assert needle in proc.stdout, needle


def test_default_dataset_needs_no_extra():
    # digits (scikit-learn's) is the default data set: a plain install must be able to train on it.
    import tomllib

    from forgetting_sam.engine.config import TrainConfig

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert TrainConfig.__dataclass_fields__["dataset"].default == "digits"
    assert any(d.replace(" ", "").startswith("scikit-learn") for d in project["dependencies"])
