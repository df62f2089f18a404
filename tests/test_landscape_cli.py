"""`forgetting-sam landscape` and `forgetting-sam hessian` on a real (tiny) engine run."""

import json

import pytest
import torch

from forgetting_sam.cli import main
from forgetting_sam.engine import load_run, make_config, train
from forgetting_sam.landscape import Plane, hessian_eigenvalues


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    cfg = make_config(overrides={"dataset": "digits", "subset": 96, "model": "mlp",
                                 "model_options": {"hidden_sizes": [16]}, "epochs": 1, "batch_size": 32,
                                 "lr": 0.1, "quiet": True, "seed": 0, "out_dir": str(out)})
    train(cfg)
    return out


def test_landscape_command_writes_plot_numbers_and_reusable_plane(run_dir, tmp_path, capsys):
    png, plane_path = tmp_path / "l.png", tmp_path / "plane.pt"
    rc = main(["landscape", str(run_dir), "--steps", "4", "--samples", "40", "--out", str(png),
               "--save-plane", str(plane_path), "--no-progress"])
    assert rc == 0 and png.is_file() and plane_path.is_file()
    saved = torch.load(png.with_suffix(".pt"), weights_only=True)
    assert saved["loss"].shape == (4, 4) and saved["samples"] == 40
    assert "evaluated by sequential" in capsys.readouterr().out
    # Reusing the saved plane gives the same numbers.
    png2 = tmp_path / "l2.png"
    assert main(["landscape", str(run_dir), "--steps", "4", "--samples", "40", "--out", str(png2),
                 "--plane", str(plane_path), "--no-progress"]) == 0
    torch.testing.assert_close(torch.load(png2.with_suffix(".pt"), weights_only=True)["loss"], saved["loss"])
    Plane.load(plane_path).check(load_run(run_dir).model)
    assert main(["landscape", str(run_dir), "--dim", "1", "--steps", "3", "--samples", "16",
                 "--out", str(tmp_path / "line.png"), "--no-progress"]) == 0


def test_hessian_command_matches_the_library(run_dir, tmp_path, capsys):
    out = tmp_path / "h.json"
    rc = main(["hessian", str(run_dir), "--samples", "48", "--top-k", "2", "--trace", "--trace-samples", "4",
               "--density", "--density-steps", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    run = load_run(run_dir)
    ds = run.data.train
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:48].tolist()
    x = torch.stack([ds[i][0] for i in idx])
    y = torch.as_tensor([ds[i][1] for i in idx])
    direct = hessian_eigenvalues(run.model, (x, y), run.loss_fn, k=2, progress=False)
    assert res["eigenvalues"] == pytest.approx(direct.values.tolist(), rel=1e-6)
    assert "trace" in res and (tmp_path / "h_density.png").is_file()
    assert "top eigenvalues" in capsys.readouterr().out


def test_bad_input_is_one_line_error(run_dir, tmp_path, capsys):
    assert main(["hessian", str(run_dir), "--samples", "0"]) == 2
    assert "--samples must be at least 1" in capsys.readouterr().err
    assert main(["landscape", str(run_dir), "--steps", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "steps must be at least 2" in capsys.readouterr().err
    assert main(["landscape", str(tmp_path / "missing")]) == 2
    assert main(["landscape", str(run_dir), "--plane", str(tmp_path / "nope.pt")]) == 2
    assert "no saved plane" in capsys.readouterr().err
