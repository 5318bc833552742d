"""Training and evaluation of the DGMN segmentation model, Appendix A.2.2.

"we follow (Zhao et al., 2017) and use a polynomial learning rate decay with an initial
learning rate of 0.01. The momentum and the weight decay are set to 0.9 and 0.0001
respectively. We use 4 Nvidia V100 GPUs, batch size 8 and run 40k iterations [...] random
cropping with a crop size of 769 and random mirror flipping [...] synchronised batch
normalisation" (Appendix A.2.2).

* :class:`TrainConfig`: every setting, saved as ``config.json`` beside the checkpoint.
* :func:`train`: SGD (or AdamW, ``optimizer``) + poly LR, mixed precision on GPU, atomic
  checkpoints, exact resume, DistributedDataParallel under ``torchrun``.
* :func:`evaluate`: mIoU (and the context-pixel mIoU of the synthetic data), all-reduced.
* :func:`main` / :func:`evaluate_main`: ``dgmn-ref train`` / ``dgmn-ref evaluate``;
  ``python -m dgmn_ref.train`` runs :func:`main` (for ``torchrun``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dgmn_ref.data.labels import (
    CITYSCAPES_CLASSES,
    COCO_SEMANTIC_CLASSES,
    IGNORE_INDEX,
)
from dgmn_ref.layer import IMPLS
from dgmn_ref.metrics import SegmentationMeter
from dgmn_ref.models import CONTEXTS, DEPTHS, SegmentationModel, load_imagenet_weights
from dgmn_ref.runtime import (
    CHECKPOINT,
    CONFIG,
    LOG,
    DistInfo,
    ResumableSampler,
    amp_dtype,
    atomic_save,
    load_run,
    prepare_out_dir,
    resolve_device,
    rng_states,
    seed_everything,
    set_rng_states,
    setup_distributed,
)
from dgmn_ref.variants import PAPER_VARIANTS

__all__ = [
    "DATASETS",
    "TrainConfig",
    "atomic_save",
    "build_dataset",
    "build_model",
    "evaluate",
    "evaluate_main",
    "load_run",
    "main",
    "poly_lr",
    "train",
]

DATASETS: tuple[str, ...] = ("cityscapes", "coco", "synthetic")
AMP_MODES: tuple[str, ...] = ("auto", "off", "bf16", "fp16")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SYNTHETIC_ROOT = "data/synthetic_cityscapes"
# context modules that take sampling rates (TrainConfig.rates)
RATED_CONTEXTS: tuple[str, ...] = ("dgmn", "deformable", "aspp")
# The settings with a fixed set of values (checked by TrainConfig.check, listed in --help).
CHOICES: dict[str, tuple] = {
    "dataset": DATASETS,
    "context": CONTEXTS,
    "variant": tuple(sorted(PAPER_VARIANTS)),
    "impl": IMPLS,
    "amp": AMP_MODES,
    "depth": tuple(sorted(DEPTHS)),
    "optimizer": OPTIMIZERS,
}
# Settings that may change when a run is resumed; all others must match the saved config.
RUNTIME_FIELDS = frozenset(
    {"out", "progress", "num_workers", "log_every", "checkpoint_every", "device", "root"}
)


@dataclasses.dataclass
class TrainConfig:
    """All settings of a run. Defaults are the paper's Cityscapes setting (Appendix A.2.2).

    ``batch_size`` is the global batch (split over the processes); ``crop_size`` is
    ``[h, w]``; ``scale_range`` ``None`` disables random scaling.
    """

    dataset: str = "cityscapes"
    root: str | None = None
    out: str = "runs/dgmn"
    # model (sec. 4.1)
    depth: int = 101
    width: int = 64
    head_channels: int = 512
    context: str = "dgmn"
    variant: str = "da_dw_ds"
    # sampling rates replacing the variant's (dgmn) or the module's default (deformable, aspp):
    # the paper's (1, 6, 12, 24, 36) are for 97x97 feature maps; a 12x24 map needs smaller ones
    rates: list[int] | None = None
    impl: str = "fast"
    dropout: float = 0.1
    pretrained: str | None = None
    # schedule (A.2.2); "adamw" (not the paper's) learns the small synthetic task far faster
    optimizer: str = "sgd"
    iterations: int = 40_000
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    # data (A.2.2; scaling as in PSPNet)
    crop_size: list[int] = dataclasses.field(default_factory=lambda: [769, 769])
    scale_range: list[float] | None = dataclasses.field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    train_subset: int | None = None
    val_subset: int | None = None
    # runtime
    seed: int = 0
    amp: str = "auto"
    sync_bn: bool = True
    freeze_bn: bool = False
    device: str = "auto"
    num_workers: int = 4
    checkpoint_every: int = 1000
    log_every: int = 10
    progress: bool = True

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the bad value and what was expected."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("iterations", "batch_size", "width", "head_channels", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {getattr(self, name)!r}")
        if self.rates is not None:
            if self.context not in RATED_CONTEXTS:
                raise ValueError(f"rates: only for contexts {RATED_CONTEXTS}, not {self.context!r}")
            if not self.rates or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in self.rates
            ):
                raise ValueError(f"rates: expected a list of ints >= 1, got {self.rates!r}")
        if len(self.crop_size) != 2:
            raise ValueError(f"crop_size: expected [h, w], got {self.crop_size!r}")
        if self.dataset in ("cityscapes", "coco"):
            if self.root is None:
                raise ValueError(f"root: dataset {self.dataset!r} needs --root DIR")
            if not Path(self.root).is_dir():
                raise FileNotFoundError(
                    f"root: {self.root!r} is not a directory (the {self.dataset} dataset root)"
                )
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_classes(self) -> int:
        return len(self.class_names())

    def class_names(self) -> tuple[str, ...]:
        return COCO_SEMANTIC_CLASSES if self.dataset == "coco" else CITYSCAPES_CLASSES


# ------------------------------------------------------------------------ schedule, model


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    r"""Poly decay (Zhao et al., 2017): :math:`lr = lr_0 (1 - i / i_{max})^{p}`.

    Example:
        >>> poly_lr(0.01, 0, 100), round(poly_lr(0.01, 50, 100), 6), poly_lr(0.01, 100, 100)
        (0.01, 0.005359, 0.0)
    """
    return base_lr * (1 - iteration / max_iterations) ** power


def build_model(cfg: TrainConfig) -> SegmentationModel:
    """The :class:`~dgmn_ref.models.SegmentationModel` of ``cfg`` (ImageNet weights if set)."""
    model = SegmentationModel(
        cfg.num_classes(),
        depth=cfg.depth,
        width=cfg.width,
        head_channels=cfg.head_channels,
        context=cfg.context,
        variant=cfg.variant,
        impl=cfg.impl,
        dropout=cfg.dropout,
        context_kwargs={"rates": tuple(cfg.rates)} if cfg.rates else None,
    )
    if cfg.pretrained:
        load_imagenet_weights(model.backbone, cfg.pretrained)
    return model


def build_dataset(cfg: TrainConfig, split: str) -> Dataset:
    """Training split with the A.2.2 augmentations, or the evaluation split (untouched).

    ``synthetic`` is the embedded context task in the Cityscapes layout (generated on first
    use, default root ``data/synthetic_cityscapes``); its evaluation split also returns the
    context-dependent pixel mask.
    """
    from dgmn_ref.data import CityscapesDataset, CocoSemantic, TrainTransform, ensure_synthetic

    train = split == "train"
    transform = None
    if train:
        transform = TrainTransform(
            crop_size=tuple(cfg.crop_size),
            scale_range=tuple(cfg.scale_range) if cfg.scale_range else None,
            flip=cfg.flip,
        )
    subset = cfg.train_subset if train else cfg.val_subset
    if cfg.dataset == "coco":
        return CocoSemantic(
            cfg.root, f"{split}2017", transform=transform, subset=subset, seed=cfg.seed
        )
    root = cfg.root
    if cfg.dataset == "synthetic":
        root = ensure_synthetic(root or SYNTHETIC_ROOT)
    return CityscapesDataset(
        root,
        split,
        transform=transform,
        subset=subset,
        return_context=cfg.dataset == "synthetic" and not train,
        seed=cfg.seed,
    )


# ----------------------------------------------------------------------- distributed


# --------------------------------------------------------------------------- training


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _batches(loader: DataLoader, sampler: ResumableSampler, dataset, epoch: int, start: int):
    """Endless ``(epoch, batch_in_epoch, batch)``, starting at a saved position."""
    while True:
        sampler.set_position(epoch, start * loader.batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        for i, batch in enumerate(loader, start=start):
            yield epoch, i, batch
        epoch, start = epoch + 1, 0


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``cfg.out``; see the module docstring.

    Args:
        resume: continue from ``cfg.out/checkpoint.pt`` (the model, optimizer, scaler,
            iteration, RNG states of every process and the sampler position are restored,
            so the run ends with the weights of an uninterrupted run).
        overwrite: replace a run already in ``cfg.out``.
        callback: ``f(iteration, {"loss", "lr"})`` after every iteration (on every process),
            e.g. to stop a run or draw a live curve.

    Returns:
        ``{"model": the trained module (unwrapped), "history": [{"iteration", "loss",
        "lr", "images_per_s"}], "out": Path}``.
    """
    cfg.check()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = setup_distributed(device.type)
    try:
        return _train(cfg, device, info, resume, overwrite, callback)
    finally:
        if info.initialised_here:
            dist.destroy_process_group()


