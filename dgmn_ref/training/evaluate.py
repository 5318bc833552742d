"""Evaluation: whole-image mIoU over a split, summed over the processes (sec. 4.1).

The confusion matrices of every process are all-reduced, so the metrics are those of the
whole split. On the synthetic data a second matrix counts only the pixels whose class
needs context (``data/README.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dgmn_ref.metrics import SegmentationMeter
from dgmn_ref.training.build import build_dataset
from dgmn_ref.training.config import TrainConfig
from dgmn_ref.training.distributed import Shard, autocast, rank_and_world

__all__ = ["eval_file_name", "evaluate", "report_evaluation"]


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
    rank, world = rank_and_world()
    loader = DataLoader(Shard(dataset, rank, world), batch_size=batch_size, num_workers=num_workers)
    meter = SegmentationMeter(num_classes, device=device)
    context_meter = SegmentationMeter(num_classes, device=device)
    with_context = False
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc="evaluate", disable=not (progress and rank == 0)):
        image, label = batch[0].to(device), batch[1].to(device)
        with autocast(amp, device):
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


def eval_file_name(split: str, subset: int | None) -> str:
    """``eval_<split>.json``, or ``eval_<split>_subset<N>.json`` for the first N images,
    so a subset never replaces the full result.

    Example:
        >>> eval_file_name("val", None), eval_file_name("val", 4)
        ('eval_val.json', 'eval_val_subset4.json')
    """
    return f"eval_{split}.json" if subset is None else f"eval_{split}_subset{subset}.json"


def report_evaluation(
    cfg: TrainConfig, model: nn.Module, split: str, out: Path | None
) -> dict[str, Any]:
    """Evaluate ``model`` on ``split`` of ``cfg``'s data (the first ``cfg.val_subset``
    images if set); rank 0 prints the per-class table and writes ``out/``
    :func:`eval_file_name` (atomically). Returns the metrics without the meters, plus the
    split, the subset and the number of images."""
    device = next(model.parameters()).device
    dataset = build_dataset(cfg, split)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {cfg.dataset} at {cfg.root} has no images")
    metrics = evaluate(
        model, dataset, cfg.num_classes(), device=device, amp=cfg.amp, progress=cfg.progress
    )
    summary = {"split": split, "subset": cfg.val_subset, "images": len(dataset)}
    summary |= {k: v for k, v in metrics.items() if not k.endswith("meter")}
    if rank_and_world()[0] == 0:
        print(metrics["meter"].table(cfg.class_names(), title=f"{cfg.dataset} {split}"))
        if "context_miou" in metrics:
            print(
                f"context pixels: mIoU {100 * metrics['context_miou']:.2f}  "
                f"accuracy {100 * metrics['context_accuracy']:.2f}"
            )
        if out is not None:
            path = out / eval_file_name(split, cfg.val_subset)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            os.replace(tmp, path)
            print(f"wrote {path}")
    return summary
