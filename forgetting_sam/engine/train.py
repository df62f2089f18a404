"""The training loop: one loop for every optimizer, from a laptop to many GPUs.

Read it top to bottom. :func:`train` sets up the run directory, the data, the model, the
optimizer and its schedules, then loops over epochs and batches. **The perturbation happens
inside** ``perturbed_step`` (look for "THE STEP" below): for a SAM-family optimizer it does the
ascent pass, ``w ← w + ε``, the descent pass at ``w + ε``, restores ``w`` and lets the base
optimizer step; for plain SGD/AdamW it is an ordinary step. Everything else here is
bookkeeping: metrics, checkpoints, evaluation.

Example:
    >>> from forgetting_sam.engine import make_config, train
    >>> result = train(make_config("digits_sam", {"epochs": 3, "out_dir": None}))
    >>> result.summary["final_test_acc"]
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..optim import PerturbedOptimizer, perturbed_step
from .checkpoint import (
    check_model_state,
    get_rng_state,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, config_to_dict, make_config, save_config
from .data import DataBundle, IndexedDataset, build_datasets
from .errors import OutputWriteError, UserInputError
from .distributed import (
    DistEnv,
    ResumableDistributedSampler,
    ShardSampler,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from .logging import RunLogger, plot_curves, read_summary
from .models import build_model, count_parameters
from .optim_factory import build_loss, build_optimizer, build_schedules

__all__ = ["CHECKPOINT_DIR", "RunExistsError", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "evaluate",
           "train"]

CHECKPOINT_DIR = "checkpoints"
RUN_FILES = ("metrics.jsonl", "metrics.csv", "summary.json", "config.yaml", "curves.png", "forgetting.pt")


class RunExistsError(UserInputError, FileExistsError):
    """``out_dir`` already holds a run that this call would overwrite, or holds none to resume."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT stopped training; a checkpoint was saved first (``.checkpoint``).
    ``.signum`` is the signal's number (the CLI exits with 128 + signum)."""

    def __init__(self, message: str, checkpoint: Path | None, signum: int = signal.SIGINT):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signum = int(signum)


class TrainingDiverged(RuntimeError):
    """``max_nonfinite_steps`` consecutive optimizer steps had a non-finite loss or were skipped,
    or the weights became non-finite. No checkpoint was written after the divergence;
    ``.checkpoint`` is the last good one (or None)."""

    def __init__(self, message: str, checkpoint: Path | None):
        super().__init__(message)
        self.checkpoint = checkpoint


@contextlib.contextmanager
def _writing(out_dir: Path | None):
    """Turn a failed write of a run file (read-only folder, full disk) into one clear error."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        where = getattr(e, "filename", None) or out_dir
        raise OutputWriteError(f"cannot write to {where} ({e.strerror or e}); free space or choose a "
                               "writable --out-dir") from None


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained ``nn.Module`` (unwrapped: no DDP, no ``torch.compile``), on its device.
        summary: the numbers written to ``summary.json`` (``final_test_acc``, ``wall_time_s``, ...).
        history: one dict per epoch, as in ``metrics.jsonl``.
        out_dir: the run directory, or None when nothing was written.
        config: the resolved :class:`TrainConfig`.
        tracker: the ``ForgettingTracker`` when ``track_forgetting`` is on, else None.
    """

    model: nn.Module
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    config: TrainConfig | None = None
    tracker: Any = None


