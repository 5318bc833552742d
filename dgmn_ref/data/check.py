"""Data errors up front: every problem of a dataset, with its path, before training starts.

``dgmn-ref check-data --dataset cityscapes|coco|synthetic --root DIR`` decodes every file
once (a tqdm bar) and lists each problem as ``path: what is wrong``:

* Cityscapes layout (and the synthetic data): images without labels and labels without
  images, unreadable or truncated PNGs, labels that are not 8-bit, labelIds outside the
  Cityscapes table, image / label / context-mask size mismatches;
* COCO: malformed JSON (line and column), missing ``images`` / ``annotations`` /
  ``categories`` keys, annotations lacking ``area``, ``bbox``, ``category_id``, ...,
  unknown category or image ids, missing or unreadable images, sizes that differ from the
  JSON, and a category set that differs from COCO 2017's (a *note*: training then uses
  the file's own names and class count, :func:`coco_class_names`).

Training runs the cheap part (``decode=False``: pairing, schema, categories) at start,
through :func:`require_valid_data`, so a broken dataset fails in seconds, not hours in.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from dgmn_ref.data.cityscapes import CONTEXT_SUFFIX, IMAGE_SUFFIX, LABEL_SUFFIX
from dgmn_ref.data.labels import COCO_CATEGORIES, VALID_LABEL_IDS

__all__ = [
    "DataError",
    "Problem",
    "check_cityscapes",
    "check_coco",
    "check_data",
    "coco_class_names",
    "coco_schema_problems",
    "main",
    "require_valid_data",
]

DATASETS = ("cityscapes", "coco", "synthetic")
SYNTHETIC_ROOT = "data/synthetic_cityscapes"
# keys of a COCO instances file, and of each of its annotations, that the loaders read
COCO_KEYS = ("images", "annotations", "categories")
IMAGE_KEYS = ("id", "file_name", "height", "width")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd")
_VALID_ID = np.zeros(256, dtype=bool)
_VALID_ID[sorted(VALID_LABEL_IDS)] = True


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: the file, what is wrong, and whether it stops training (``error``)."""

    path: Path
    message: str
    error: bool = True

    def __str__(self) -> str:
        return f"{'error' if self.error else 'note'}: {self.path}: {self.message}"


class DataError(ValueError):
    """A dataset with problems; the message lists every one."""

    def __init__(self, problems: Sequence[Problem], hint: str = "") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} data problem(s):\n{lines}{hint}")


# ------------------------------------------------------------------------ decoding


def _decode(path: Path) -> tuple[Image.Image | None, str | None]:
    """Open and fully decode an image: ``(image, None)`` or ``(None, reason)``."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy(), None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        return None, f"unreadable image ({type(err).__name__}: {err})"


def _label_problems(path: Path) -> tuple[tuple[int, int] | None, list[Problem]]:
    """The size of a labelIds PNG and what is wrong with it (bit depth, ids)."""
    im, reason = _decode(path)
    if im is None:
        return None, [Problem(path, reason)]
    size = (im.height, im.width)
    if im.mode not in ("L", "P"):
        return size, [
            Problem(path, f"label image has mode {im.mode!r}; expected 8-bit labelIds (mode L)")
        ]
    ids = np.unique(np.asarray(im))
    bad = ids[~_VALID_ID[ids]]
    if bad.size:
        return size, [
            Problem(
                path,
                f"labelIds {bad.tolist()} are not in the Cityscapes table "
                f"(ids {min(VALID_LABEL_IDS)}..{max(VALID_LABEL_IDS)})",
            )
        ]
    return size, []


# ---------------------------------------------------------------------- Cityscapes


def check_cityscapes(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    decode: bool = True,
    context: bool = False,
    progress: bool = False,
) -> list[Problem]:
    """Problems of a Cityscapes-layout dataset (see the module docstring).

    Args:
        root: holds ``leftImg8bit/`` and ``gtFine/``.
        splits: e.g. ``("train", "val")``; default every folder under ``leftImg8bit``.
        decode: also decode every image and label (the slow part).
        context: also require the ``*_gtFine_contextMask.png`` of the synthetic data.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "dataset root does not exist")]
    if splits is None:
        images = root / "leftImg8bit"
        splits = sorted(p.name for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
        if not splits:
            return [Problem(images, f"no split folders (expected train/, val/ of *{IMAGE_SUFFIX})")]
    problems: list[Problem] = []
    pairs: list[tuple[Path, Path]] = []
    for split in splits:
        image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in image_dir.glob(f"*/*{IMAGE_SUFFIX}")}
        labels = {p.name[: -len(LABEL_SUFFIX)]: p for p in label_dir.glob(f"*/*{LABEL_SUFFIX}")}
        if not images:
            problems.append(Problem(image_dir, f"no images matching <city>/*{IMAGE_SUFFIX}"))
            continue
        for stem in sorted(images.keys() - labels.keys()):
            city = images[stem].parent.name
            expected = label_dir / city / (stem + LABEL_SUFFIX)
            problems.append(Problem(images[stem], f"no label file (expected {expected})"))
        for stem in sorted(labels.keys() - images.keys()):
            problems.append(Problem(labels[stem], "label file without an image"))
        for stem in sorted(images.keys() & labels.keys()):
            pairs.append((images[stem], labels[stem]))
            mask = labels[stem].with_name(stem + CONTEXT_SUFFIX)
            if context and not mask.is_file():
                problems.append(Problem(mask, "missing context mask (synthetic data)"))
    if decode:
        for image, label in tqdm(pairs, desc="check-data", disable=not progress):
            problems += _pair_problems(image, label, context)
    return problems


