"""The training loop of Appendix A.2.2: build, resume, step, log, save.

"we follow (Zhao et al., 2017) and use a polynomial learning rate decay with an initial
learning rate of 0.01. The momentum and the weight decay are set to 0.9 and 0.0001
respectively. We use 4 Nvidia V100 GPUs, batch size 8 and run 40k iterations [...] random
cropping with a crop size of 769 and random mirror flipping [...] synchronised batch
normalisation" (Appendix A.2.2).

:func:`train` is flat: :func:`build_run` makes the model, optimizer and data of a
:class:`Run`, :func:`restore_state` continues a saved one, :func:`run_step` is one
iteration, and logging and checkpointing are the two hooks :func:`log_step` and
:func:`save_checkpoint` around it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dgmn_ref.data.labels import IGNORE_INDEX
from dgmn_ref.runlock import RunLock, remove_stale_tmp
from dgmn_ref.training.build import build_dataset, build_model, build_optimizer, poly_lr
from dgmn_ref.training.checkpoint import (
    CHECKPOINT,
    CONFIG,
    LOG,
    atomic_save,
    checkpoint_state,
    load_run,
    prepare_out_dir,
    restore_state,
    rng_states,
    seed_everything,
    truncate_log,
)
from dgmn_ref.training.config import SYNTHETIC_ROOT, TrainConfig
from dgmn_ref.training.distributed import (
    DistInfo,
    ResumableSampler,
    amp_dtype,
    autocast,
    global_mean,
    resolve_device,
    setup_distributed,
)
from dgmn_ref.training.guard import NonFiniteGuard
from dgmn_ref.training.integrity import CheckpointError, nonfinite_tensors

__all__ = ["Run", "build_run", "open_run", "run_step", "train"]

Callback = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass
class Run:
    """What the loop carries from step to step (built by :func:`build_run`)."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    out: Path
    model: nn.Module  # unwrapped: what is saved and returned
    net: nn.Module  # the model, wrapped in DistributedDataParallel with several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: DataLoader
    sampler: ResumableSampler
    log: Callable[..., None]
    start: int = 0  # the first iteration to run
    epoch: int = 0  # the sampler position of that iteration
    batch_in_epoch: int = 0
    last_good: tuple[Path, int] | None = None  # the newest checkpoint written or resumed

    def autocast(self) -> AbstractContextManager:
        return autocast(self.cfg.amp, self.device)

    def batches(self) -> Iterator[tuple[int, int, Any]]:
        """Endless ``(epoch, batch_in_epoch, batch)``, starting at the saved position."""
        epoch, start, dataset = self.epoch, self.batch_in_epoch, self.loader.dataset
        while True:
            self.sampler.set_position(epoch, start * self.loader.batch_size)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for i, batch in enumerate(self.loader, start=start):
                yield epoch, i, batch
            epoch, start = epoch + 1, 0