# ------------------------------------------------------------------------------ helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class _StopSignal:
    """SIGTERM/SIGINT set a flag that the loop reads at the next step boundary, where it saves a
    checkpoint and stops; a second SIGINT interrupts at once."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _prepare_out_dir(cfg: TrainConfig, env: DistEnv) -> tuple[Path | None, Path | None, bool]:
    """Decide what ``out_dir`` holds and whether we may write there.

    Returns ``(out_dir, checkpoint_to_resume, clear)``; ``clear``: replace what ``out_dir`` holds. Raises :class:`RunExistsError` rather than
    overwrite a run without ``overwrite``.
    """
    if cfg.out_dir is None:
        if cfg.resume or cfg.resume_if_present:
            raise ConfigError("resume needs out_dir (the run directory to continue)")
        return None, None, False
    out = Path(cfg.out_dir)
    last = out / CHECKPOINT_DIR / "last.pt"
    summary = read_summary(out) if (out / "summary.json").is_file() else None
    finished = summary is not None and summary.get("status") == "finished"
    has_run = last.is_file() or summary is not None or (out / "metrics.jsonl").is_file()
    resume_from = None
    if cfg.resume or cfg.resume_if_present:
        if last.is_file():
            resume_from = last
        elif has_run:
            # Killed before its first checkpoint: nothing of it can be continued, so it starts
            # over in place (the checkpoint is written before each epoch's record, so no
            # finished epoch is lost).
            return out, None, True
        elif cfg.resume and not cfg.resume_if_present:
            raise RunExistsError(f"nothing to resume in {out}: it holds no run (no {CHECKPOINT_DIR}/last.pt). "
                                 "Check --out-dir, or pass --resume-if-present to start a fresh run there")
    elif has_run and not cfg.overwrite:
        what = "a finished run" if finished else "an unfinished run"
        hint = "" if finished else " or --resume to continue it"
        raise RunExistsError(f"{out} already holds {what}; pass --overwrite to replace it{hint}, "
                             "or choose another --out-dir")
    return out, resume_from, cfg.overwrite


def _claim_out_dir(out: Path | None, clear: bool, env: DistEnv) -> None:
    """Clear a run being overwritten (rank 0, after every rank has checked) and create the folder."""
    if out is None:
        return
    barrier(env)
    if env.is_main:
        if clear:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
    barrier(env)


def _check_resume_config(cfg: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    # Keys that may change between the interrupted and the resumed process.
    free = {"resume", "resume_if_present", "overwrite", "quiet", "num_workers", "device", "log_every", "out_dir",
            "data_dir", "download", "eval_batch_size", "max_nonfinite_steps"}
    now = config_to_dict(cfg)
    diff = sorted(k for k in now if k not in free and k in saved and saved[k] != now[k])
    if diff:
        changes = ", ".join(f"{k}: {saved[k]!r} → {now[k]!r}" for k in diff[:6])
        raise ConfigError(f"cannot resume {path}: the config differs from the saved one ({changes}). "
                          f"Resume with the saved config: --config {path.parent.parent / 'config.yaml'} --resume")


@torch.no_grad()
def evaluate(model: nn.Module, dataset, loss_fn: Callable, *, batch_size: int, device: torch.device,
             env: DistEnv | None = None, autocast=None, mask: torch.Tensor | None = None,
             num_workers: int = 0, channels_last: bool = False) -> dict[str, float]:
    """Mean loss and top-1 accuracy of ``model`` on ``dataset`` (each example once, summed over
    replicas). ``mask``: a (K,) bool tensor of allowed classes; other logits become −inf before
    the argmax (ImageNet-R's 200-class scoring). Returns ``{"loss", "acc", "n"}``."""
    env = env or DistEnv(device=device)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), env.rank, env.world_size),
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast or contextlib.nullcontext():
            out = model(x)
        out = out.float()
        totals[0] += loss_fn(out, y).double() * y.shape[0]
        if mask is not None:
            out = out.masked_fill(~mask.to(device), float("-inf"))
        totals[1] += (out.argmax(-1) == y).sum()
        totals[2] += y.shape[0]
    all_reduce_sum(totals, env)
    model.train(was_training)
    loss, correct, n = totals.tolist()
    return {"loss": loss / max(n, 1), "acc": correct / max(n, 1), "n": int(n)}


def _hessian_top_eig(model, dataset, loss_fn, cfg, device) -> float:
    """Top Hessian eigenvalue on a fixed slice of the training set (the landscape floor)."""
    from ..landscape import hessian_top_eigenvalue

    n = min(cfg.hessian_samples, len(dataset))
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    xs, ys = zip(*(dataset[i][:2] for i in idx))
    x, y = torch.stack(xs).to(device), torch.as_tensor(ys).to(device)
    bs = cfg.eval_batch_size or 256
    batches = [(x[a:a + bs], y[a:a + bs]) for a in range(0, n, bs)]
    value = hessian_top_eigenvalue(model, batches, loss_fn, iters=cfg.hessian_iters)
    return float(value)