def _pair_problems(image: Path, label: Path, context: bool) -> list[Problem]:
    rgb, reason = _decode(image)
    problems = [] if rgb is not None else [Problem(image, reason)]
    label_size, label_problems = _label_problems(label)
    problems += label_problems
    if rgb is not None and label_size is not None and (rgb.height, rgb.width) != label_size:
        problems.append(
            Problem(
                label,
                f"size {label_size} (h, w) differs from its image {image.name} "
                f"{(rgb.height, rgb.width)}",
            )
        )
    mask = label.with_name(label.name[: -len(LABEL_SUFFIX)] + CONTEXT_SUFFIX)
    if context and mask.is_file() and label_size is not None:
        im, reason = _decode(mask)
        if im is None:
            problems.append(Problem(mask, reason))
        elif (im.height, im.width) != label_size:
            problems.append(
                Problem(mask, f"size {(im.height, im.width)} differs from its label {label_size}")
            )
    return problems


# ---------------------------------------------------------------------------- COCO


def _load_json(path: Path) -> tuple[dict | None, list[Problem]]:
    if not path.is_file():
        return None, [Problem(path, "missing COCO annotation file")]
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        return None, [
            Problem(path, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}")
        ]
    except (OSError, UnicodeDecodeError) as err:
        return None, [Problem(path, f"unreadable: {err}")]
    if not isinstance(data, dict):
        return None, [Problem(path, f"expected a JSON object, got {type(data).__name__}")]
    return data, []


def _missing_keys(path: Path, what: str, items: list, keys: Sequence[str]) -> list[Problem]:
    """One problem per missing key: how many ``what`` lack it, and the first few."""
    problems = []
    lacking: dict[str, list] = defaultdict(list)
    bad = [i for i, item in enumerate(items) if not isinstance(item, dict)]
    if bad:
        problems.append(
            Problem(path, f"{len(bad)} {what} are not objects (first at index {bad[0]})")
        )
    for i, item in enumerate(items):
        if isinstance(item, dict):
            for key in keys:
                if key not in item:
                    lacking[key].append(item.get("id", f"index {i}"))
    for key, ids in lacking.items():
        first = ", ".join(map(str, ids[:3]))
        problems.append(Problem(path, f"{len(ids)} {what} lack {key!r} (first: id {first})"))
    return problems


def coco_schema_problems(path: Path, data: dict) -> list[Problem]:
    """Schema, id and category problems of a parsed COCO instances file ``path``."""
    problems = [
        Problem(path, f"missing top-level key {key!r} (a COCO instances file has {COCO_KEYS})")
        for key in COCO_KEYS
        if not isinstance(data.get(key), list)
    ]
    if problems:
        return problems
    problems += _missing_keys(path, "images", data["images"], IMAGE_KEYS)
    problems += _missing_keys(path, "annotations", data["annotations"], ANNOTATION_KEYS)
    problems += _missing_keys(path, "categories", data["categories"], ("id", "name"))
    if problems:
        return problems
    cats = Counter(c["id"] for c in data["categories"])
    images = Counter(i["id"] for i in data["images"])
    for what, counts in (("category", cats), ("image", images)):
        dup = sorted(k for k, n in counts.items() if n > 1)
        if dup:
            problems.append(Problem(path, f"duplicate {what} ids {dup[:5]}"))
    if not cats:
        problems.append(Problem(path, "no categories: nothing to segment"))
    for key, known, what in (("category_id", cats, "categories"), ("image_id", images, "images")):
        unknown = Counter(a[key] for a in data["annotations"] if a[key] not in known)
        if unknown:
            problems.append(
                Problem(
                    path,
                    f"{sum(unknown.values())} annotation(s) with unknown {key} "
                    f"{', '.join(map(str, sorted(unknown, key=str)[:5]))} (not in the "
                    f"file's {what})",
                )
            )
    ours = sorted((c["id"], c["name"]) for c in data["categories"])
    if cats and ours != sorted(COCO_CATEGORIES):
        problems.append(
            Problem(
                path,
                f"its {len(ours)} categories differ from COCO 2017's 80; models use the "
                f"file's own names and {len(ours) + 1} classes (with background): "
                f"{[n for _, n in ours][:6]}{' ...' if len(ours) > 6 else ''}",
                error=False,
            )
        )
    return problems


