"""A tiny synthetic street-scene dataset where context matters, in the real Cityscapes layout.

DGMN (Zhang et al., CVPR 2020), Sec. 1 and 3: a node's label often depends on far-away nodes,
which dynamic sampling with rates up to 36 at output stride 8 (Appendix A.2.2) or a fully
connected Non-local block can reach, but a 3x3 neighbourhood cannot.

Each image is a street: sky, building (with windows), sidewalk, road, vegetation, persons and
cars, all decidable from local appearance. Two elements make context necessary:

* a **beacon**: a traffic sign on a pole in the sky, on the left or right quarter of the image,
  whose colour is red, green or blue (uniformly at random);
* one or two **mystery vehicles**: grey boxes with the *same* appearance distribution whatever
  their class, on the road in the *other* half of the image. Their class is car / truck / bus
  for a red / green / blue beacon.

A mystery-vehicle pixel is at least ``MIN_CONTEXT_DISTANCE * W`` pixels (Chebyshev) from the
beacon, so any view smaller than that carries no information about its class: the Bayes-optimal
accuracy of a local model on those pixels is 1/3 (the prior), while a model that sees the beacon
can reach 100%. Those pixels are marked in ``*_gtFine_contextMask.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dgmn_ref.data.labels import COCO_NAME_TO_ID, NAME_TO_LABEL
from dgmn_ref.data.writers import CocoRecord, atomic_dir, write_cityscapes_frame, write_coco_split
from dgmn_ref.runlock import remove_stale_tmp

DEFAULT_SIZE: tuple[int, int] = (96, 192)
TRAIN_CITIES: tuple[str, ...] = ("alpha", "bravo", "charlie")
VAL_CITIES: tuple[str, ...] = ("delta", "echo")
TEST_CITIES: tuple[str, ...] = ("foxtrot", "golf")
SPLIT_INDEX: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# The embedded context tasks: "beacon" (the needle: one small far cue, this module) and
# "redundant" (a cue spread over a third of the frame, dgmn_ref.data.redundant).
TASKS: tuple[str, ...] = ("beacon", "redundant")
# Beacon colour -> class of every mystery vehicle in the image (index-aligned).
BEACON_COLOURS: tuple[tuple[int, int, int], ...] = ((230, 40, 40), (40, 200, 60), (40, 90, 255))
CONTEXT_CLASSES: tuple[str, ...] = ("car", "truck", "bus")
MYSTERY_COLOUR: tuple[int, int, int] = (165, 165, 165)
# The beacon lies in x < W/4 (or > 3W/4) and the mystery vehicles in x >= W/2 (or < W/2).
MIN_CONTEXT_DISTANCE = 0.25
MARKER = "synthetic.json"

_ID = {name: label.id for name, label in NAME_TO_LABEL.items()}
_COLOURS = {
    "sky": (110, 160, 220),
    "building": (125, 100, 90),
    "window": (55, 60, 75),
    "vegetation": (60, 130, 50),
    "sidewalk": (185, 175, 160),
    "road": (80, 75, 90),
    "pole": (50, 50, 50),
    "person": (200, 40, 70),
    "skin": (235, 190, 160),
    "car": (25, 25, 130),
    "wheel": (15, 15, 15),
}


@dataclass
class Scene:
    """One rendered frame. ``instances`` numbers objects 1..n; ``objects[k-1]`` is a labelId."""

    rgb: np.ndarray  # (h w 3) uint8
    label_ids: np.ndarray  # (h w) uint8
    instances: np.ndarray  # (h w) int32
    context: np.ndarray  # (h w) bool
    objects: list[int] = field(default_factory=list)
    beacon_class: str = "car"


class _Canvas:
    """Paints class regions with a per-image colour jitter; later paint covers earlier."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.colour = np.zeros((h, w, 3), dtype=np.float32)
        self.label = np.zeros((h, w), dtype=np.uint8)
        self.instances = np.zeros((h, w), dtype=np.int32)
        self.objects: list[int] = []

    def paint(self, region: np.ndarray, colour: tuple[int, int, int], label: str | None) -> None:
        jitter = self.rng.uniform(-12, 12, size=3)
        self.colour[region] = np.asarray(colour, dtype=np.float32) + jitter
        if label is not None:
            self.label[region] = _ID[label]

    def box(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        region = np.zeros(self.label.shape, dtype=bool)
        region[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        return region

    def new_instance(self, region: np.ndarray, label: str) -> None:
        self.objects.append(_ID[label])
        self.instances[region] = len(self.objects)


def _free(occupied: np.ndarray, y0: int, x0: int, y1: int, x1: int, pad: int = 2) -> bool:
    return not occupied[max(y0 - pad, 0) : y1 + pad, max(x0 - pad, 0) : x1 + pad].any()


def _new_street(rng: np.random.Generator, size: tuple[int, int]):
    """A blank canvas, its row and column index maps, and the street's layout rows
    ``horizon < kerb < walk`` (sky above the horizon, sidewalk from the kerb, road from the
    walk's edge), drawn from ``rng`` in this order (both tasks)."""
    h, w = size
    c = _Canvas(h, w, rng)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    horizon = int(h * rng.uniform(0.22, 0.28))
    kerb = int(h * rng.uniform(0.50, 0.56))
    walk = kerb + max(2, int(h * rng.uniform(0.06, 0.10)))
    return c, rows, cols, horizon, kerb, walk


def _paint_bushes(
    c: _Canvas, rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, kerb: int
) -> None:
    """0-2 bushes in front of the building (both tasks)."""
    h, w = rows.shape
    for _ in range(rng.integers(0, 3)):
        cy, cx = kerb - rng.integers(0, h // 10 + 1), rng.integers(0, w)
        ry, rx = rng.integers(h // 16 + 1, h // 8 + 2), rng.integers(w // 24 + 1, w // 12 + 2)
        c.paint(
            ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1,
            _COLOURS["vegetation"],
            "vegetation",
        )


def _place_mystery(
    c: _Canvas,
    occupied: np.ndarray,
    context: np.ndarray,
    box: tuple[int, int, int, int],
    name: str,
) -> bool:
    """Paint a grey mystery vehicle of class ``name`` at ``box = (y0, x0, y1, x1)`` if the
    place is free, marking its pixels occupied and context-dependent; False if not free."""
    if not _free(occupied, *box):
        return False
    region = c.box(*box)
    c.paint(region, MYSTERY_COLOUR, name)
    c.new_instance(region, name)
    occupied |= region
    context |= region
    return True


def _finish_scene(
    c: _Canvas,
    rng: np.random.Generator,
    occupied: np.ndarray,
    context: np.ndarray,
    beacon_class: str,
    kerb: int,
    walk: int,
) -> Scene:
    """The locally decidable things (dark-blue cars with wheels on the road, persons on the
    walk) where nothing stands yet, then pixel noise: the finished :class:`Scene`."""
    h, w = occupied.shape
    for _ in range(rng.integers(0, 3)):
        ch, cw = int(h * rng.uniform(0.10, 0.16)), int(w * rng.uniform(0.10, 0.16))
        y0 = int(rng.integers(walk, max(walk + 1, h - ch)))
        x0 = int(rng.integers(0, w - cw))
        if _free(occupied, y0, x0, y0 + ch, x0 + cw):
            body = c.box(y0, x0, y0 + ch, x0 + cw)
            c.paint(body, _COLOURS["car"], "car")
            wy = y0 + ch - max(2, ch // 4)
            for wx in (x0 + 1, x0 + cw - max(2, cw // 5) - 1):
                c.paint(c.box(wy, wx, y0 + ch, wx + max(2, cw // 5)), _COLOURS["wheel"], "car")
            c.new_instance(body, "car")
            occupied |= body
    for _ in range(rng.integers(0, 4)):
        ph, pw = max(6, int(h * rng.uniform(0.14, 0.2))), max(3, w // 40)
        y1 = int(rng.integers(kerb + 1, walk + 1))
        x0 = int(rng.integers(0, w - pw))
        if _free(occupied, y1 - ph, x0, y1, x0 + pw, pad=1):
            body = c.box(y1 - ph, x0, y1, x0 + pw)
            c.paint(body, _COLOURS["person"], "person")
            c.paint(c.box(y1 - ph, x0, y1 - ph + pw, x0 + pw), _COLOURS["skin"], "person")
            c.new_instance(body, "person")
            occupied |= body

    noise = rng.normal(0.0, 6.0, size=c.colour.shape)
    rgb = np.clip(c.colour + noise, 0, 255).round().astype(np.uint8)
    return Scene(rgb, c.label, c.instances, context, c.objects, beacon_class)


def render_scene(rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE) -> Scene:
    """Draw one street scene (see the module docstring). Shapes scale with ``size = (h, w)``."""
    h, w = size
    c, rows, cols, horizon, kerb, walk = _new_street(rng, size)

    c.paint(rows < horizon, _COLOURS["sky"], "sky")
    building = (rows >= horizon) & (rows < kerb)
    c.paint(building, _COLOURS["building"], "building")
    step = max(4, h // 12)
    windows = building & (rows % step >= step // 2) & (cols % step >= step // 2)
    windows &= rows < kerb - step // 2
    c.paint(windows, _COLOURS["window"], "building")
    c.paint((rows >= kerb) & (rows < walk), _COLOURS["sidewalk"], "sidewalk")
    c.paint(rows >= walk, _COLOURS["road"], "road")
    _paint_bushes(c, rng, rows, cols, kerb)

    # The beacon: a traffic sign on a pole in one outer quarter, coloured by the hidden class.
    left = bool(rng.integers(0, 2))
    k = int(rng.integers(0, len(BEACON_COLOURS)))
    bs = max(4, h // 10)
    by = int(rng.integers(1, max(2, horizon - bs)))
    quarter = (int(w * 0.02), int(w * MIN_CONTEXT_DISTANCE) - bs)
    bx = int(rng.integers(*quarter)) if left else w - bs - int(rng.integers(*quarter))
    px = bx + bs // 2 - 1
    c.paint(c.box(by + bs, px, kerb, px + 2), _COLOURS["pole"], "pole")
    c.paint(c.box(by, bx, by + bs, bx + bs), BEACON_COLOURS[k], "traffic sign")

    # Mystery vehicles: identical-looking grey boxes on the road, in the other half.
    occupied = np.zeros((h, w), dtype=bool)
    context = np.zeros((h, w), dtype=bool)
    half = (w // 2, w) if left else (0, w // 2)
    for _ in range(rng.integers(1, 3)):
        bh, bw = int(h * rng.uniform(0.14, 0.22)), int(w * rng.uniform(0.10, 0.17))
        for _try in range(20):
            y0 = int(rng.integers(walk + 1, max(walk + 2, h - bh - 1)))
            x0 = int(rng.integers(half[0] + 1, max(half[0] + 2, half[1] - bw - 1)))
            if _place_mystery(c, occupied, context, (y0, x0, y0 + bh, x0 + bw), CONTEXT_CLASSES[k]):
                break

    return _finish_scene(c, rng, occupied, context, CONTEXT_CLASSES[k], kerb, walk)


def renderer(task: str):
    """The scene function ``f(rng, size) -> Scene`` of an embedded task (:data:`TASKS`)."""
    if task == "beacon":
        return render_scene
    if task == "redundant":
        from dgmn_ref.data.redundant import render_redundant_scene

        return render_redundant_scene
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def _frames(split: str, n: int, seed: int, size: tuple[int, int], task: str = "beacon"):
    """Yield ``(city, stem, scene)``; frame ``i`` depends only on ``(seed, split, i)``."""
    if split not in SPLIT_INDEX:
        raise ValueError(f"split: expected one of {sorted(SPLIT_INDEX)}, got {split!r}")
    cities = {"train": TRAIN_CITIES, "val": VAL_CITIES, "test": TEST_CITIES}[split]
    render = renderer(task)
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_INDEX[split], i])
        city = cities[i % len(cities)]
        yield city, f"{city}_{i:06d}_000019", render(rng, size)


def make_synthetic_cityscapes(
    root: str | Path,
    n_train: int = 300,
    n_val: int = 60,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    n_test: int = 0,
    task: str = "beacon",
) -> Path:
    """Write the synthetic dataset in the Cityscapes layout, atomically (~1 s for the default).

    ``task`` picks the scenes (:data:`TASKS`); ``n_test > 0`` adds a held-out ``test`` split
    (its own cities and random streams, like ``val``).

    Writes ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and ``gtFine/.../*_gtFine_{
    labelIds,color,instanceIds,contextMask}.png`` plus a ``synthetic.json`` marker with the
    parameters. Raises ``FileExistsError`` if ``root`` exists and ``overwrite`` is false.
    """
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True or use ensure_synthetic")
    renderer(task)  # a bad task fails before anything is written
    params = {"kind": "cityscapes", "n_train": n_train, "n_val": n_val, "size": list(size)}
    if n_test or task != "beacon":
        params |= {"n_test": n_test, "task": task}
    splits = (("train", n_train), ("val", n_val)) + ((("test", n_test),) if n_test else ())
    with atomic_dir(root, overwrite=overwrite) as tmp:
        for split, n in splits:
            for city, stem, s in _frames(split, n, seed, size, task):
                write_cityscapes_frame(
                    tmp, split, city, stem, s.rgb, s.label_ids, s.instances, s.context
                )
        (tmp / MARKER).write_text(json.dumps({**params, "seed": seed}))
    return root


def scene_to_coco(scene: Scene, file_name: str) -> CocoRecord:
    """Instances of a scene as a COCO record (cars, trucks, buses, persons; no stuff)."""
    names = {label.id: name for name, label in NAME_TO_LABEL.items()}
    masks = np.stack([scene.instances == k + 1 for k in range(len(scene.objects))])
    masks = masks.reshape(-1, *scene.label_ids.shape)
    cats = [COCO_NAME_TO_ID[names[label_id]] for label_id in scene.objects]
    return CocoRecord(file_name, scene.rgb, masks, cats)


def make_synthetic_coco(
    root: str | Path,
    n_train: int = 100,
    n_val: int = 20,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """The same scenes in the COCO layout: ``root/{train2017,val2017}/*.jpg`` and
    ``root/annotations/instances_{train2017,val2017}.json`` (RLE masks, 80 categories)."""
    root = Path(root)
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True or use ensure_synthetic_coco")
    with atomic_dir(root, overwrite=overwrite) as tmp:
        for split, n in (("train", n_train), ("val", n_val)):
            records = (
                scene_to_coco(s, f"{i:012d}.jpg")
                for i, (_, _, s) in enumerate(_frames(split, n, seed, size))
            )
            write_coco_split(tmp, f"{split}2017", records)
        params = {"kind": "coco", "n_train": n_train, "n_val": n_val, "size": list(size)}
        (tmp / MARKER).write_text(json.dumps({**params, "seed": seed}))
    return root


def task_of(root: str | Path) -> str:
    """The task a synthetic set was written for (its ``synthetic.json``; older sets and a
    missing folder: ``"beacon"``)."""
    marker = Path(root) / MARKER
    return json.loads(marker.read_text()).get("task", "beacon") if marker.is_file() else "beacon"


def ensure_synthetic(root: str | Path = "data/synthetic_cityscapes", **kwargs) -> Path:
    """Return ``root``, generating the synthetic Cityscapes there first if it is missing.

    Idempotent and safe against interruption (generation goes through a temporary folder that
    is renamed at the end). ``kwargs`` go to :func:`make_synthetic_cityscapes`.
    """
    root = Path(root)
    if not root.exists():
        make_synthetic_cityscapes(root, **kwargs)
    return root


def ensure_synthetic_coco(root: str | Path = "data/synthetic_coco", **kwargs) -> Path:
    """Like :func:`ensure_synthetic`, for :func:`make_synthetic_coco`."""
    root = Path(root)
    if not root.exists():
        make_synthetic_coco(root, **kwargs)
    return root


def make_data(
    root: str | Path = "data",
    n_train: int = 300,
    n_val: int = 60,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Everything ``dgmn-ref make-data`` writes under ``root``; returns the dataset folders.

    ``root/synthetic_cityscapes`` (``n_train`` / ``n_val`` frames) and ``root/synthetic_coco``
    (a third as many).
    Existing folders are complete (they are renamed into place atomically) and are kept
    unless ``overwrite``.
    """
    root = Path(root)
    remove_stale_tmp(root)  # the temporary folders of killed generators
    kw = {"size": size, "seed": seed, "overwrite": overwrite}
    city, coco = root / "synthetic_cityscapes", root / "synthetic_coco"
    if overwrite or not city.exists():
        make_synthetic_cityscapes(city, n_train, n_val, **kw)
    if overwrite or not coco.exists():
        make_synthetic_coco(coco, max(1, n_train // 3), max(1, n_val // 3), **kw)
    return [city, coco]
