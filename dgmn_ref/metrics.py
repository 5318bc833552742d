"""Evaluation metrics of DGMN, Appendix A.2.1.

* Cityscapes: "the metric of mean Intersection over Union (mIoU) averaged over all classes",
  :math:`\\mathrm{IoU}_c = \\frac{TP_c}{TP_c + FP_c + FN_c}`, from a confusion matrix summed
  over the whole split (not averaged per image).
* COCO: box and mask AP computed by pycocotools' own ``COCOeval`` (never re-implemented here).

Convention (the same as cityscapesScripts' ``evalPixelLevelSemanticLabeling``): pixels whose
ground truth is ``ignore_index`` are dropped; a class that appears neither in the ground truth
nor in the predictions has IoU ``nan`` and is left out of the mean; a class that is predicted
but absent from the ground truth has IoU 0. ``tests/test_metrics.py`` checks our mIoU against
cityscapesScripts to 1e-6.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from einops import rearrange

from dgmn_ref.data.labels import IGNORE_INDEX

COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def confusion_matrix(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Count ``(ground truth, prediction)`` pairs: ``cm[t, p]``.

    Args:
        pred: ``(*s)`` class ids, e.g. ``b h w``, or logits ``(b c h w)`` (argmax over ``c``).
        target: ``(*s)`` class ids in ``0..num_classes-1`` or ``ignore_index``.
        num_classes: ``n``.
        mask: optional ``(*s)`` bool; only pixels where it is true count (e.g. the
            context-dependent pixels of the synthetic data).

    Returns:
        ``(n n)`` int64 on ``target``'s device; rows are ground truth, columns predictions.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 255]), 2).tolist()
        [[1, 0], [0, 1]]
    """
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    valid = target != ignore_index
    if mask is not None:
        valid &= mask.bool()
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"target ids {sorted(set(t.unique().tolist()))} outside 0..{num_classes - 1}"
        )
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(
            f"predicted ids {sorted(set(p.unique().tolist()))} outside 0..{num_classes - 1}"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return rearrange(counts, "(t p) -> t p", t=num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """``IoU_c = cm[c, c] / (row_c + col_c - cm[c, c])``, float64 ``(n,)``, nan if 0 / 0."""
    cm = cm.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor, classes: Sequence[int] | None = None) -> float:
    """Mean of the non-nan per-class IoUs (over ``classes`` if given, e.g. ``range(1, 81)``
    for COCO things without background); nan if none is defined."""
    iou = iou_per_class(cm)
    if classes is not None:
        iou = iou[list(classes)]
    iou = iou[~iou.isnan()]
    return float(iou.mean()) if iou.numel() else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels over counted pixels, ``trace(cm) / sum(cm)``; nan if nothing counted."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else math.nan


def format_iou_table(cm: torch.Tensor, class_names: Sequence[str], title: str = "") -> str:
    """A per-class IoU table (percent) with mIoU and pixel accuracy; nan classes print ``-``."""
    iou = iou_per_class(cm)
    if len(class_names) != iou.numel():
        raise ValueError(f"{len(class_names)} class names for a {iou.numel()}-class matrix")
    width = max(12, *(len(n) for n in class_names))
    lines = [title] if title else []
    lines += [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    for name, v in zip(class_names, iou.tolist(), strict=True):
        lines.append(f"{name:<{width}}  {'-' if math.isnan(v) else f'{100 * v:6.2f}':>7}")
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {100 * mean_iou(cm):7.2f}")
    lines.append(f"{'pixel acc.':<{width}}  {100 * pixel_accuracy(cm):7.2f}")
    return "\n".join(lines)


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; the state is one tensor for DDP.

    Example:
        >>> meter = SegmentationMeter(num_classes=2)
        >>> meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
        >>> meter.miou()
        0.25
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device=None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add a batch; shapes as in :func:`confusion_matrix`."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index, mask)
        self.matrix += cm.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def iou(self) -> torch.Tensor:
        return iou_per_class(self.matrix)

    def miou(self, classes: Sequence[int] | None = None) -> float:
        return mean_iou(self.matrix, classes)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)

    def table(self, class_names: Sequence[str], title: str = "") -> str:
        return format_iou_table(self.matrix, class_names, title)


# ---------------------------------------------------------------------------- COCO detection
# For the planned detection head (Table 2's Mask R-CNN): tested against pycocotools on real
# annotations, not yet used by a model of this package.


def detections_to_coco(
    predictions: Sequence[dict], label_to_cat: dict[int, int], mask_threshold: float = 0.5
) -> list[dict]:
    """Model outputs -> COCO result dicts (``bbox`` xywh, ``segmentation`` RLE, ``score``),
    for the planned detection head.

    Args:
        predictions: one dict per image: ``image_id``, ``boxes (n 4)`` xyxy, ``scores (n,)``,
            ``labels (n,)`` contiguous ids, optional ``masks (n h w)`` (bool, uint8 or
            probabilities thresholded at ``mask_threshold``).
        label_to_cat: contiguous id -> COCO category id (``CocoDetection.label_to_cat``).
    """
    from pycocotools import mask as mask_utils

    results = []
    for pred in predictions:
        boxes = torch.as_tensor(pred["boxes"], dtype=torch.float64).reshape(-1, 4)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = torch.as_tensor(pred["scores"]).tolist()
        labels = torch.as_tensor(pred["labels"]).tolist()
        masks = pred.get("masks")
        if masks is not None:
            masks = torch.as_tensor(masks)
            masks = (masks > mask_threshold) if masks.is_floating_point() else masks.bool()
            masks = masks.cpu().numpy().astype(np.uint8)
        for i, (box, score, label) in enumerate(zip(xywh, scores, labels, strict=True)):
            res = {
                "image_id": int(pred["image_id"]),
                "category_id": int(label_to_cat[int(label)]),
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[i]))
                rle["counts"] = rle["counts"].decode("ascii")
                res["segmentation"] = rle
            results.append(res)
    return results


def coco_evaluate(
    coco_gt,
    results: Sequence[dict],
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, float]]:
    """Run pycocotools' ``COCOeval`` and return ``{iou_type: {"AP": .., "AP50": .., ...}}``
    (for the planned detection head).

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or the path of an ``instances_*.json``.
        results: COCO result dicts (see :func:`detections_to_coco`).
        iou_types: ``"bbox"`` and/or ``"segm"``.
        image_ids: evaluate on these images only (default: all of ``coco_gt``).
        verbose: print COCOeval's summary.

    For ``segm`` the ``bbox`` field is dropped from the results so that the small / medium /
    large split uses mask areas (as detectron2 does). No results gives all-zero stats.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(coco_gt, str | Path):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(coco_gt))
    out = {}
    for iou_type in iou_types:
        dets = copy.deepcopy(list(results))
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)
        if not dets:
            out[iou_type] = dict.fromkeys(COCO_STAT_NAMES, 0.0)
            continue
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink:
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[iou_type] = {k: float(v) for k, v in zip(COCO_STAT_NAMES, ev.stats, strict=True)}
    return out