def check_resume(cfg: TrainConfig, out: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint in ``out``, verified (content hash; on CPU the thread count, which
    bit-identical resume needs; finite weights), after checking ``cfg`` differs only in
    runtime settings."""
    threads = torch.get_num_threads() if device.type == "cpu" else None
    checkpoint = load_run(out, "cpu", threads=threads)
    bad = nonfinite_tensors(checkpoint["model"])
    if bad:
        raise CheckpointError(
            f"--resume: {out / CHECKPOINT} holds non-finite weights ({bad[0]}, ... "
            f"{len(bad)} tensors); start the run again with --overwrite"
        )
    changed = cfg.changed_settings(TrainConfig.from_dict(checkpoint["config"]))
    if changed:
        raise ValueError(
            f"--resume: settings {changed} differ from the run in {out}; "
            "only runtime settings may change"
        )
    return checkpoint


def build_run(cfg: TrainConfig, device: torch.device, info: DistInfo) -> Run:
    """The model (the same initial weights on every process), optimizer, scaler and data."""
    log = print if info.is_main else (lambda *a, **k: None)
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    seed_everything(cfg.seed + info.rank)  # per-process randomness (dropout)
    if info.world_size > 1 and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("warning: SyncBatchNorm needs CUDA (torch 2.13); keeping per-process BatchNorm")
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg.amp, device) == torch.float16)
    net = model
    if info.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    dataset = build_dataset(cfg, "train")
    per_process = cfg.batch_size // info.world_size
    sampler = ResumableSampler(dataset, info.world_size, info.rank, cfg.seed)
    if len(sampler) < per_process:
        raise ValueError(
            f"batch_size: {per_process} per process but only {len(sampler)} training images "
            "per process"
        )
    loader = DataLoader(
        dataset,
        batch_size=per_process,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # a private generator: creating an iterator must not draw from the global RNG
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    out = Path(cfg.out)
    return Run(cfg, info, device, out, model, net, optimizer, scaler, loader, sampler, log)


def run_step(run: Run, iteration: int, image: Tensor, label: Tensor) -> Tensor:
    """One SGD step at the poly learning rate; returns this process's loss (no sync).

    The loss is the mean over the valid pixels of the *global* batch: DDP averages
    gradients over processes, so each process divides its sum by (global valid pixels /
    world size), and :func:`global_mean` of the returned values is the global loss.
    """
    lr = poly_lr(run.cfg.lr, iteration, run.cfg.iterations, run.cfg.power)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    with run.autocast():
        logits = run.net(image)
    loss_sum = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = (label != IGNORE_INDEX).sum().to(torch.float32)
    if run.info.world_size > 1:
        dist.all_reduce(valid)
    loss = loss_sum * run.info.world_size / valid.clamp(min=1)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.detach()


def save_checkpoint(run: Run, iteration: int, epoch: int, batch: int) -> None:
    """Hook: ``checkpoint.pt`` (atomically, by rank 0) with every process's RNG states."""
    rng = [rng_states()]
    if run.info.world_size > 1:
        rng = [None] * run.info.world_size
        dist.all_gather_object(rng, rng_states())
    if run.info.is_main:
        sampler = {"epoch": epoch, "batch": batch}
        state = checkpoint_state(
            run.model, run.optimizer, run.scaler, iteration=iteration, sampler=sampler,
            rng=rng, config=run.cfg.to_dict(),
        )  # fmt: skip
        atomic_save(state, run.out / CHECKPOINT, keep_previous=run.cfg.keep_previous)
    run.last_good = (run.out / CHECKPOINT, iteration)


def log_step(run: Run, record: dict[str, float]) -> None:
    """Hook: one line of ``log.jsonl`` (rank 0)."""
    if run.info.is_main:
        with open(run.out / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.out``: SGD (or AdamW) + poly LR, mixed precision on GPU,
    atomic checkpoints, exact resume, DistributedDataParallel under ``torchrun``.

    Args:
        resume: continue from ``cfg.out/checkpoint.pt`` (the model, optimizer, scaler,
            iteration, RNG states of every process and the sampler position are restored,
            so the run ends with the weights of an uninterrupted run).
        overwrite: replace a run already in ``cfg.out``.
        callback: ``f(iteration, {"loss", "lr"})`` at every logged iteration (every
            ``cfg.log_every``-th and the last), on every process, e.g. to stop a run or
            draw a live curve. The loss is the mean over all processes' batches.

    Returns:
        ``{"model": the trained module (unwrapped), "history": [{"iteration", "loss",
        "lr", "images_per_s"}], "out": Path}``.
    """
    cfg.check()
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            f"{cfg.out}, --overwrite deletes it; pass one"
        )
    check_training_data(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = setup_distributed(device.type)
    lock = RunLock(cfg.out) if info.is_main else None
    try:
        if lock is not None:
            lock.acquire()
            for path in remove_stale_tmp(cfg.out):
                print(f"removed {path}, left by a writer that is gone")
        return _train(cfg, device, info, resume, overwrite, callback)
    finally:
        if lock is not None:
            lock.release()
        if info.initialised_here:
            dist.destroy_process_group()


def check_training_data(cfg: TrainConfig) -> None:
    """The cheap data check (pairing, schema, categories) of the training split, so a
    broken dataset fails now, not hours in; see :mod:`dgmn_ref.data.check`."""
    from dgmn_ref.data import ensure_synthetic
    from dgmn_ref.data.check import require_valid_data

    root = cfg.root
    if cfg.dataset == "synthetic":
        root = ensure_synthetic(root or SYNTHETIC_ROOT)
    require_valid_data(cfg.dataset, root, ["train"])


def open_run(
    cfg: TrainConfig, device: torch.device, info: DistInfo, resume: bool, overwrite: bool
) -> Run:
    """Everything before the first step: check the run folder (and the checkpoint to
    resume), build the :class:`Run`, restore its state, then write ``config.json``."""
    out = Path(cfg.out)
    if cfg.batch_size % info.world_size:
        raise ValueError(
            f"batch_size: global batch {cfg.batch_size} is not divisible by the "
            f"{info.world_size} processes"
        )
    if info.is_main:
        prepare_out_dir(out, resume, overwrite)
    if info.world_size > 1:
        dist.barrier()  # nobody reads the folder before it is ready
    checkpoint = check_resume(cfg, out, device) if resume else None
    run = build_run(cfg, device, info)
    if checkpoint is not None:
        run.start, run.epoch, run.batch_in_epoch = restore_state(
            checkpoint, run.model, run.optimizer, run.scaler, info.rank
        )
        run.last_good = (out / CHECKPOINT, run.start)
        run.log(f"resumed from {out / CHECKPOINT} at iteration {run.start}")
        del checkpoint
    if info.is_main:  # every check passed: now the run folder is written
        truncate_log(out, run.start)
        print("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
        (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return run


def _train(cfg, device, info: DistInfo, resume, overwrite, callback) -> dict[str, Any]:
    run = open_run(cfg, device, info, resume, overwrite)
    out = run.out
    guard = NonFiniteGuard(device, info.world_size, check_gradients=not run.scaler.is_enabled())

    run.net.train()
    if cfg.freeze_bn:  # running statistics, as when fine-tuning with small batches
        for m in run.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    history: list[dict[str, float]] = []
    batches = run.batches()
    bar = tqdm(
        total=cfg.iterations,
        initial=run.start,
        disable=not (info.is_main and cfg.progress),
        desc="train",
        dynamic_ncols=True,
    )
    tic, seen = time.perf_counter(), 0
    for iteration in range(run.start, cfg.iterations):
        epoch, batch_in_epoch, (image, label) = next(batches)
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        loss = run_step(run, iteration, image, label)
        done, seen = iteration + 1, seen + image.shape[0] * info.world_size
        guard.observe(loss, done)
        last = done == cfg.iterations
        logging, saving = done % cfg.log_every == 0 or last, done % cfg.checkpoint_every == 0
        if logging or saving or last:
            # the only host synchronisation of the loop; never log or save a non-finite run
            mean_loss = global_mean(loss, info.world_size).item()
            guard.check(run.model, done, run.last_good)
        if logging:
            lr = run.optimizer.param_groups[0]["lr"]
            speed = seen / (time.perf_counter() - tic)
            record = {"iteration": done, "loss": mean_loss, "lr": lr, "images_per_s": speed}
            history.append(record)
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{speed:.1f}")
            log_step(run, record)
            tic, seen = time.perf_counter(), 0
        bar.update(1)
        if saving or last:
            # the next batch is batch_in_epoch + 1 of this epoch (the generator wraps)
            save_checkpoint(run, done, epoch, batch_in_epoch + 1)
        if logging and callback is not None:
            callback(done, {"loss": mean_loss, "lr": lr})
    bar.close()
    return {"model": run.model, "history": history, "out": out}
