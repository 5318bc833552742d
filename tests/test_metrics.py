"""Confusion-matrix metrics against a float64 loop and against cityscapesScripts."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dgmn_ref.data.cityscapes import CityscapesDataset, save_prediction
from dgmn_ref.data.labels import CITYSCAPES_CLASSES
from dgmn_ref.data.synthetic import make_synthetic_cityscapes
from dgmn_ref.metrics import (
    SegmentationMeter,
    confusion_matrix,
    format_iou_table,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)


def expected_confusion(pred, target, n, ignore=255, mask=None):
    cm = np.zeros((n, n), dtype=np.float64)
    for i, (p, t) in enumerate(
        zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True)
    ):
        if t != ignore and (mask is None or mask.flatten()[i]):
            cm[t, p] += 1
    return cm


@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("with_mask", [False, True])
def test_confusion_matrix_matches_loop(batch, with_mask):
    g = torch.Generator().manual_seed(batch)
    n = 5
    target = torch.randint(0, n, (batch, 7, 9), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    logits = torch.randn(batch, n, 7, 9, generator=g)
    mask = torch.rand(target.shape, generator=g) < 0.5 if with_mask else None
    cm = confusion_matrix(logits, target, n, mask=mask)
    ref = expected_confusion(logits.argmax(1), target, n, mask=mask)
    assert cm.dtype == torch.int64 and np.array_equal(cm.numpy(), ref)
    meter = SegmentationMeter(n)
    for b in range(batch):
        meter.update(
            logits[b : b + 1], target[b : b + 1], None if mask is None else mask[b : b + 1]
        )
    meter.all_reduce()  # no-op without torch.distributed
    assert torch.equal(meter.matrix, cm)


def test_iou_conventions():
    # class 0: tp 2, fp 1, fn 1; class 1: predicted only (IoU 0); class 2: absent (nan)
    cm = torch.tensor([[2, 1, 0], [1, 0, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(2 / 4) and iou[1] == 0 and math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx(0.25)
    assert mean_iou(cm, classes=[0]) == pytest.approx(0.5)
    assert pixel_accuracy(cm) == pytest.approx(0.5)
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.long)))
    table = format_iou_table(cm, ["a", "b", "c"], title="demo")
    assert "demo" in table and "50.00" in table and "25.00" in table
    assert table.splitlines()[5].split() == ["c", "-"]
    with pytest.raises(ValueError, match="2 class names"):
        format_iou_table(cm, ["a", "b"])


def test_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="target ids"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)
    with pytest.raises(ValueError, match="predicted ids"):
        confusion_matrix(torch.tensor([9]), torch.tensor([0]), 3)


def test_miou_equals_cityscapesscripts(tmp_path, monkeypatch):
    root = make_synthetic_cityscapes(tmp_path / "cs", 1, 6, (48, 96), seed=2)
    results = tmp_path / "results"
    ds = CityscapesDataset(root, "val", return_context=True)
    g = torch.Generator().manual_seed(0)
    meter, context_meter = SegmentationMeter(19), SegmentationMeter(19)
    for i in range(len(ds)):
        _, label, context = ds[i]
        pred = label.clone()
        pred[pred == 255] = 0
        noise = torch.rand(label.shape, generator=g) < 0.3
        # noise over trainIds 0..15: wall/fence/... are predicted but absent (IoU 0);
        # train/motorcycle/bicycle (16..18) are neither predicted nor present (nan, left out)
        pred[noise] = torch.randint(0, 16, (int(noise.sum()),), generator=g)
        meter.update(pred[None], label[None])
        context_meter.update(pred[None], label[None], context[None])
        save_prediction(pred, ds.files[i].stem, results)

    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(results))
    ev = importlib.reload(
        importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    )
    ev.args.evalInstLevelScore = False  # uses np.in1d, removed in numpy 2
    ev.args.JSONOutput = False
    ev.args.quiet = True
    gts = [str(f.label) for f in ds.files]
    preds = [ev.getPrediction(ev.args, gt) for gt in gts]
    out = ev.evaluateImgLists(preds, gts, ev.args)
    assert meter.miou() == pytest.approx(out["averageScoreClasses"], abs=1e-6)
    ours = dict(zip(CITYSCAPES_CLASSES, meter.iou().tolist(), strict=True))
    for name, theirs in out["classScores"].items():
        if name in ours:
            assert (math.isnan(theirs) and math.isnan(ours[name])) or ours[name] == pytest.approx(
                theirs, abs=1e-9
            )
    assert [k for k, v in ours.items() if math.isnan(v)] == ["train", "motorcycle", "bicycle"]
    assert ours["wall"] == 0
    assert 0 < context_meter.pixel_accuracy() < 1
    assert np.asarray(Image.open(preds[0])).max() <= 33
