"""The redundant-context task: a cue spread over a third of the frame (paper sec. 1, Fig. 1).

The beacon task (:mod:`dgmn_ref.data.synthetic`) hides the cue in one small object: a needle.
The paper's premise is the opposite: context in real images is *redundant*, so a few
well-chosen samples suffice. Here the cue is the "weather" of the far end of the street:

* the frame is split into a **near zone** ``x < NEAR * W`` and a **far zone**
  ``x >= FAR * W`` (or the mirror image, uniformly at random), with a neutral middle;
* one or two **mystery vehicles** (the grey look-alike boxes of the beacon task) stand on the
  road of the near zone; their pixels are the ``contextMask``;
* the **far zone** is a district whose kind is a hidden class ``k``: the street front is a
  wall / a fence / a park (real labels ``wall``, ``fence``, ``vegetation``, so segmenting
  them makes the features carry ``k``) and its sky and road have the district's "weather"
  colour; the vehicles are car / truck / bus for ``k`` = 0 / 1 / 2;
* everything else (the near and middle zones, the vehicles, bushes, persons, dark-blue cars)
  has the same distribution whatever ``k``.

A context pixel is more than ``(FAR - NEAR) * W`` pixels (Chebyshev, horizontally) from every
pixel that depends on ``k``, so a view smaller than that is independent of the class: the
Bayes-optimal local accuracy on context pixels is the prior, 1/3 (proof in data/README.md).
The cue covers about 30% of the frame's pixels, so a module that samples far positions
almost anywhere in the far zone reads it.
"""

from __future__ import annotations

import numpy as np

from dgmn_ref.data.synthetic import (
    _COLOURS,
    CONTEXT_CLASSES,
    DEFAULT_SIZE,
    Scene,
    _finish_scene,
    _new_street,
    _paint_bushes,
    _place_mystery,
)

# The mystery vehicles lie in x < NEAR * W, the cue in x >= FAR * W (or mirrored).
NEAR = 0.2
FAR = 2 / 3
# district k -> label and colours of the far zone's street front, and the colours of its
# sky and road (index-aligned with the context classes car / truck / bus).
DISTRICTS: tuple[str, ...] = ("walls", "fences", "park")
_Colour = tuple[int, int, int]
DISTRICT_COLOURS: tuple[dict[str, _Colour], ...] = (
    {
        "sky": (70, 150, 245),
        "front": (175, 170, 150),
        "bars": (175, 170, 150),
        "road": (70, 70, 100),
    },
    {
        "sky": (175, 175, 180),
        "front": (140, 120, 80),
        "bars": (70, 55, 40),
        "road": (105, 105, 105),
    },
    {"sky": (240, 140, 60), "front": (40, 115, 45), "bars": (25, 80, 30), "road": (55, 40, 60)},
)
FRONT_LABELS: tuple[str, ...] = ("wall", "fence", "vegetation")


def min_context_distance(width: int) -> int:
    """Smallest horizontal gap in pixels between a context pixel and the far zone."""
    return int(np.ceil(FAR * width)) - (int(NEAR * width) - 1)


def far_zone(size: tuple[int, int], left: bool) -> np.ndarray:
    """``(h w)`` bool: the columns of the far zone (``left``: the vehicles are on the left)."""
    h, w = size
    cols = np.arange(w)
    far = cols >= int(np.ceil(FAR * w)) if left else cols < w - int(np.ceil(FAR * w))
    return np.broadcast_to(far, (h, w))


def far_zone_of(context) -> np.ndarray:
    """``(h w)`` bool: the far zone of a frame, on the side away from its context pixels (the
    mystery vehicles, ``context``: ``(h w)`` bool, numpy or torch)."""
    context = np.asarray(context)
    left = bool(np.nonzero(context)[1].mean() < context.shape[1] / 2)  # the vehicles' side
    return far_zone(context.shape, left)


def render_redundant_scene(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    """Draw one street of the redundant-context task (see the module docstring)."""
    h, w = size
    c, rows, cols, horizon, kerb, walk = _new_street(rng, size)
    left = bool(rng.integers(0, 2))  # the mystery vehicles are on the left
    k = int(rng.integers(0, len(CONTEXT_CLASSES)))
    far = far_zone(size, left)

    sky, building, road = rows < horizon, (rows >= horizon) & (rows < kerb), rows >= walk
    district = DISTRICT_COLOURS[k]
    c.paint(sky & ~far, _COLOURS["sky"], "sky")
    c.paint(sky & far, district["sky"], "sky")
    c.paint(building & ~far, _COLOURS["building"], "building")
    step = max(4, h // 12)
    windows = building & ~far & (rows % step >= step // 2) & (cols % step >= step // 2)
    windows &= rows < kerb - step // 2
    c.paint(windows, _COLOURS["window"], "building")
    c.paint(building & far, district["front"], FRONT_LABELS[k])
    bars = building & far & (cols % max(4, h // 16) < max(4, h // 16) // 2)
    c.paint(bars, district["bars"], FRONT_LABELS[k])
    c.paint((rows >= kerb) & (rows < walk), _COLOURS["sidewalk"], "sidewalk")
    c.paint(road & ~far, _COLOURS["road"], "road")
    c.paint(road & far, district["road"], "road")
    _paint_bushes(c, rng, rows, cols, kerb)

    # Mystery vehicles: the beacon task's grey look-alikes, on the road of the near zone.
    occupied = np.zeros((h, w), dtype=bool)
    context = np.zeros((h, w), dtype=bool)
    near = int(NEAR * w)
    for _ in range(rng.integers(1, 3)):
        bh, bw = int(h * rng.uniform(0.14, 0.22)), int(w * rng.uniform(0.10, 0.17))
        bw = min(bw, near - 2)
        for _try in range(20):
            y0 = int(rng.integers(walk + 1, max(walk + 2, h - bh - 1)))
            x0 = int(rng.integers(1, max(2, near - bw)))
            x0 = x0 if left else w - x0 - bw
            if _place_mystery(c, occupied, context, (y0, x0, y0 + bh, x0 + bw), CONTEXT_CLASSES[k]):
                break

    return _finish_scene(c, rng, occupied, context, CONTEXT_CLASSES[k], kerb, walk)