# ------------------------------------------------------------------------------ train
def train(config: TrainConfig | dict | str, *, data: DataBundle | None = None,
          callback: Callable[[dict], bool | None] | None = None,
          step_callback: Callable[[dict], bool | None] | None = None) -> TrainResult:
    """Train one model with any optimizer of the family, as ``config`` says.

    Args:
        config: a :class:`TrainConfig`, a dict of overrides, or a preset name/path.
        data: a prebuilt :class:`DataBundle` (default: built from the config).
        callback: called after each epoch with that epoch's record (a dict, as in
            ``metrics.jsonl``); return False to stop (a checkpoint is saved; resumable).
        step_callback: called after each optimizer step with ``{"epoch", "step", "result"}``
            (no device sync); return False to stop after this step.

    Returns:
        :class:`TrainResult` (model, summary, history, out_dir, config, tracker).

    Raises:
        ConfigError, DatasetNotFoundError, RunExistsError, CheckpointError: bad input, with a
            message that says what to do.
        TrainingInterrupted: SIGTERM/SIGINT arrived; a checkpoint was saved first.

    Under ``torchrun``, every process calls this; rank 0 alone writes files.
    """
    if isinstance(config, dict):
        config = make_config(overrides=config)
    elif isinstance(config, (str, Path)):
        config = make_config(config)
    cfg: TrainConfig = config
    env = setup_distributed(cfg.device)
    try:
        with _StopSignal() as stop:
            return _train(cfg, env, data, callback, step_callback, stop)
    finally:
        if env.distributed:
            # The DDP wrapper must be gone before its process group: a reducer that outlives
            # destroy_process_group can abort the process at exit.
            gc.collect()
        cleanup_distributed(env)


