"""`forgetting-sam correlate RUN_DIR...`: table, plot file, skipped runs, too few runs."""

import json

from scipy import stats

from forgetting_sam.cli import main


def make_runs(tmp_path, specs):
    dirs = []
    for name, test_acc, ff, extra in specs:
        d = tmp_path / name
        d.mkdir()
        summary = {"final_test_acc": test_acc, "final_train_acc": 1.0, "epochs_done": 2, **extra}
        (d / "summary.json").write_text(json.dumps(summary))
        recs = [{"epoch": e + 1, "train_acc": 0.9, "test_acc": test_acc, **({"forgot_frac": f} if f is not None else {})}
                for e, f in enumerate(ff)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        dirs.append(str(d))
    return dirs


def test_correlate_prints_table_and_draws(tmp_path, capsys):
    dirs = make_runs(tmp_path, [
        ("sgd", 0.90, [0.00, 0.02], {"forgetting": {"mean_forgetting_count": 0.5}}),
        ("sam", 0.93, [0.05, 0.07], {"forgetting": {"mean_forgetting_count": 0.9}}),
        ("obf", 0.95, [0.10, 0.08], {"forgetting": {"mean_forgetting_count": 0.7}}),
        ("asam", 0.91, [0.04, 0.02], {"forgetting": {"mean_forgetting_count": 1.1}}),
        ("broken", 0.50, [None, None], {}),
    ])
    png = tmp_path / "out" / "corr.png"
    rc = main(["correlate", *dirs, "--plot", str(png), "--bootstrap", "20"])
    out = capsys.readouterr().out
    assert rc == 0
    assert png.is_file() and png.stat().st_size > 0
    tau = stats.kendalltau([0.01, 0.06, 0.09, 0.03], [0.90, 0.93, 0.95, 0.91]).statistic
    row = next(line for line in out.splitlines() if line.startswith("forgot_frac"))
    assert f"{tau:+.3f}" in row and "broken" in row  # skipped run named in its row
    assert any(line.startswith("forgetting.mean_forgetting_count") for line in out.splitlines())
    assert "epochs_done" not in out  # setup numbers are not measures
    assert "note:" in out and "skipped 1 run(s): broken" in out

    rc = main(["correlate", *dirs, "-m", "forgot_frac", "--target", "gap", "--no-plot"])
    out = capsys.readouterr().out
    assert rc == 0
    gap_tau = stats.kendalltau([0.01, 0.06, 0.09, 0.03], [0.10, 0.07, 0.05, 0.09]).statistic
    assert f"{gap_tau:+.3f}" in out


def test_correlate_user_errors(tmp_path, capsys):
    dirs = make_runs(tmp_path, [("a", 0.9, [0.1], {}), ("b", 0.8, [0.2], {}), ("c", 0.7, [None], {})])
    assert main(["correlate", *dirs[:2], "--no-plot"]) == 2
    assert "at least 3 run directories, got 2" in capsys.readouterr().err
    assert main(["correlate", *dirs, "-m", "forgot_frac", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "at least 3 runs" in err and "c (no finite forgot_frac)" in err
    assert main(["correlate", *dirs[:2], str(tmp_path / "missing"), "--no-plot"]) == 2
    assert "neither summary.json nor metrics.jsonl" in capsys.readouterr().err
