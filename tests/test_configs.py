"""The presets in configs/: each loads and passes TrainConfig's checks; the medium presets are sized
for one GPU in an afternoon and name torchvision's ImageNet weights file for their depth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dgmn_ref.models import IMAGENET_WEIGHTS
from dgmn_ref.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_preset_loads_and_checks(path: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.from_file(path)
    if cfg.pretrained:
        assert Path(cfg.pretrained) == Path("weights") / IMAGENET_WEIGHTS[cfg.depth], (
            f"{path.name}: pretrained {cfg.pretrained!r}, not weights/{IMAGENET_WEIGHTS[cfg.depth]}"
        )
    # neither the datasets nor the weights are here: check() needs a folder and an existing file
    cfg.root = str(tmp_path)
    if cfg.pretrained:
        cfg.pretrained = str(tmp_path / Path(cfg.pretrained).name)
        Path(cfg.pretrained).write_bytes(b"")
    cfg.check()


@pytest.mark.parametrize("name", ["cityscapes_r101_dgmn_medium.json", "coco_r101_dgmn_medium.json"])
def test_medium_presets(name: str) -> None:
    cfg = TrainConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / name)
    # the default impl, which runs the fast kernels on the preset's feature maps
    from dgmn_ref.layer import resolve_impl

    h, w = (size // 8 for size in cfg.crop_size)
    assert cfg.impl == "auto"
    assert resolve_impl(cfg.impl, torch.empty(1, cfg.head_channels, h, w)) == "fast"
    assert cfg.train_subset is not None and 100 <= cfg.train_subset <= 1000  # a few hundred images
    assert 1000 <= cfg.iterations <= 10_000  # a few thousand iterations
    assert cfg.depth == 101 and cfg.pretrained