def check_coco(
    root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    decode: bool = True,
    progress: bool = False,
) -> list[Problem]:
    """Problems of a COCO-layout dataset (see the module docstring).

    Args:
        root: holds ``annotations/instances_<split>.json`` and ``<split>/``.
        splits: e.g. ``("train2017", "val2017")``; default every ``instances_*.json``.
        decode: also decode every image and compare its size with the JSON.
    """
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "dataset root does not exist")]
    annotations = root / "annotations"
    if splits is None:
        splits = sorted(p.stem[len("instances_") :] for p in annotations.glob("instances_*.json"))
        if not splits:
            return [Problem(annotations, "no instances_<split>.json annotation files")]
    problems: list[Problem] = []
    files: list[tuple[Path, dict]] = []
    for split in splits:
        path = annotations / f"instances_{split}.json"
        data, found = _load_json(path)
        problems += found
        if data is None:
            continue
        schema = coco_schema_problems(path, data)
        problems += schema
        if any(p.error for p in schema):
            continue
        for info in data["images"]:
            image = root / split / info["file_name"]
            if not image.is_file():
                problems.append(Problem(image, f"missing image (listed in {path.name})"))
            else:
                files.append((image, info))
    if decode:
        for image, info in tqdm(files, desc="check-data", disable=not progress):
            im, reason = _decode(image)
            if im is None:
                problems.append(Problem(image, reason))
            elif (im.height, im.width) != (info["height"], info["width"]):
                problems.append(
                    Problem(
                        image,
                        f"size {(im.height, im.width)} (h, w) differs from the annotation "
                        f"file's {(info['height'], info['width'])}",
                    )
                )
    return problems


def coco_class_names(root: str | Path, splits: Sequence[str]) -> tuple[str, ...]:
    """``("background", *names)`` of the splits' categories in id order (the labels of
    :class:`~dgmn_ref.data.CocoSemantic`); refused if the splits' category sets differ."""
    names = {}
    for split in splits:
        path = Path(root) / "annotations" / f"instances_{split}.json"
        data, problems = _load_json(path)
        if data is None:
            raise DataError(problems)
        names[split] = ("background",) + tuple(
            c["name"] for c in sorted(data.get("categories", []), key=lambda c: c["id"])
        )
    first, *rest = splits
    for split in rest:
        if names[split] != names[first]:
            raise DataError(
                [
                    Problem(
                        Path(root) / "annotations" / f"instances_{split}.json",
                        f"its categories {names[split][1:6]}... differ from those of "
                        f"instances_{first}.json {names[first][1:6]}...; a model trained on "
                        "one cannot be scored on the other",
                    )
                ]
            )
    return names[first]


# ---------------------------------------------------------------------- entry points


def check_data(
    dataset: str,
    root: str | Path | None = None,
    splits: Sequence[str] | None = None,
    *,
    decode: bool = True,
    progress: bool = False,
) -> list[Problem]:
    """Problems of ``dataset`` (``cityscapes``, ``coco`` or ``synthetic``) under ``root``.

    ``splits`` are ``train`` / ``val`` style names for every dataset (``2017`` is added
    for COCO). ``decode=False`` is the cheap check: pairing, schema and categories.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
    if root is None:
        if dataset != "synthetic":
            raise ValueError(f"root: dataset {dataset!r} needs a root folder")
        root = SYNTHETIC_ROOT
    if dataset == "coco":
        splits = (
            None if splits is None else [s if s.endswith("2017") else f"{s}2017" for s in splits]
        )
        return check_coco(root, splits, decode=decode, progress=progress)
    return check_cityscapes(
        root, splits, decode=decode, context=dataset == "synthetic", progress=progress
    )


def require_valid_data(dataset: str, root: str | Path | None, splits: Sequence[str]) -> None:
    """The cheap check training runs at start: raise :class:`DataError` listing every error."""
    errors = [p for p in check_data(dataset, root, splits, decode=False) if p.error]
    if errors:
        raise DataError(
            errors,
            f"\nrun `dgmn-ref check-data --dataset {dataset} --root {root}` for the full check",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``dgmn-ref check-data``: 0 if no errors (notes allowed), 1 with errors, 2 on bad use."""
    p = argparse.ArgumentParser(
        prog="dgmn-ref check-data",
        description="Decode every file of a dataset once and list every problem with its "
        "path (pairing, COCO schema and categories, unreadable images, label values, sizes).",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", help=f"dataset root (synthetic default: {SYNTHETIC_ROOT})")
    p.add_argument("--split", nargs="+", dest="splits", help="splits (default: all found)")
    p.add_argument("--quick", action="store_true", help="skip decoding (what training checks)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.root is not None and not Path(args.root).is_dir():
        p.error(f"--root {args.root} is not a directory")
    try:
        problems = check_data(
            args.dataset, args.root, args.splits, decode=not args.quick, progress=args.progress
        )
    except ValueError as err:
        p.error(str(err))
    for problem in problems:
        print(problem)
    errors = sum(p.error for p in problems)
    print(f"{errors} error(s), {len(problems) - errors} note(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
