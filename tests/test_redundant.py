"""The redundant-context task: the far district decides, no view within the gap does."""

from __future__ import annotations

import numpy as np
import pytest

from dgmn_ref.data.labels import NAME_TO_LABEL
from dgmn_ref.data.redundant import far_zone, min_context_distance, render_redundant_scene
from dgmn_ref.data.synthetic import CONTEXT_CLASSES, make_synthetic_cityscapes, renderer
from dgmn_ref.tools.context_check import cue_class, oracle_accuracies

CONTEXT_IDS = [NAME_TO_LABEL[n].id for n in CONTEXT_CLASSES]


def _scenes(n, size, seed=0):
    return [render_redundant_scene(np.random.default_rng([seed, i]), size) for i in range(n)]


def _side(scene) -> bool:
    return bool(np.nonzero(scene.context)[1].mean() < scene.rgb.shape[1] / 2)


@pytest.mark.parametrize("size", [(96, 192), (192, 384), (64, 160)])
def test_context_pixels_are_beyond_the_gap(size):
    h, w = size
    gap = min_context_distance(w)
    assert gap > 0.46 * w
    for s in _scenes(30, size):
        assert s.context.any(), "every frame has at least one mystery vehicle"
        far = far_zone(size, _side(s))
        _, cx = np.nonzero(s.context)
        _, fx = np.nonzero(far)
        assert np.abs(cx[:, None] - fx[None]).min() >= gap
        assert np.isin(s.label_ids[s.context], CONTEXT_IDS).all()
        assert len(np.unique(s.label_ids[s.context])) == 1


def test_classes_uniform_and_outside_of_far_zone_independent_of_class():
    scenes = _scenes(300, (48, 96))
    classes = np.array([CONTEXT_CLASSES.index(s.beacon_class) for s in scenes])
    counts = np.bincount(classes, minlength=3)
    assert counts.min() > 70, counts  # 100 expected each
    # the near zone (vehicles, road, sky) has the same mean colour whatever the class
    near = np.stack([s.rgb[:, : int(0.2 * 96)].mean((0, 1)) if _side(s) else
                     s.rgb[:, -int(0.2 * 96):].mean((0, 1)) for s in scenes])  # fmt: skip
    means = np.stack([near[classes == k].mean(0) for k in range(3)])
    assert np.abs(means - means.mean(0)).max() < 3.0, means
    # ... while the far zone differs by tens of grey levels
    far = np.stack([s.rgb[far_zone(s.context.shape, _side(s))].mean(0) for s in scenes])
    far_means = np.stack([far[classes == k].mean(0) for k in range(3)])
    assert np.abs(far_means - far_means.mean(0)).max() > 20.0, far_means


def test_cue_oracle_reads_every_frame():
    for s in _scenes(60, (96, 192)):
        k = cue_class(s.rgb.astype(float), s.label_ids, s.context, "redundant")
        assert CONTEXT_CLASSES[k] == s.beacon_class


def test_dataset_with_test_split_and_oracles(tmp_path):
    root = make_synthetic_cityscapes(
        tmp_path / "r", n_train=30, n_val=12, size=(48, 96), n_test=6, task="redundant"
    )
    for split, n in (("train", 30), ("val", 12), ("test", 6)):
        assert len(list((root / "leftImg8bit" / split).glob("*/*.png"))) == n
    result = oracle_accuracies(root)
    assert result["beacon_oracle"] == 1.0
    assert result["local_bayes"] < 0.6


def test_bad_task_is_named():
    with pytest.raises(ValueError, match="task: expected one of .*'nope'"):
        renderer("nope")


def test_pixel_shares_quoted_in_data_readme():
    """data/README.md: the context pixels are ~2.5% of the frame, the cue about 30%."""
    context, cue = [], []
    sidewalk = NAME_TO_LABEL["sidewalk"].id
    for s in _scenes(100, (96, 192)):
        context.append(s.context.mean())
        cue.append((far_zone(s.context.shape, _side(s)) & (s.label_ids != sidewalk)).mean())
    assert 0.02 < np.mean(context) < 0.03
    assert 0.28 < np.mean(cue) < 0.34
