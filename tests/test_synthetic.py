"""The synthetic context task: the far cue decides, the local view does not."""

from __future__ import annotations

import numpy as np
import pytest

from dgmn_ref.data import synthetic
from dgmn_ref.data.labels import NAME_TO_LABEL
from dgmn_ref.data.synthetic import CONTEXT_CLASSES, MIN_CONTEXT_DISTANCE, render_scene
from dgmn_ref.tools.context_check import oracle_accuracies

SIGN = NAME_TO_LABEL["traffic sign"].id
CONTEXT_IDS = [NAME_TO_LABEL[n].id for n in CONTEXT_CLASSES]


def _scenes(n, size, seed=0):
    return [render_scene(np.random.default_rng([seed, i]), size) for i in range(n)]


def test_render_is_deterministic():
    a, b = (render_scene(np.random.default_rng(7)) for _ in range(2))
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.label_ids, b.label_ids)


@pytest.mark.parametrize("size", [(96, 192), (128, 128), (48, 96)])
def test_beacon_is_far_from_every_context_pixel(size):
    h, w = size
    for s in _scenes(40, size):
        assert s.context.any(), "every frame has at least one mystery vehicle"
        cy, cx = np.nonzero(s.context)
        by, bx = np.nonzero(s.label_ids == SIGN)
        chebyshev = np.maximum(
            np.abs(cy[:, None] - by[None]).min(), np.abs(cx[:, None] - bx[None]).min(1).min()
        )
        assert chebyshev >= MIN_CONTEXT_DISTANCE * w
        assert np.isin(s.label_ids[s.context], CONTEXT_IDS).all()
        assert len(np.unique(s.label_ids[s.context])) == 1  # one beacon decides all of them


def test_context_classes_uniform_and_look_alike():
    """The local appearance of mystery pixels has the same distribution for the 3 classes."""
    by_class = {k: [] for k in CONTEXT_IDS}
    for s in _scenes(300, (48, 96)):
        k = int(s.label_ids[s.context][0])
        by_class[k].append(s.rgb[s.context].mean(0))
    counts = np.array([len(v) for v in by_class.values()])
    assert (np.abs(counts / counts.sum() - 1 / 3) < 0.07).all()
    means = np.array([np.mean(v, 0) for v in by_class.values()])
    stds = np.array([np.std(v, 0) for v in by_class.values()])
    assert (np.abs(means - means.mean(0)) < 0.4 * stds.mean(0)).all()


def test_oracles_local_prior_vs_beacon(tmp_path):
    root = synthetic.make_synthetic_cityscapes(tmp_path / "cs", 40, 30, (48, 96), seed=0)
    acc = oracle_accuracies(root)
    assert acc["beacon_oracle"] == 1.0
    assert 0.15 < acc["local_bayes"] < 0.55  # about 1/3
