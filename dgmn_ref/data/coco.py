"""COCO 2017 (Lin et al., 2014) for DGMN's detection / instance segmentation, Appendix A.2.1.

Standard layout: ``root/annotations/instances_<split>.json`` and ``root/<split>/*.jpg``, read
with pycocotools. Two views of the same files:

* :class:`CocoSemantic`: per-pixel maps over the 80 things: 0 = background, 1..80 = categories
  in category-id order, 255 = crowd (ignored);
* :class:`CocoDetection`: a Mask R-CNN style target dict (boxes xyxy, labels 1..80, masks),
  for the planned detection head (Table 2's Mask R-CNN); no model here uses it yet.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from dgmn_ref.data.check import DataError, coco_schema_problems
from dgmn_ref.data.cityscapes import read_rgb
from dgmn_ref.data.labels import IGNORE_INDEX
from dgmn_ref.data.transforms import Transform, normalize, sample_generator, to_tensor


def load_coco(annotation_file: str | Path) -> COCO:
    """``pycocotools.coco.COCO`` without its prints; names the file if it is missing."""
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(
            f"missing COCO annotation file {annotation_file}; expected the layout "
            "root/annotations/instances_<split>.json with images in root/<split>/"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"malformed JSON in COCO annotation file {annotation_file}: {err.msg} at line "
            f"{err.lineno} column {err.colno}"
        ) from err


def ann_to_mask(coco: COCO, ann: dict) -> np.ndarray:
    """``(h w)`` uint8 mask of one annotation (quiet about pycocotools' numpy-2 warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco.annToMask(ann)


class _CocoBase(Dataset):
    """Shared indexing: files, category mapping, subsets."""

    def __init__(
        self,
        root: str | Path,
        split: str = "val2017",
        *,
        subset: int | None = None,
        categories: Sequence[str | int] | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"COCO root {self.root} does not exist; expected {self.root}/annotations/"
                f"instances_{split}.json and {self.root}/{split}/"
            )
        self.split = split
        self.image_dir = self.root / split
        self.annotation_file = self.root / "annotations" / f"instances_{split}.json"
        self.coco = load_coco(self.annotation_file)
        errors = [
            p for p in coco_schema_problems(self.annotation_file, self.coco.dataset) if p.error
        ]
        if errors:
            raise DataError(errors)
        self.seed = seed
        self.epoch = 0
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        self.cat_ids: list[int] = [c["id"] for c in cats]
        self.class_names: tuple[str, ...] = ("background",) + tuple(c["name"] for c in cats)
        self.cat_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat: dict[int, int] = {v: k for k, v in self.cat_to_label.items()}
        image_ids = sorted(self.coco.getImgIds())
        if categories is not None:
            by_name = {c["name"]: c["id"] for c in cats}
            wanted = set()
            for c in categories:
                if c not in by_name and c not in self.cat_to_label:
                    raise ValueError(f"unknown COCO category {c!r} in {self.annotation_file}")
                wanted.add(by_name.get(c, c))
            keep = set()
            for cid in wanted:  # union: images holding any of the categories
                keep.update(self.coco.getImgIds(catIds=[cid]))
            image_ids = [i for i in image_ids if i in keep]
        if subset is not None:
            image_ids = image_ids[:subset]
        self.image_ids: list[int] = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _image(self, index: int) -> tuple[np.ndarray, int, list[dict]]:
        image_id = self.image_ids[index]
        info = self.coco.loadImgs(image_id)[0]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"missing image {path} (listed in {self.annotation_file})")
        rgb = read_rgb(path)
        if rgb.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"size mismatch: image {path} is {rgb.shape[:2]} (h, w) but "
                f"{self.annotation_file} says {(info['height'], info['width'])}"
            )
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=None))
        for ann in anns:
            if ann["category_id"] not in self.cat_to_label:
                raise ValueError(
                    f"annotation {ann['id']} of {self.annotation_file} has unknown category_id "
                    f"{ann['category_id']}; expected one of the file's categories"
                )
        return rgb, image_id, anns

    def semantic_mask(self, anns: list[dict], h: int, w: int) -> np.ndarray:
        """``(h w)`` uint8: 0 background, 1..80 things, 255 crowd; small objects painted last."""
        mask = np.zeros((h, w), dtype=np.uint8)
        for ann in sorted(anns, key=lambda a: -a["area"]):
            m = ann_to_mask(self.coco, ann).astype(bool)
            mask[m] = (
                IGNORE_INDEX if ann.get("iscrowd", 0) else self.cat_to_label[ann["category_id"]]
            )
        return mask


class CocoSemantic(_CocoBase):
    """COCO as semantic segmentation over the 80 things: items ``(image, label)``.

    Args:
        root: folder with ``annotations/`` and ``<split>/``.
        split: e.g. ``"val2017"``.
        transform: ``f(sample, generator) -> sample`` such as ``TrainTransform``.
        subset: keep the first ``subset`` images (sorted by id).
        categories: keep the images holding any of these categories (names or ids); the
            labels still cover all 80 categories.

    Returns per item:
        image ``(3 h w)`` float32, ImageNet-normalised; label ``(h w)`` int64 in 0..80 or 255.
    """

    def __init__(
        self, root: str | Path, split: str = "val2017", *, transform: Transform | None = None, **kw
    ) -> None:
        super().__init__(root, split, **kw)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, _, anns = self._image(index)
        label = self.semantic_mask(anns, *rgb.shape[:2])
        sample = {
            "image": normalize(to_tensor(rgb)),
            "label": torch.from_numpy(label.astype(np.int64)),
        }
        if self.transform is not None:
            sample = self.transform(sample, sample_generator(self.seed, self.epoch, index))
        return sample["image"], sample["label"]


class CocoDetection(_CocoBase):
    """COCO instances as Mask R-CNN targets: items ``(image, target)``, for the planned
    detection head (tested on real annotations, not yet used by a model).

    ``target`` holds ``boxes (n 4)`` float32 xyxy in pixels, ``labels (n,)`` int64 in 1..80,
    ``masks (n h w)`` uint8, ``image_id`` int. Crowd annotations are left out (as in Mask
    R-CNN training); ``COCOeval`` still sees them through the annotation file.

    Args:
        hflip: random horizontal flip (p = 0.5, boxes and masks flipped too), the only
            augmentation of the Mask R-CNN recipe; seeded per item like the Cityscapes loader.
    """

    def __init__(
        self, root: str | Path, split: str = "val2017", *, hflip: bool = False, **kw
    ) -> None:
        super().__init__(root, split, **kw)
        self.hflip = hflip

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        rgb, image_id, anns = self._image(index)
        h, w = rgb.shape[:2]
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        masks = np.stack([ann_to_mask(self.coco, a) for a in anns]) if anns else np.zeros((0, h, w))
        target = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "masks": torch.from_numpy(masks.astype(np.uint8)),
            "image_id": image_id,
        }
        image = normalize(to_tensor(rgb))
        if self.hflip:
            g = sample_generator(self.seed, self.epoch, index)
            if torch.rand((), generator=g).item() < 0.5:
                image, target["masks"] = image.flip(-1), target["masks"].flip(-1)
                target["boxes"] = torch.stack(
                    [w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1
                )
        return image, target


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    """DataLoader ``collate_fn`` for :class:`CocoDetection` (images of different sizes);
    for the planned detection head."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
