"""Failure paths of the engine and the CLI: divergence, bad input, kills, unwritable output.

Each test drives the real ``forgetting-sam`` command (in-process through ``main``, or as a
subprocess where a signal or a resource limit has to hit a real process) on a tiny digits run.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from forgetting_sam.cli import main
from forgetting_sam.engine import RunLogger, load_checkpoint, make_config, read_metrics, train

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "mlp", "--model-options", "hidden_sizes=[16]", "--subset", "96", "--batch-size", "32",
        "--quiet", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


def checkpoint_bytes(out: Path) -> bytes:
    return (out / "checkpoints" / "last.pt").read_bytes()


# ------------------------------------------------------------------------------ divergence
@pytest.mark.parametrize("wrapper", ["none", "sam"])
def test_diverged_run_stops_with_an_error_and_keeps_a_finite_checkpoint(tmp_path, capsys, wrapper):
    out = tmp_path / "run"
    rc, stdout, err = run(capsys, "train", "--wrapper", wrapper, "--lr", "1e30", "--epochs", "4",
                          "--max-nonfinite-steps", "2", "--log-every", "1", "--out-dir", str(out), *FAST)
    assert rc == 3 and "finished" not in stdout
    line = one_line(err)
    assert "diverged" in line and "--max-nonfinite-steps" in line
    assert "warning: a non-finite loss" in err  # warned on the first one, before stopping
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    last = out / "checkpoints" / "last.pt"
    if last.is_file():  # the last good checkpoint: never one of non-finite weights
        assert all(torch.isfinite(v).all() for v in load_checkpoint(last)["model"].values())


def test_skipped_and_nonfinite_steps_are_always_logged(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, _ = run(capsys, "train", "--wrapper", "sam", "--epochs", "1", "--out-dir", str(out), *FAST)
    assert rc == 0
    record = read_metrics(out)[0]
    assert record["skipped_steps"] == 0 and record["nonfinite_steps"] == 0  # logged without fp16 too


def test_max_nonfinite_steps_zero_never_stops(tmp_path, capsys):
    rc, stdout, err = run(capsys, "train", "--lr", "1e30", "--epochs", "2", "--max-nonfinite-steps", "0",
                          "--out-dir", str(tmp_path / "run"), *FAST)
    assert rc == 0 and "finished" in stdout and "warning: a non-finite loss" in err
    assert read_metrics(tmp_path / "run")[-1]["nonfinite_steps"] == 3  # every step of epoch 2


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv, needle", [
    (["--rho", "inf"], "rho must be a finite number"),
    (["--rho", "nan"], "rho must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--momentum", "nan"], "momentum must be a finite number"),
    (["--label-smoothing=-inf"], "label_smoothing must be a finite number"),
    (["--betas", "[0.9, .nan]"], "betas must be a finite number"),
    (["--model-options", "hidden_sizes=abc"], "hidden_sizes='abc'"),
    (["--model-options", "hidden_sizes=[0]"], "hidden_sizes=[0]"),
    (["--model-options", "dropout=.nan"], "dropout=nan"),
    (["--micro-batch-size", "64", "--batch-size", "32"], "micro_batch_size=64 exceeds batch_size=32"),
])
def test_bad_values_are_one_line_errors_naming_the_argument(capsys, argv, needle):
    rc, _, err = run(capsys, "train", *argv, "--print-config")
    assert rc == 2 and needle in one_line(err)


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    import forgetting_sam.engine as engine

    def broken(cfg):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(engine, "train", broken)
    with pytest.raises(ValueError, match="internal bug"):
        main(["train", "--out-dir", str(tmp_path / "run"), *FAST])


def test_invalid_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("wrapper: sam\nlr: 0.1\nrho: [0.05, 0.1\nepochs: 2\n")
    rc, _, err = run(capsys, "train", "--config", str(bad), "--print-config")
    line = one_line(err)
    assert rc == 2 and f"{bad}:" in line and "not valid YAML" in line
    assert int(line.split(f"{bad}:")[1].split(":")[0]) in (3, 4)  # where the flow list breaks


def test_compare_on_corrupt_metrics_names_file_and_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out-dir", str(out), *FAST]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:-7] + "\n")
    capsys.readouterr()
    rc, _, err = run(capsys, "compare", str(out), "--plot", "none")
    assert rc == 2 and f"{out / 'metrics.jsonl'}:2" in one_line(err)


# ------------------------------------------------------------------------------ resume
def test_resume_on_nothing_is_an_error_unless_asked_to_start_fresh(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (empty, tmp_path / "mistyped"):
        rc, _, err = run(capsys, "train", "--resume", "--out-dir", str(target), *FAST)
        assert rc == 2 and "nothing to resume" in one_line(err)
        assert not (target / "checkpoints").exists()
    rc, stdout, _ = run(capsys, "train", "--resume-if-present", "--epochs", "1", "--out-dir", str(empty), *FAST)
    assert rc == 0 and "finished: 1/1" in stdout
    # and on a run that is there, --resume-if-present continues it
    rc, stdout, _ = run(capsys, "train", "--resume-if-present", "--epochs", "1", "--out-dir", str(empty), *FAST)
    assert rc == 0 and "finished: 1/1" in stdout


def test_run_killed_before_its_first_checkpoint_resumes_from_scratch(tmp_path, capsys):
    # What an older engine left when killed between the first record and the first checkpoint.
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out-dir", str(out), *FAST]) == 0
    (out / "checkpoints" / "last.pt").unlink()
    (out / "summary.json").unlink()
    capsys.readouterr()
    rc, stdout, _ = run(capsys, "train", "--resume", "--epochs", "1", "--out-dir", str(out), *FAST)
    assert rc == 0 and "finished: 1/1" in stdout
    assert [r["epoch"] for r in read_metrics(out)] == [1]


def test_the_checkpoint_is_written_before_the_epoch_record(tmp_path, monkeypatch):
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def die(self, record):
        raise Killed  # the process dies where the record would be written

    monkeypatch.setattr(RunLogger, "log", die)
    overrides = dict(model="mlp", model_options={"hidden_sizes": [16]}, subset=96, batch_size=32, epochs=2,
                     quiet=True, device="cpu", out_dir=str(out))
    with pytest.raises(Killed):
        train(make_config(overrides=overrides))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    resumed = train(make_config(overrides={**overrides, "resume": True}))
    assert resumed.summary["status"] == "finished"
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2]  # epoch 1's record came from the checkpoint


# ------------------------------------------------------------------------------ unwritable output
def _stopped_after_one_epoch(out: Path) -> bytes:
    overrides = dict(model="mlp", model_options={"hidden_sizes": [16]}, subset=96, batch_size=32, epochs=3,
                     quiet=True, device="cpu", out_dir=str(out))
    assert train(make_config(overrides=overrides), callback=lambda rec: False).summary["status"] == "stopped"
    return checkpoint_bytes(out)


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    before = _stopped_after_one_epoch(out)

    def full_disk():  # a file-size limit makes the next large write fail like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.run([sys.executable, "-m", "forgetting_sam", "train", "--resume", "--out-dir", str(out),
                           "--quiet"], env=ENV, capture_output=True, text=True, timeout=120, preexec_fn=full_disk)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "cannot write checkpoint" in one_line(proc.stderr)
    assert checkpoint_bytes(out) == before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt"]  # no half-written file
    assert main(["train", "--resume", "--out-dir", str(out), "--quiet"]) == 0  # and it still resumes


def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should go")
    rc, _, err = run(capsys, "train", "--epochs", "1", "--out-dir", str(blocker / "run"), *FAST)
    assert rc == 2 and "cannot write to" in one_line(err)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/bin/mount").exists(), reason="mounting a tmpfs needs root")
def test_read_only_output_dir_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "run"
        before = _stopped_after_one_epoch(out)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, timeout=30)
        rc, _, err = run(capsys, "train", "--resume", "--out-dir", str(out), "--quiet")
        assert rc == 2 and "Read-only file system" in one_line(err)
        assert checkpoint_bytes(out) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


# ------------------------------------------------------------------------------ kills
def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forgetting_sam", "train", "--model", "mlp", "--model-options",
            "hidden_sizes=[16]", "--subset", "256", "--batch-size", "32", "--epochs", "6", "--quiet",
            "--device", "cpu", "--out-dir", str(out), *extra]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 90) -> bool:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.005)
    return True


def test_sigkill_at_random_moments_always_leaves_a_resumable_run(tmp_path):
    out = tmp_path / "run"
    rng = random.Random(11)
    # The first kill lands as soon as the first epoch record appears (the gap an engine that
    # logged before checkpointing could not resume from); the others at random moments.
    for kill in range(3):
        proc = subprocess.Popen(_train_cmd(out, "--resume-if-present"), env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            watched = out / ("metrics.jsonl" if kill == 0 else "config.yaml")
            if _wait_for(watched, proc):
                time.sleep(0 if kill == 0 else rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
        last = out / "checkpoints" / "last.pt"
        if last.is_file():
            load_checkpoint(last)  # every checkpoint left behind loads
    done = subprocess.run(_train_cmd(out, "--resume-if-present"), env=ENV, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished: 6/6" in done.stdout
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]


def _torchrun(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "forgetting_sam", "train", "--model", "mlp", "--model-options", "hidden_sizes=[16]",
            "--subset", "128", "--batch-size", "32", "--epochs", "2", "--wrapper", "sam", "--log-every", "1",
            "--device", "cpu", "--quiet", "--out-dir", str(out), *extra]


def test_sigterm_under_torchrun_stops_every_rank_and_resumes_bit_identically(tmp_path):
    straight = subprocess.run(_torchrun(tmp_path / "a"), env=ENV, capture_output=True, text=True, timeout=240)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "b"
    proc = subprocess.Popen(_torchrun(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert _wait_for(out / "metrics.jsonl", proc, timeout=180), proc.communicate(timeout=60)[1][-3000:]
        os.killpg(proc.pid, signal.SIGTERM)  # as Slurm does: every process of the job
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert "Traceback" not in err or "SignalException" in err, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    assert "SIGTERM received: stopped after step" in err
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert 0 < ck["step"] < 8

    resumed = subprocess.run(_torchrun(out, "--resume"), env=ENV, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_metrics(tmp_path / "a"), read_metrics(out)
    # the interrupted epoch's numbers too: every replica's partial sums were checkpointed
    assert [(r["train_loss"], r["train_acc"]) for r in ra] == [(r["train_loss"], r["train_acc"]) for r in rb]
