"""Evaluation: whole-image mIoU over a split, summed over the processes (sec. 4.1).

The confusion matrices of every process are all-reduced, so the metrics are those of the
whole split. On the synthetic data a second matrix counts only the pixels whose class
needs context (``data/README.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dgmn_ref.metrics import SegmentationMeter
from dgmn_ref.training.config import TrainConfig
from dgmn_ref.training.distributed import Shard, autocast, rank_and_world
from dgmn_ref.training.loop import build_dataset

__all__ = ["evaluate", "report_evaluation"]


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


def report_evaluation(
    cfg: TrainConfig, model: nn.Module, split: str, out: Path | None
) -> dict[str, Any]:
    """Evaluate ``model`` on ``split`` of ``cfg``'s data; rank 0 prints the per-class table
    and writes ``out/eval_<split>.json``. Returns the metrics without the meters."""
    device = next(model.parameters()).device
    metrics = evaluate(
        model,
        build_dataset(cfg, split),
        cfg.num_classes(),
        device=device,
        amp=cfg.amp,
        progress=cfg.progress,
    )
    summary = {k: v for k, v in metrics.items() if not k.endswith("meter")}
    if rank_and_world()[0] == 0:
        print(metrics["meter"].table(cfg.class_names(), title=f"{cfg.dataset} {split}"))
        if "context_miou" in metrics:
            print(
                f"context pixels: mIoU {100 * metrics['context_miou']:.2f}  "
                f"accuracy {100 * metrics['context_accuracy']:.2f}"
            )
        if out is not None:
            (out / f"eval_{split}.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
