"""Writers of the real on-disk formats (Cityscapes PNGs, COCO instances json) and atomic folders.

Used by :mod:`dgmn_ref.data.synthetic` (and ``tests/voc_coco.py``) so that generated data is
read by exactly the loaders (and the official evaluation scripts) that read real data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from dgmn_ref.data.labels import COCO_CATEGORIES, ID_TO_LABEL
from dgmn_ref.runlock import remove_stale_tmp


@contextlib.contextmanager
def atomic_dir(root: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``root`` to fill; rename it to ``root`` on success.

    An interrupted generation leaves only a hidden ``.<name>.tmp-PID-*`` folder (removed on
    error, or by the next generation once process PID is gone), never a half dataset at
    ``root``. If ``root`` appeared meanwhile (a concurrent generator won) and ``overwrite``
    is false, the new copy is discarded.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(root.parent, root.name)  # left by generators killed before (kill -9)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if root.exists() and overwrite:
        trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(root, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not root.exists():
            raise


def write_cityscapes_frame(
    root: Path,
    split: str,
    city: str,
    stem: str,
    rgb: np.ndarray,
    label_ids: np.ndarray,
    instances: np.ndarray | None = None,
    context: np.ndarray | None = None,
) -> None:
    """Write one frame in the official layout (image, labelIds, color, instanceIds, context).

    Args:
        rgb: ``(h w 3)`` uint8.
        label_ids: ``(h w)`` uint8 Cityscapes labelIds.
        instances: ``(h w)`` int, 0 = no instance, k > 0 = object k (for ``instanceIds``:
            ``labelId * 1000 + k - 1`` on classes with instances, else ``labelId``).
        context: ``(h w)`` bool, written as ``*_gtFine_contextMask.png`` (0/1).
    """
    image_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(image_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    color_lut = np.zeros((256, 3), dtype=np.uint8)
    for label_id, label in ID_TO_LABEL.items():
        if label_id >= 0:
            color_lut[label_id] = label.color
    Image.fromarray(color_lut[label_ids]).save(gt_dir / f"{stem}_gtFine_color.png")
    if instances is not None:
        has_inst = np.array([ID_TO_LABEL.get(i, ID_TO_LABEL[0]).hasInstances for i in range(256)])
        inst_ids = label_ids.astype(np.int32)
        thing = has_inst[label_ids] & (instances > 0)
        inst_ids[thing] = label_ids[thing].astype(np.int32) * 1000 + instances[thing] - 1
        Image.fromarray(inst_ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    if context is not None:
        Image.fromarray(context.astype(np.uint8)).save(gt_dir / f"{stem}_gtFine_contextMask.png")


@dataclass
class CocoRecord:
    """One image with its instances: masks ``(n h w)`` bool, COCO category ids ``(n,)``."""

    file_name: str
    rgb: np.ndarray
    masks: np.ndarray
    category_ids: list[int]
    iscrowd: list[int] | None = None


def mask_to_rle(mask: np.ndarray) -> dict:
    """``(h w)`` bool -> COCO compressed RLE with a json-friendly ``str`` ``counts``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_coco_split(
    root: Path, split: str, records: Iterable[CocoRecord], jpeg_quality: int = 95
) -> Path:
    """Write ``root/<split>/*`` images and ``root/annotations/instances_<split>.json``.

    Segmentations are RLE made with ``pycocotools.mask.encode``; ``bbox`` (xywh) and ``area``
    come from pycocotools too, so they agree with what ``COCOeval`` computes. All 80 COCO
    categories are listed, like the real files. Returns the json path.
    """
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        path = root / split / rec.file_name
        if path.suffix.lower() in (".jpg", ".jpeg"):
            Image.fromarray(rec.rgb).save(path, quality=jpeg_quality)
        else:
            Image.fromarray(rec.rgb).save(path)
        h, w = rec.rgb.shape[:2]
        images.append({"id": image_id, "file_name": rec.file_name, "height": h, "width": w})
        crowd = rec.iscrowd or [0] * len(rec.category_ids)
        for mask, cat_id, is_crowd in zip(rec.masks, rec.category_ids, crowd, strict=True):
            if not mask.any():
                continue
            rle = mask_to_rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cat_id),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(is_crowd),
                }
            )
    categories = [{"id": i, "name": n, "supercategory": ""} for i, n in COCO_CATEGORIES]
    data = {
        "info": {"description": f"dgmn_ref generated {split}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    json_path = root / "annotations" / f"instances_{split}.json"
    json_path.write_text(json.dumps(data))
    return json_path
