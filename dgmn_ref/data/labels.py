"""Label tables: the Cityscapes classes (Cordts et al., 2016) and the 80 COCO things.

DGMN (Zhang et al., CVPR 2020), Appendix A.2.1: Cityscapes is evaluated on 19 classes
("trainIds"), COCO 2017 on 80 object classes. This module is our own copy of the Cityscapes
table of ``cityscapesscripts.helpers.labels`` (tested equal to it in
``tests/test_data_cityscapes.py``) so the runtime package does not need cityscapesScripts.

Ids are stored in PNGs as ``labelIds`` (0..33); networks are trained on ``trainIds`` (0..18,
255 = ignore). ``IGNORE_INDEX`` is the value every loader and metric uses for "not evaluated".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

IGNORE_INDEX = 255
NUM_CITYSCAPES_CLASSES = 19


class Label(NamedTuple):
    """One row of the Cityscapes label table (same fields as cityscapesScripts)."""

    name: str
    id: int
    trainId: int  # field names as in cityscapesScripts
    category: str
    categoryId: int
    hasInstances: bool
    ignoreInEval: bool
    color: tuple[int, int, int]


# fmt: off
CITYSCAPES_LABELS: tuple[Label, ...] = (
    #     name                    id  trainId category        catId inst   ignore  color
    Label("unlabeled",             0, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("ego vehicle",           1, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("rectification border",  2, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("out of roi",            3, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("static",                4, 255, "void",         0, False, True,  (0, 0, 0)),
    Label("dynamic",               5, 255, "void",         0, False, True,  (111, 74, 0)),
    Label("ground",                6, 255, "void",         0, False, True,  (81, 0, 81)),
    Label("road",                  7,   0, "flat",         1, False, False, (128, 64, 128)),
    Label("sidewalk",              8,   1, "flat",         1, False, False, (244, 35, 232)),
    Label("parking",               9, 255, "flat",         1, False, True,  (250, 170, 160)),
    Label("rail track",           10, 255, "flat",         1, False, True,  (230, 150, 140)),
    Label("building",             11,   2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall",                 12,   3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence",                13,   4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail",           14, 255, "construction", 2, False, True,  (180, 165, 180)),
    Label("bridge",               15, 255, "construction", 2, False, True,  (150, 100, 100)),
    Label("tunnel",               16, 255, "construction", 2, False, True,  (150, 120, 90)),
    Label("pole",                 17,   5, "object",       3, False, False, (153, 153, 153)),
    Label("polegroup",            18, 255, "object",       3, False, True,  (153, 153, 153)),
    Label("traffic light",        19,   6, "object",       3, False, False, (250, 170, 30)),
    Label("traffic sign",         20,   7, "object",       3, False, False, (220, 220, 0)),
    Label("vegetation",           21,   8, "nature",       4, False, False, (107, 142, 35)),
    Label("terrain",              22,   9, "nature",       4, False, False, (152, 251, 152)),
    Label("sky",                  23,  10, "sky",          5, False, False, (70, 130, 180)),
    Label("person",               24,  11, "human",        6, True,  False, (220, 20, 60)),
    Label("rider",                25,  12, "human",        6, True,  False, (255, 0, 0)),
    Label("car",                  26,  13, "vehicle",      7, True,  False, (0, 0, 142)),
    Label("truck",                27,  14, "vehicle",      7, True,  False, (0, 0, 70)),
    Label("bus",                  28,  15, "vehicle",      7, True,  False, (0, 60, 100)),
    Label("caravan",              29, 255, "vehicle",      7, True,  True,  (0, 0, 90)),
    Label("trailer",              30, 255, "vehicle",      7, True,  True,  (0, 0, 110)),
    Label("train",                31,  16, "vehicle",      7, True,  False, (0, 80, 100)),
    Label("motorcycle",           32,  17, "vehicle",      7, True,  False, (0, 0, 230)),
    Label("bicycle",              33,  18, "vehicle",      7, True,  False, (119, 11, 32)),
    Label("license plate",        -1,  -1, "vehicle",      7, False, True,  (0, 0, 142)),
)
# fmt: on

NAME_TO_LABEL: dict[str, Label] = {label.name: label for label in CITYSCAPES_LABELS}
ID_TO_LABEL: dict[int, Label] = {label.id: label for label in CITYSCAPES_LABELS}
VALID_LABEL_IDS: frozenset[int] = frozenset(
    label.id for label in CITYSCAPES_LABELS if label.id >= 0
)

# The 19 evaluated classes in trainId order; the first label with a trainId is its inverse image
# (the same rule as cityscapesScripts' ``trainId2label``).
TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted(
        (lab for lab in CITYSCAPES_LABELS if 0 <= lab.trainId < IGNORE_INDEX),
        key=lambda lab: lab.trainId,
    )
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name for lab in TRAIN_LABELS)


def _label_to_train_lut() -> np.ndarray:
    """A 256-entry lookup table labelId -> trainId (unknown ids -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0:
            lut[label.id] = label.trainId if label.trainId >= 0 else IGNORE_INDEX
    return lut


LABEL_TO_TRAIN_LUT: np.ndarray = _label_to_train_lut()
TRAIN_TO_LABEL_LUT: np.ndarray = np.zeros(256, dtype=np.uint8)  # ignore (255) -> unlabeled (0)
TRAIN_TO_LABEL_LUT[: len(TRAIN_LABELS)] = [lab.id for lab in TRAIN_LABELS]
PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)  # trainId -> RGB, ignore is black
PALETTE[: len(TRAIN_LABELS)] = [lab.color for lab in TRAIN_LABELS]


