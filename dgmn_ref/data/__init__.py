"""Datasets of DGMN, Appendix A.2: Cityscapes, COCO 2017 and a synthetic default.

See ``data/README.md`` for the layouts and the design of the synthetic data.
"""

from dgmn_ref.data.cityscapes import CityscapesDataset, list_cityscapes, save_prediction
from dgmn_ref.data.coco import CocoDetection, CocoSemantic, collate_detection, load_coco
from dgmn_ref.data.labels import (
    CITYSCAPES_CLASSES,
    COCO_PALETTE,
    COCO_SEMANTIC_CLASSES,
    IGNORE_INDEX,
    NUM_CITYSCAPES_CLASSES,
    PALETTE,
    colorize,
    label_ids_to_train_ids,
    train_ids_to_label_ids,
)
from dgmn_ref.data.synthetic import (
    ensure_synthetic,
    ensure_synthetic_coco,
    make_data,
    make_synthetic_cityscapes,
    make_synthetic_coco,
)
from dgmn_ref.data.transforms import TrainTransform, denormalize, normalize

__all__ = [
    "CITYSCAPES_CLASSES",
    "COCO_PALETTE",
    "COCO_SEMANTIC_CLASSES",
    "IGNORE_INDEX",
    "NUM_CITYSCAPES_CLASSES",
    "PALETTE",
    "CityscapesDataset",
    "CocoDetection",
    "CocoSemantic",
    "TrainTransform",
    "collate_detection",
    "colorize",
    "denormalize",
    "ensure_synthetic",
    "ensure_synthetic_coco",
    "label_ids_to_train_ids",
    "list_cityscapes",
    "load_coco",
    "make_data",
    "make_synthetic_cityscapes",
    "make_synthetic_coco",
    "normalize",
    "save_prediction",
    "train_ids_to_label_ids",
]
