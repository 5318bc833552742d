"""Cityscapes loader, label table, augmentations and synthetic generation (tmp_path fixtures)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dgmn_ref.data import cityscapes, labels, synthetic, transforms
from dgmn_ref.data.cityscapes import CityscapesDataset, save_prediction
from dgmn_ref.data.synthetic import ensure_synthetic, make_synthetic_cityscapes

SIZE = (48, 96)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("cs") / "cs", 9, 4, SIZE, seed=1)


def test_label_table_equals_cityscapesscripts():
    from cityscapesscripts.helpers import labels as cs

    assert [tuple(lab) for lab in labels.CITYSCAPES_LABELS] == [tuple(lab) for lab in cs.labels]
    assert labels.Label._fields == cs.Label._fields
    for train_id, lab in cs.trainId2label.items():
        if 0 <= train_id < 255:
            assert labels.TRAIN_TO_LABEL_LUT[train_id] == lab.id
            assert tuple(labels.PALETTE[train_id]) == lab.color
    for lab in cs.labels:
        if lab.id >= 0:
            assert labels.LABEL_TO_TRAIN_LUT[lab.id] == (lab.trainId if lab.trainId >= 0 else 255)


def test_id_conversions_and_palette():
    train = torch.arange(19)
    assert torch.equal(labels.label_ids_to_train_ids(labels.train_ids_to_label_ids(train)), train)
    assert labels.train_ids_to_label_ids(np.array([255]))[0] == 0
    rgb = labels.colorize(torch.tensor([[0, 13, 255]]))
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0].tolist() == [[128, 64, 128], [0, 0, 142], [0, 0, 0]]


def test_layout_and_items(root):
    for sub in ("leftImg8bit/train/alpha", "gtFine/val/delta", "gtFine/val/echo"):
        assert (root / sub).is_dir()
    stem = "alpha_000000_000019"
    for suffix in ("labelIds", "color", "instanceIds", "contextMask"):
        assert (root / f"gtFine/train/alpha/{stem}_gtFine_{suffix}.png").is_file()
    ds = CityscapesDataset(root, "val", return_context=True)
    image, label, context = ds[0]
    assert image.shape == (3, *SIZE) and image.dtype == torch.float32
    assert label.shape == SIZE and label.dtype == torch.int64
    assert context.shape == SIZE and context.dtype == torch.bool and context.any()
    assert set(label.unique().tolist()) <= set(range(19)) | {255}
    # ImageNet normalisation: undoing it gives the PNG back
    rgb = np.array(Image.open(ds.files[0].image))
    back = (transforms.denormalize(image) * 255).round().byte()
    assert torch.equal(back, torch.from_numpy(rgb).permute(2, 0, 1))
    # context pixels are exactly the car/truck/bus mystery boxes
    assert set(label[context].unique().tolist()) <= {13, 14, 15}
    assert len(CityscapesDataset(root, "val")[0]) == 2


def test_subsets(root, tmp_path):
    assert len(CityscapesDataset(root, "train")) == 9
    assert len(CityscapesDataset(root, "train", subset=4)) == 4
    by_city = CityscapesDataset(root, "train", cities=["bravo"])
    assert len(by_city) == 3 and {f.city for f in by_city.files} == {"bravo"}
    lst = tmp_path / "list.txt"
    lst.write_text(
        "# two frames\nleftImg8bit/train/charlie/charlie_000005_000019_leftImg8bit.png\n\n"
        "alpha_000000_000019\n"
    )
    listed = CityscapesDataset(root, "train", list_file=lst)
    assert [f.stem for f in listed.files] == ["charlie_000005_000019", "alpha_000000_000019"]
    with pytest.raises(ValueError, match="zulu"):
        CityscapesDataset(root, "train", cities=["zulu"])
    lst.write_text("alpha_000099_000019\n")
    with pytest.raises(FileNotFoundError, match="alpha_000099_000019"):
        CityscapesDataset(root, "train", list_file=lst)


@pytest.mark.parametrize("crop", [(40, 40), (64, 128)])
def test_augmentation_reproducible_and_padded(root, crop):
    tf = transforms.TrainTransform(crop_size=crop, scale_range=(0.5, 2.0), flip=True)
    ds = CityscapesDataset(root, "train", transform=tf, return_context=True, seed=3)
    a, b = ds[2], ds[2]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (3, *crop) and a[1].shape == crop and a[2].shape == crop
    ds.set_epoch(1)
    assert any(not torch.equal(x, y) for x, y in zip(a, ds[2], strict=True))
    # padding: image 0 (the mean), label 255, context False
    sample = {
        "image": torch.ones(3, 4, 4),
        "label": torch.zeros(4, 4, dtype=torch.long),
        "context": torch.ones(4, 4, dtype=torch.bool),
    }
    out = transforms.random_crop(sample, torch.Generator().manual_seed(0), (6, 7))
    assert out["image"][:, 4:].abs().sum() == 0 and out["image"][:, :, 4:].abs().sum() == 0
    assert (out["label"][4:] == 255).all() and (out["label"][:, 4:] == 255).all()
    assert not out["context"][4:].any() and out["image"][:, :4, :4].eq(1).all()


def test_scale_keeps_label_values(root):
    ds = CityscapesDataset(root, "train")
    sample = ds.load(0)
    out = transforms.random_scale(sample, torch.Generator().manual_seed(0), (1.7, 1.7))
    assert out["label"].shape == (round(SIZE[0] * 1.7), round(SIZE[1] * 1.7))
    assert set(out["label"].unique().tolist()) <= set(sample["label"].unique().tolist())
    flipped = transforms.random_hflip(sample, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(flipped["label"], sample["label"].flip(-1))


def test_errors_name_the_file(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CityscapesDataset(tmp_path / "nowhere")
    bad = make_synthetic_cityscapes(tmp_path / "bad", 2, 1, SIZE)
    stem = "alpha_000000_000019"
    label_path = bad / "gtFine/train/alpha" / f"{stem}_gtFine_labelIds.png"
    label = np.asarray(Image.open(label_path)).copy()
    label[0, 0] = 77  # not a Cityscapes labelId
    Image.fromarray(label).save(label_path)
    with pytest.raises(ValueError, match=r"unknown Cityscapes labelIds \[77\].*labelIds\.png"):
        CityscapesDataset(bad, "train")[0]
    Image.fromarray(label[:-1].clip(0, 33)).save(label_path)
    with pytest.raises(ValueError, match="size mismatch.*leftImg8bit.png"):
        CityscapesDataset(bad, "train")[0]
    (bad / "gtFine/train/bravo/bravo_000001_000019_gtFine_contextMask.png").unlink()
    with pytest.raises(FileNotFoundError, match="bravo_000001_000019_gtFine_contextMask"):
        CityscapesDataset(bad, "train", return_context=True)[1]
    label_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{stem}_gtFine_labelIds.png"):
        CityscapesDataset(bad, "train")


def test_save_prediction_writes_label_ids(tmp_path):
    path = save_prediction(torch.tensor([[0, 13], [18, 10]]), "x_000001_000019", tmp_path)
    assert path.name == "x_000001_000019_pred_labelIds.png"
    assert np.asarray(Image.open(path)).tolist() == [[7, 26], [33, 23]]


def test_generation_deterministic_idempotent_atomic(tmp_path, monkeypatch):
    a = make_synthetic_cityscapes(tmp_path / "a", 3, 1, SIZE, seed=5)
    b = make_synthetic_cityscapes(tmp_path / "b", 5, 1, SIZE, seed=5)
    name = "leftImg8bit/train/charlie/charlie_000002_000019_leftImg8bit.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()  # frame i depends on (seed, i)
    with pytest.raises(FileExistsError):
        make_synthetic_cityscapes(a, 3, 1, SIZE)
    mtime = (a / name).stat().st_mtime_ns
    assert ensure_synthetic(a) == a and (a / name).stat().st_mtime_ns == mtime

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_cityscapes_frame", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(tmp_path / "c", n_train=2, n_val=1, size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no half dataset, no tmp
    monkeypatch.undo()
    c = ensure_synthetic(tmp_path / "c", n_train=2, n_val=1, size=SIZE)
    assert len(cityscapes.list_cityscapes(c, "train")) == 2