def label_ids_to_train_ids(label_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map Cityscapes labelIds to trainIds (19 classes, everything else -> 255).

    Args:
        label_ids: integer array of any shape, values in 0..33.

    Returns:
        the same type and shape, trainIds (uint8 for numpy, int64 for torch).

    Example:
        >>> label_ids_to_train_ids(np.array([7, 26, 0]))
        array([  0,  13, 255], dtype=uint8)
    """
    if isinstance(label_ids, torch.Tensor):
        return torch.from_numpy(LABEL_TO_TRAIN_LUT).long()[label_ids.long()]
    return LABEL_TO_TRAIN_LUT[np.asarray(label_ids)]


def train_ids_to_label_ids(train_ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map trainIds back to labelIds (255 -> 0 "unlabeled"), e.g. for cityscapesScripts.

    Example:
        >>> train_ids_to_label_ids(np.array([0, 13, 255]))
        array([ 7, 26,  0], dtype=uint8)
    """
    if isinstance(train_ids, torch.Tensor):
        return torch.from_numpy(TRAIN_TO_LABEL_LUT).long()[train_ids.long()]
    return TRAIN_TO_LABEL_LUT[np.asarray(train_ids)]


def colorize(train_ids: np.ndarray | torch.Tensor, palette: np.ndarray = PALETTE) -> np.ndarray:
    """Colour a trainId map with the Cityscapes palette (ignore -> black).

    Args:
        train_ids: integers in 0..255, shape ``(*s)`` e.g. ``h w`` or ``b h w``.
        palette: ``(256, 3)`` uint8 table; ``COCO_PALETTE`` for COCO semantic maps.

    Returns:
        uint8 RGB, shape ``(*s, 3)``.
    """
    if isinstance(train_ids, torch.Tensor):
        train_ids = train_ids.detach().cpu().numpy()
    return palette[np.asarray(train_ids).astype(np.int64) & 255]


# COCO 2017 "things": (category id, name), ids as in instances_*.json (with gaps).
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip
COCO_NAME_TO_ID: dict[str, int] = {name: cat_id for cat_id, name in COCO_CATEGORIES}
# Semantic COCO maps: 0 = background, 1..80 = things in category-id order, 255 = crowd/ignore.
COCO_SEMANTIC_CLASSES: tuple[str, ...] = ("background",) + tuple(n for _, n in COCO_CATEGORIES)


def _coco_palette() -> np.ndarray:
    """A fixed, well-spread palette for the 81 COCO semantic classes (background black)."""
    rng = np.random.default_rng(0)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1:81] = rng.integers(40, 256, size=(80, 3), dtype=np.uint8)
    return palette


COCO_PALETTE: np.ndarray = _coco_palette()