def _train(cfg, device, info: DistInfo, resume, overwrite, callback) -> dict[str, Any]:
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
    checkpoint = load_run(out, "cpu") if resume else None
    if checkpoint is not None:
        saved = TrainConfig.from_dict(checkpoint["config"])
        changed = [
            f.name
            for f in dataclasses.fields(cfg)
            if f.name not in RUNTIME_FIELDS and getattr(cfg, f.name) != getattr(saved, f.name)
        ]
        if changed:
            raise ValueError(
                f"--resume: settings {changed} differ from the run in {out}; "
                "only runtime settings may change"
            )
    log = print if info.is_main else (lambda *a, **k: None)
    log("config: " + json.dumps(cfg.to_dict(), sort_keys=True))
    if info.is_main:
        (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")

    # the same initial weights on every process, then per-process randomness (dropout)
    seed_everything(cfg.seed)
    model = build_model(cfg).to(device)
    seed_everything(cfg.seed + info.rank)
    if info.world_size > 1 and cfg.sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log("warning: SyncBatchNorm needs CUDA (torch 2.13); keeping per-process BatchNorm")
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
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

    start, epoch, batch_in_epoch = 0, 0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        start = checkpoint["iteration"]
        epoch, batch_in_epoch = checkpoint["sampler"]["epoch"], checkpoint["sampler"]["batch"]
        set_rng_states(checkpoint["rng"][info.rank])
        log(f"resumed from {out / CHECKPOINT} at iteration {start}")
        del checkpoint

    def save(iteration: int, epoch: int, batch: int) -> None:
        rng = [rng_states()]
        if info.world_size > 1:
            rng = [None] * info.world_size
            dist.all_gather_object(rng, rng_states())
        if info.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "iteration": iteration,
                "sampler": {"epoch": epoch, "batch": batch},
                "rng": rng,
                "config": cfg.to_dict(),
                "world_size": info.world_size,
            }
            atomic_save(state, out / CHECKPOINT)

    net.train()
    if cfg.freeze_bn:
        _freeze_bn(net)
    history: list[dict[str, float]] = []
    batches = _batches(loader, sampler, dataset, epoch, batch_in_epoch)
    bar = tqdm(
        total=cfg.iterations,
        initial=start,
        disable=not (info.is_main and cfg.progress),
        desc="train",
        dynamic_ncols=True,
    )
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    tic, seen = time.perf_counter(), 0
    for iteration in range(start, cfg.iterations):
        epoch, batch_in_epoch, (image, label) = next(batches)
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        lr = poly_lr(cfg.lr, iteration, cfg.iterations, cfg.power)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits = net(image)
        # the mean over the valid pixels of the *global* batch: DDP averages gradients over
        # processes, so each process divides its sum by (global valid pixels / world size)
        loss_sum = F.cross_entropy(
            logits.float(), label, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        valid = (label != IGNORE_INDEX).sum().to(torch.float32)
        if info.world_size > 1:
            dist.all_reduce(valid)
        loss = loss_sum * info.world_size / valid.clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        done = iteration + 1
        seen += image.shape[0] * info.world_size
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {done}")
        if done % cfg.log_every == 0 or done == cfg.iterations:
            mean_loss = loss.detach() / info.world_size
            if info.world_size > 1:
                dist.all_reduce(mean_loss)
            speed = seen / (time.perf_counter() - tic)
            record = {"iteration": done, "loss": mean_loss.item(), "lr": lr, "images_per_s": speed}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{speed:.1f}")
            if info.is_main:
                with open(out / LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
            tic, seen = time.perf_counter(), 0
        bar.update(1)
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            # the next batch is batch_in_epoch + 1 of this epoch (the generator wraps)
            save(done, epoch, batch_in_epoch + 1)
        if callback is not None:
            callback(done, {"loss": loss.item() / info.world_size, "lr": lr})
    bar.close()
    return {"model": model, "history": history, "out": out}


# ------------------------------------------------------------------------- evaluation


class _Shard(Dataset):
    """Every ``world``-th item from ``rank``: disjoint shards, no padding (exact metrics)."""

    def __init__(self, dataset: Dataset, rank: int, world: int) -> None:
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    amp: str = "off",
    progress: bool = False,
) -> dict[str, Any]:
    """Whole-image evaluation: confusion matrices over the split, summed over processes.

    Items are ``(image, label)`` or ``(image, label, context)``; with a context mask a
    second matrix counts only the context-dependent pixels (synthetic data).

    Returns:
        ``{"miou", "pixel_accuracy", "iou" (list per class), "meter"}`` plus
        ``"context_miou"``, ``"context_accuracy"``, ``"context_meter"`` with a mask.
    """
    device = torch.device(device)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    loader = DataLoader(
        _Shard(dataset, rank, world), batch_size=batch_size, num_workers=num_workers
    )
    meter = SegmentationMeter(num_classes, device=device)
    context_meter = SegmentationMeter(num_classes, device=device)
    with_context = False
    was_training = model.training
    model.eval()
    dtype = amp_dtype(amp, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    for batch in tqdm(loader, desc="evaluate", disable=not (progress and rank == 0)):
        image, label = batch[0].to(device), batch[1].to(device)
        with autocast:
            pred = model(image).argmax(1)
        meter.update(pred, label)
        if len(batch) > 2:
            with_context = True
            context_meter.update(pred, label, batch[2].to(device))
    model.train(was_training)
    meter.all_reduce()
    result = {
        "miou": meter.miou(),
        "pixel_accuracy": meter.pixel_accuracy(),
        "iou": meter.iou().tolist(),
        "meter": meter,
    }
    if with_context:
        context_meter.all_reduce()
        result |= {
            "context_miou": context_meter.miou(),
            "context_accuracy": context_meter.pixel_accuracy(),
            "context_meter": context_meter,
        }
    return result


# ----------------------------------------------------------------------------- CLI


def _flag_type(field: dataclasses.Field):
    """argparse type of a config field (from its default)."""
    default = field.default_factory() if callable(field.default_factory) else field.default
    if isinstance(default, bool):
        return None
    if isinstance(default, list):
        return float if isinstance(default[0], float) else int
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if field.name in ("train_subset", "val_subset", "rates"):
        return int
    return str


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dgmn-ref train",
        description="Train the DGMN segmentation model (paper Appendix A.2.2 schedule). "
        "Settings: defaults < --config FILE < flags; printed at start and saved as "
        "OUT/config.json.",
    )
    p.add_argument("--config", help="a JSON file of settings (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--evaluate", action="store_true", help="evaluate on val at the end")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _flag_type(f)
        # choices are checked by TrainConfig.check, whose message names value and choices
        hint = f"one of {', '.join(map(str, CHOICES[f.name]))}" if f.name in CHOICES else None
        if kind is None:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name in ("crop_size", "scale_range", "rates"):
            p.add_argument(flag, type=kind, nargs="+", default=None, metavar="N")
        else:
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=hint)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values = TrainConfig.from_file(args.config).to_dict()
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    if values.get("crop_size") and len(values["crop_size"]) == 1:
        values["crop_size"] = values["crop_size"] * 2
    if args.resume and not args.config:
        saved = Path(values.get("out", TrainConfig.out)) / CONFIG
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: no {CONFIG} in {saved.parent} to resume from")
        # flags not given on the command line come from the run
        values = {**json.loads(saved.read_text()), **values}
    return TrainConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref train``: returns 0 on success, 2 on a bad setting (message on stderr)."""
    args = train_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"dgmn-ref train: error: {err}", file=sys.stderr)
        return 2
    if args.evaluate and int(os.environ.get("RANK", "0")) == 0:
        _print_evaluation(cfg, result["model"], "val", Path(cfg.out))
    return 0


def _print_evaluation(cfg: TrainConfig, model: nn.Module, split: str, out: Path | None) -> dict:
    device = next(model.parameters()).device
    metrics = evaluate(
        model,
        build_dataset(cfg, split),
        cfg.num_classes(),
        device=device,
        amp=cfg.amp,
        progress=cfg.progress,
    )
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    summary = {k: v for k, v in metrics.items() if not k.endswith("meter")}
    if rank0:
        print(metrics["meter"].table(cfg.class_names(), title=f"{cfg.dataset} {split}"))
        if "context_miou" in metrics:
            print(
                f"context pixels: mIoU {100 * metrics['context_miou']:.2f}  "
                f"accuracy {100 * metrics['context_accuracy']:.2f}"
            )
        if out is not None:
            (out / f"eval_{split}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref evaluate RUN``: mIoU of a trained run on a split (table on stdout,
    ``RUN/eval_<split>.json``)."""
    p = argparse.ArgumentParser(prog="dgmn-ref evaluate", description=evaluate_main.__doc__)
    p.add_argument("run", help="a run folder (with checkpoint.pt and config.json) or a .pt")
    p.add_argument("--root", help="dataset root (default: the one the run was trained on)")
    p.add_argument("--split", default="val")
    p.add_argument("--subset", type=int, help="evaluate the first N images")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=AMP_MODES, default="off")
    p.add_argument("--impl", choices=("fast", "reference"))
    args = p.parse_args(argv)
    try:
        state = load_run(args.run)
        values = state["config"] | {"device": args.device, "amp": args.amp, "pretrained": None}
        if args.root:
            values["root"] = args.root
        if args.impl:
            values["impl"] = args.impl
        if args.subset is not None:
            values["val_subset"] = args.subset
        cfg = TrainConfig.from_dict(values).check()
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        model.to(resolve_device(cfg.device))
        run = Path(args.run)
        _print_evaluation(cfg, model, args.split, run if run.is_dir() else run.parent)
    except (ValueError, FileNotFoundError) as err:
        print(f"dgmn-ref evaluate: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