def _train(cfg, env, data, callback, step_callback, stop) -> TrainResult:
    t_start = time.perf_counter()
    device = env.device
    show = env.is_main and not cfg.quiet

    # ---- run directory: never overwrite a run by accident ---------------------------------
    out_dir, resume_from, clear = _prepare_out_dir(cfg, env)
    ckpt = None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)  # fully read and checked before anything is applied
        _check_resume_config(cfg, ckpt["config"], resume_from)
    # ---- data ----------------------------------------------------------------------------
    _seed_everything(cfg.seed)
    bundle = data if data is not None else build_datasets(
        cfg.dataset, data_dir=cfg.data_dir, download=cfg.download and env.is_main, subset=cfg.subset,
        label_noise=cfg.label_noise, seed=cfg.seed, image_size=cfg.image_size, augment=cfg.augment,
        val_fraction=cfg.val_fraction, eval_sets=cfg.eval_sets or None, imagenet_r_mask=cfg.imagenet_r_mask)
    per_replica = env.world_size * cfg.accumulation_steps
    if cfg.batch_size % per_replica:
        raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by world_size ({env.world_size}) × "
                          f"accumulation_steps ({cfg.accumulation_steps}) = {per_replica}; the global batch "
                          "is split evenly over replicas and micro-steps")
    local_batch = cfg.batch_size // per_replica  # examples per replica per perturbed_step call
    train_set = IndexedDataset(bundle.train)  # yields (x, y, index) for per-example tracking
    sampler = ResumableDistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=cfg.seed)
    loader_gen = torch.Generator()  # the loader's own RNG, so the global RNG stream is ours alone
    drop_last = sampler.num_samples >= local_batch
    loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler, drop_last=drop_last,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda", generator=loader_gen,
                        persistent_workers=False)
    batches_per_epoch = sampler.num_samples // local_batch if drop_last else 1
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulation_steps)

    # ---- model ---------------------------------------------------------------------------
    model = build_model(cfg.model, num_classes=bundle.num_classes, input_shape=bundle.input_shape,
                        **cfg.model_options)
    if cfg.init_from and ckpt is None:
        loaded, skipped = load_pretrained(model, cfg.init_from)
        if show:
            print(f"initialised {len(loaded)} tensors from {cfg.init_from}; fresh: {', '.join(skipped) or 'none'}")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    raw_model = model  # what checkpoints hold and evaluation runs (no DDP, no compile)
    # Recorded in summary.json so load_run can rebuild the model without reading the data.
    raw_model._fsam_num_classes, raw_model._fsam_input_shape = bundle.num_classes, list(bundle.input_shape)
    if cfg.compile:
        model = torch.compile(model)
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if env.distributed:
        torch.manual_seed(cfg.seed + 1000 * env.rank)  # per-replica dropout streams

    # ---- loss, optimizer, schedules ------------------------------------------------------
    loss_fn = build_loss(cfg)
    eval_loss_fn = build_loss(cfg, for_eval=True)
    optimizer = build_optimizer(cfg, raw_model.parameters())
    lr_sched, rho_sched = build_schedules(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    family = isinstance(optimizer, PerturbedOptimizer)
    tracker = None
    if cfg.track_forgetting:
        from ..forgetting import ForgettingTracker, perturbed_forgetting
        tracker = ForgettingTracker(len(train_set), device=device)
    if cfg.micro_batch_size and cfg.micro_batch_size > local_batch and env.is_main:
        # Not an error (the global batch fits it), but the run is not the m-sharpness asked for.
        warnings.warn(f"micro_batch_size={cfg.micro_batch_size} exceeds the per-replica batch {local_batch} "
                      f"(batch_size / (world_size × accumulation_steps)); each replica perturbs its whole batch",
                      stacklevel=2)

    # ---- claim the run directory (only now that everything above was built without error) --
    with _writing(out_dir):
        _claim_out_dir(out_dir, clear, env)
        logger = RunLogger(out_dir, enabled=env.is_main)
        if out_dir is not None and env.is_main:
            save_config(cfg, out_dir / "config.yaml")

    # ---- resume ---------------------------------------------------------------------------
    start_epoch, start_batch, global_step, elapsed_before, best_test = 0, 0, 0, 0.0, None
    saved_meters = None
    if ckpt is not None:
        check_model_state(raw_model, ckpt["model"], str(resume_from))
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_sched.load_state_dict(ckpt["lr_schedule"])
        if rho_sched is not None and ckpt.get("rho_schedule") is not None:
            rho_sched.load_state_dict(ckpt["rho_schedule"])
            rho_sched.step()
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if tracker is not None and ckpt.get("tracker") is not None:
            tracker.load_state_dict(ckpt["tracker"])
        start_epoch, start_batch, global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        elapsed_before, best_test = ckpt.get("elapsed_s", 0.0), ckpt.get("best_test_acc")
        saved_meters = ckpt.get("meters")
        if isinstance(saved_meters, list):  # one per replica: each holds its own shard's partial sums
            saved_meters = saved_meters[env.rank]
        set_rng_state(ckpt["rng"][env.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        with _writing(out_dir):
            logger.restore(upto_epoch=start_epoch)
            record = ckpt.get("record")
            if record and start_batch == 0 and not any(r.get("epoch") == start_epoch for r in logger.records):
                logger.log(record)  # killed between the checkpoint and its epoch record
        if show:
            print(f"resuming {out_dir} at epoch {start_epoch + 1}, batch {start_batch} (step {global_step})")
        if start_epoch >= cfg.epochs:
            return _finish(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                           elapsed_before, bundle, eval_loss_fn, status="finished", final_eval=False)

    autocast = _autocast(cfg, device)

    def checkpoint(epoch: int, batch_in_epoch: int, meters, record=None) -> Path | None:
        """Save everything needed to continue exactly here (rank 0 writes; RNG of every rank)."""
        rng = get_rng_state()
        if env.distributed:
            gathered = [None] * env.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
            if meters is not None:  # mid-epoch sums differ per replica; rank 0's alone would be wrong
                gathered = [None] * env.world_size
                torch.distributed.all_gather_object(gathered, meters)
                meters = gathered
        if out_dir is None or not env.is_main:
            return None
        state = {
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_schedule": lr_sched.state_dict(),
            "rho_schedule": rho_sched.state_dict() if rho_sched is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "tracker": tracker.state_dict() if tracker is not None else None,
            "rng": rng, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": global_step,
            "meters": meters, "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            "best_test_acc": best_test, "config": config_to_dict(cfg),
            "num_classes": bundle.num_classes, "input_shape": list(bundle.input_shape),
            "record": record,
        }
        return save_checkpoint(state, out_dir / CHECKPOINT_DIR / "last.pt")

    # ---- progress bars ---------------------------------------------------------------------
    from tqdm.auto import tqdm
    bars = show and (sys.stderr.isatty() or "ipykernel" in sys.modules)
    epoch_bar = tqdm(total=cfg.epochs, initial=start_epoch, desc="epochs", disable=not bars, position=0)

    # ---- the loop ------------------------------------------------------------------------
    status, stop_requested = "finished", False
    # Divergence watch: consecutive bad updates, whether any was seen, whether it was reported.
    bad_run = torch.zeros((), dtype=torch.int64, device=device)
    bad_seen = torch.zeros((), dtype=torch.bool, device=device)
    step_bad = torch.zeros((), dtype=torch.bool, device=device)
    warned = False
    check_every = max(1, min(cfg.log_every, cfg.max_nonfinite_steps or cfg.log_every))
    lr_used, rho_used = optimizer.param_groups[0]["lr"], optimizer.param_groups[0].get("rho")
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        first_batch = start_batch if epoch == start_epoch else 0
        sampler.set_epoch(epoch, skip=first_batch * local_batch)
        loader_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
        # Running sums stay on the device: one sync per epoch (and per progress refresh).
        meters = saved_meters if (saved_meters is not None and epoch == start_epoch) else {
            "loss": torch.zeros((), dtype=torch.float64), "correct": torch.zeros((), dtype=torch.float64),
            "count": torch.zeros((), dtype=torch.float64), "p_loss": torch.zeros((), dtype=torch.float64),
            "skipped": torch.zeros((), dtype=torch.float64)}
        meters.setdefault("nonfinite", torch.zeros((), dtype=torch.float64))
        meters = {k: v.to(device) for k, v in meters.items()}
        forget_sums: dict[str, torch.Tensor] = {k[3:]: v for k, v in meters.items() if k.startswith("pf_")}
        epoch_examples, t_epoch = 0, time.perf_counter()
        step_bar = tqdm(total=batches_per_epoch, initial=first_batch, desc=f"epoch {epoch + 1}", leave=False,
                        disable=not bars, position=1)
        batch_idx = first_batch - 1
        for batch_idx, (x, y, idx) in enumerate(loader, start=first_batch):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            # Gradient accumulation: only the last micro-step of a group updates the weights.
            update = (batch_idx + 1) % cfg.accumulation_steps == 0 or batch_idx + 1 == batches_per_epoch

            lr_used = optimizer.param_groups[0]["lr"]  # logged: what this step used, not the next
            rho_used = optimizer.param_groups[0].get("rho") if family else None
            # ==== THE STEP: ascent → w + ε → descent at w + ε → restore w → base step =========
            with autocast:
                result = perturbed_step(model, optimizer, x, y, loss_fn,
                                        micro_batch_size=cfg.micro_batch_size, scaler=scaler,
                                        replay_dropout=cfg.replay_dropout, clip_grad_norm=cfg.clip_grad_norm,
                                        update=update)
            # ===================================================================================

            n = y.shape[0]
            # A skipped step (non-finite gradient) may return the logits of its first chunks only.
            seen = result.logits.shape[0]
            meters["loss"] += result.loss.double() * n
            meters["correct"] += (result.logits.argmax(-1) == y[:seen]).sum()
            meters["count"] += n
            if result.perturbed_loss is not None:
                meters["p_loss"] += result.perturbed_loss.double() * n
            if result.skipped:
                meters["skipped"] += 1
            # Tracked on the device (no sync per step) and read every `check_every` updates.
            step_bad = step_bad | ~torch.isfinite(result.loss.detach()) | bool(result.skipped)
            if tracker is not None:
                if result.perturbed_logits is not None and not result.skipped:
                    for k, v in perturbed_forgetting(result.logits.float(), result.perturbed_logits.float(), y,
                                                     loss_fn=loss_fn).items():
                        forget_sums[k] = forget_sums.get(k, 0) + v.double() * n
                if env.distributed:
                    _gather_presentations(tracker, idx[:seen].to(device), result.logits, y[:seen], env, global_step)
                else:
                    # CPU indices: the tracker checks their range on the host, no device sync
                    tracker.update(idx[:seen], result.logits, y[:seen], step=global_step)
            epoch_examples += n * env.world_size
            if update:
                lr_sched.step()
                if rho_sched is not None:
                    rho_sched.step()
                global_step += 1
                meters["nonfinite"] += step_bad
                bad_run = torch.where(step_bad, bad_run + 1, torch.zeros_like(bad_run))
                bad_seen |= step_bad
                step_bad = torch.zeros((), dtype=torch.bool, device=device)
                if global_step % check_every == 0 or batch_idx + 1 == batches_per_epoch:
                    warned = _check_nonfinite(cfg, env, bad_run, bad_seen, warned, global_step, out_dir, logger,
                                              raw_model, tracker, best_test, elapsed_before, t_start)
            step_bar.update(1)
            if bars and (batch_idx + 1) % cfg.log_every == 0:
                c = meters["count"].item()
                step_bar.set_postfix(loss=f"{meters['loss'].item() / c:.4f}", acc=f"{meters['correct'].item() / c:.3f}",
                                     ex_s=f"{epoch_examples / (time.perf_counter() - t_epoch):.0f}")
            if update and step_callback is not None:
                stop_requested |= step_callback({"epoch": epoch, "step": global_step, "result": result}) is False
            # Stop at an update boundary (no half-accumulated gradient to lose). Under DDP all
            # replicas compare flags on the same steps, so they stop together.
            if update and batch_idx + 1 < batches_per_epoch and (
                    not env.distributed or global_step % cfg.log_every == 0):
                if _any_rank(stop.received is not None or stop_requested, env):
                    step_bar.close()
                    epoch_bar.close()
                    with _writing(out_dir):
                        saved = checkpoint(epoch, batch_idx + 1, _meters_state(meters, forget_sums))
                    return _stopped(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                                    elapsed_before + time.perf_counter() - t_start, stop, saved)
        step_bar.close()
        train_time = time.perf_counter() - t_epoch

        # ---- end of epoch: reduce the meters (one sync), evaluate, log, checkpoint ----------
        fixed = ["loss", "correct", "count", "p_loss", "skipped", "nonfinite"]
        names = fixed + sorted(forget_sums)
        totals = torch.stack([meters[k].to(torch.float64) for k in fixed] + [
            torch.as_tensor(forget_sums[k], device=device).to(torch.float64) for k in names[len(fixed):]])
        all_reduce_sum(totals, env)
        t = dict(zip(names, totals.tolist()))
        count = max(t["count"], 1)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "step": global_step,
            "lr": lr_used, "rho": rho_used,
            "train_loss": t["loss"] / count, "train_acc": t["correct"] / count,
        }
        if family:
            record["train_loss_perturbed"] = t["p_loss"] / count
        for k in names[len(fixed):]:
            record[k] = t[k] / count
        # Always logged: a diverging run shows here long before it stops.
        record["skipped_steps"] = int(t["skipped"])
        record["nonfinite_steps"] = int(t["nonfinite"])
        record["throughput"] = epoch_examples / max(train_time, 1e-9)
        record["epoch_time_s"] = train_time
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            ev_bs = cfg.eval_batch_size or local_batch
            for split, ds in (("test", bundle.test), ("val", bundle.val)):
                if ds is not None:
                    r = evaluate(raw_model, ds, eval_loss_fn, batch_size=ev_bs, device=device, env=env,
                                 autocast=_autocast(cfg, device), num_workers=cfg.num_workers,
                                 channels_last=cfg.channels_last)
                    record[f"{split}_loss"], record[f"{split}_acc"] = r["loss"], r["acc"]
            if "test_acc" in record:
                best_test = max(best_test or 0.0, record["test_acc"])
        if cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
            if env.is_main:
                record["hessian_top_eig"] = _hessian_top_eig(raw_model, bundle.train, eval_loss_fn, cfg, device)
            barrier(env)
        record = {k: v for k, v in record.items() if v is not None}
        if cfg.max_nonfinite_steps and _any_rank(not _weights_finite(raw_model), env):
            _diverged(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                      elapsed_before + time.perf_counter() - t_start,
                      f"the weights are non-finite after epoch {epoch + 1} (step {global_step})")
        saved_meters = None
        # Checkpoint first, then the record: a run killed in between resumes from the checkpoint,
        # which carries the record (a record without its checkpoint could not be resumed).
        with _writing(out_dir):
            checkpoint(epoch + 1, 0, None, record)
            logger.log(record)
        epoch_bar.update(1)
        if show:
            line = f"epoch {epoch + 1}/{cfg.epochs}  " + "  ".join(
                f"{k} {record[k]:.4g}" for k in ("train_loss", "train_acc", "test_loss", "test_acc") if k in record
            ) + f"  ({record['throughput']:.0f} ex/s)"
            (tqdm.write if bars else print)(line)
        if callback is not None:
            stop_requested |= callback(record) is False
        if epoch + 1 < cfg.epochs and _any_rank(stop.received is not None or stop_requested, env):
            epoch_bar.close()
            return _stopped(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                            elapsed_before + time.perf_counter() - t_start, stop, out_dir and out_dir / CHECKPOINT_DIR / "last.pt")
    epoch_bar.close()
    return _finish(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                   elapsed_before + time.perf_counter() - t_start, bundle, eval_loss_fn, status=status)


# ------------------------------------------------------------------------------ endings
def _weights_finite(model: nn.Module) -> bool:
    """One sync: are all parameters finite (checked before a checkpoint may replace a good one)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all().item()) if flags else True


def _check_nonfinite(cfg, env, bad_run, bad_seen, warned, global_step, out_dir, logger, raw_model, tracker,
                     best_test, elapsed_before, t_start) -> bool:
    """Warn once on the first non-finite loss or skipped update; stop the run (every rank
    together) after ``max_nonfinite_steps`` consecutive ones. Returns the new ``warned``."""
    limit = cfg.max_nonfinite_steps
    flags = torch.stack([(bad_run >= limit) if limit else torch.zeros((), dtype=torch.bool, device=bad_run.device),
                         bad_seen]).to(torch.float64)
    all_reduce_sum(flags, env)
    over, seen = (bool(v > 0) for v in flags.tolist())
    if seen and not warned and env.is_main:
        print(f"warning: a non-finite loss or a skipped update (non-finite gradient) at or before step "
              f"{global_step}; training stops after {limit or 'no limit of'} consecutive ones "
              "(--max-nonfinite-steps)", file=sys.stderr)
    if over:
        _diverged(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test,
                  elapsed_before + time.perf_counter() - t_start,
                  f"{limit} consecutive optimizer steps had a non-finite loss or were skipped (up to step "
                  f"{global_step})")
    return warned or seen


def _diverged(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test, elapsed, why: str):
    """Record the divergence in summary.json and raise :class:`TrainingDiverged`; the last
    checkpoint is left as it was (it predates the divergence)."""
    last = out_dir / CHECKPOINT_DIR / "last.pt" if out_dir is not None else None
    last = last if last is not None and last.is_file() else None
    summary = _base_summary(cfg, raw_model, global_step, best_test, elapsed, logger, env)
    summary["status"] = "diverged"
    summary["checkpoint"] = str(last) if last else None
    with _writing(out_dir):
        logger.write_summary(summary)
    barrier(env)
    keep = f"; the last good checkpoint is {last}" if last else ""
    raise TrainingDiverged(f"training diverged: {why}{keep}. Lower --lr (or --rho), or raise "
                           "--max-nonfinite-steps", last)


def _meters_state(meters: dict, forget_sums: dict) -> dict[str, torch.Tensor]:
    state = {k: v.detach().cpu() for k, v in meters.items()}
    state.update({f"pf_{k}": torch.as_tensor(v).detach().double().cpu() for k, v in forget_sums.items()})
    return state


def _any_rank(flag: bool, env: DistEnv) -> bool:
    """True if any replica wants to stop, so all stop at the same step."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    all_reduce_sum(t, env)
    return t.item() > 0


def _gather_presentations(tracker, idx, logits, y, env: DistEnv, step: int) -> None:
    # Every replica records every replica's presentations, so each tracker sees the whole
    # training set whichever replica an example lands on.
    correct = (logits.argmax(-1) == y).to(torch.int64)
    local = torch.stack([idx.to(torch.int64), correct])
    sizes = [torch.zeros((), dtype=torch.int64, device=idx.device) for _ in range(env.world_size)]
    torch.distributed.all_gather(sizes, torch.tensor(local.shape[1], device=idx.device))
    width = max(int(s) for s in sizes)
    padded = torch.full((2, width), -1, dtype=torch.int64, device=idx.device)
    padded[:, :local.shape[1]] = local
    bufs = [torch.empty_like(padded) for _ in range(env.world_size)]
    torch.distributed.all_gather(bufs, padded)
    allp = torch.cat(bufs, dim=1)
    keep = allp[0] >= 0
    tracker.update_correct(allp[0][keep], allp[1][keep].bool(), step=step)


def _base_summary(cfg, raw_model, global_step, best_test, elapsed, logger, env) -> dict[str, Any]:
    last = logger.records[-1] if logger.records else {}
    return {
        "status": None,
        "epochs_done": last.get("epoch", 0), "epochs": cfg.epochs, "steps": global_step,
        "dataset": cfg.dataset, "model": cfg.model, "optimizer": cfg.optimizer, "wrapper": cfg.wrapper,
        "rho": last.get("rho", cfg.rho), "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "final_train_loss": last.get("train_loss"), "final_train_acc": last.get("train_acc"),
        "final_test_loss": last.get("test_loss"), "final_test_acc": last.get("test_acc"),
        "best_test_acc": best_test, "wall_time_s": elapsed,
        "throughput": last.get("throughput"),
        "num_parameters": count_parameters(raw_model), "world_size": env.world_size,
        "device": str(env.device), "amp": cfg.amp, "torch": torch.__version__,
        "num_classes": getattr(raw_model, "_fsam_num_classes", None),
        "input_shape": getattr(raw_model, "_fsam_input_shape", None),
    }


def _stopped(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test, elapsed, stop, saved):
    summary = _base_summary(cfg, raw_model, global_step, best_test, elapsed, logger, env)
    summary["status"] = "interrupted" if stop.received is not None else "stopped"
    summary["checkpoint"] = str(saved) if saved else None
    with _writing(out_dir):
        logger.write_summary(summary)
    barrier(env)
    if stop.received is not None:
        name = signal.Signals(stop.received).name
        where = f"; resume with --resume --out-dir {out_dir}" if saved else ""
        raise TrainingInterrupted(f"{name} received: stopped after step {global_step}{where}",
                                  Path(saved) if saved else None, stop.received)
    return TrainResult(raw_model, summary, list(logger.records), out_dir, cfg, tracker)


def _finish(cfg, env, raw_model, logger, out_dir, tracker, global_step, best_test, elapsed, bundle,
            eval_loss_fn, *, status: str, final_eval: bool = True) -> TrainResult:
    summary = _base_summary(cfg, raw_model, global_step, best_test, elapsed, logger, env)
    summary["status"] = status
    device = env.device
    if final_eval and bundle is not None and bundle.extra_eval:
        ev_bs = cfg.eval_batch_size or max(1, cfg.batch_size // (env.world_size * cfg.accumulation_steps))
        extra = {}
        for name, ds in bundle.extra_eval.items():
            r = evaluate(raw_model, ds, eval_loss_fn, batch_size=ev_bs, device=device, env=env,
                         autocast=_autocast(cfg, device), num_workers=cfg.num_workers)
            extra[name] = {"acc": r["acc"], "loss": r["loss"], "n": r["n"]}
            mask = bundle.extra_eval_masks.get(name)
            if mask is not None:
                rm = evaluate(raw_model, ds, eval_loss_fn, batch_size=ev_bs, device=device, env=env,
                              autocast=_autocast(cfg, device), mask=mask, num_workers=cfg.num_workers)
                extra[name]["masked_acc"] = rm["acc"]
        summary["extra_eval"] = extra
    if tracker is not None:
        summary["forgetting"] = tracker.summary()
    with _writing(out_dir):
        if tracker is not None and out_dir is not None and env.is_main:
            tracker.save(out_dir / "forgetting.pt")
        logger.write_summary(summary)
    if out_dir is not None and env.is_main and logger.records:
        try:
            plot_curves(out_dir)
        except Exception as e:  # a plot must never lose a finished run
            print(f"warning: could not plot curves ({e})", file=sys.stderr)
    barrier(env)
    return TrainResult(raw_model, summary, list(logger.records), out_dir, cfg, tracker)
