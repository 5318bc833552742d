"""The Cityscapes dataset (Cordts et al., 2016) as used by DGMN, Appendix A.2.1-A.2.2.

Reads the official layout::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_contextMask.png   (synthetic only)

and maps labelIds to the 19 trainIds (255 = ignore). ``*_gtFine_contextMask.png`` is written by
:mod:`dgmn_ref.data.synthetic` only; it marks the pixels whose class needs long-range context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dgmn_ref.data.labels import (
    LABEL_TO_TRAIN_LUT,
    VALID_LABEL_IDS,
    train_ids_to_label_ids,
)
from dgmn_ref.data.transforms import Sample, Transform, normalize, sample_generator, to_tensor

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
CONTEXT_SUFFIX = "_gtFine_contextMask.png"
_VALID_ID = np.zeros(256, dtype=bool)
_VALID_ID[sorted(VALID_LABEL_IDS)] = True
_STEM = re.compile(r"([A-Za-z0-9-]+_\d+_\d+)")


@dataclass(frozen=True)
class CityscapesFile:
    """Paths of one frame; ``stem`` is ``<city>_<seq>_<frame>``."""

    city: str
    stem: str
    image: Path
    label: Path

    @property
    def context(self) -> Path:
        return self.label.with_name(self.stem + CONTEXT_SUFFIX)


def list_cityscapes(root: str | Path, split: str) -> list[CityscapesFile]:
    """All frames of a split, sorted, each checked to have its ``gtFine_labelIds`` file.

    Raises:
        FileNotFoundError: the root or ``leftImg8bit/<split>`` folder is missing, the split is
            empty, or a label file is missing (the message names the expected path).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Cityscapes root {root} does not exist; expected {root}/leftImg8bit/{split}/<city>/"
            f"*{IMAGE_SUFFIX} and {root}/gtFine/{split}/<city>/*{LABEL_SUFFIX} "
            "(run `dgmn-ref make-data` for the synthetic default)"
        )
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"missing image folder {image_dir} (expected <city>/*{IMAGE_SUFFIX})"
        )
    files = []
    for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        stem = image.name[: -len(IMAGE_SUFFIX)]
        city = image.parent.name
        label = root / "gtFine" / split / city / (stem + LABEL_SUFFIX)
        if not label.is_file():
            raise FileNotFoundError(f"missing label file {label} for image {image}")
        files.append(CityscapesFile(city=city, stem=stem, image=image, label=label))
    if not files:
        raise FileNotFoundError(f"no images matching {image_dir}/<city>/*{IMAGE_SUFFIX}")
    return files


def read_list_file(path: str | Path) -> list[str]:
    """Frame stems ``<city>_<seq>_<frame>`` named in a list file, one per line.

    A line may be a stem or any path containing it (``leftImg8bit/val/x/x_000000_000019_
    leftImg8bit.png``, a gtFine path, ...); blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    stems = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _STEM.search(Path(line).name)
        if match is None:
            raise ValueError(f"{path}:{n}: {line!r} names no Cityscapes frame <city>_<seq>_<frame>")
        stems.append(match.group(1))
    return stems


def open_image(path: str | Path) -> Image.Image:
    """Open and decode an image file; a truncated or unreadable one is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as ``(h w 3)`` uint8 RGB (see :func:`open_image`)."""
    return np.asarray(open_image(path).convert("RGB"))


def load_label_ids(path: str | Path) -> np.ndarray:
    """Read a ``*_gtFine_labelIds.png`` as uint8 ``(h w)``, checking every id is known."""
    image = open_image(path)
    if image.mode not in ("L", "P"):
        raise ValueError(
            f"label file {path} has mode {image.mode!r}; expected 8-bit labelIds (mode L)"
        )
    label = np.asarray(image)
    if label.ndim != 2:
        raise ValueError(f"label file {path} has shape {label.shape}; expected a single channel")
    bad = np.unique(label[~_VALID_ID[label]])
    if bad.size:
        raise ValueError(
            f"unknown Cityscapes labelIds {bad.tolist()} in {path}; expected ids in "
            f"{sorted(VALID_LABEL_IDS)[0]}..{sorted(VALID_LABEL_IDS)[-1]}"
        )
    return label


class CityscapesDataset(Dataset):
    """Cityscapes frames as ``(image, label)`` or ``(image, label, context)`` tuples.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"`` or ``"val"`` (any folder name under ``leftImg8bit``).
        transform: ``f(sample, generator) -> sample``, e.g.
            :class:`~dgmn_ref.data.transforms.TrainTransform`; ``None`` for evaluation.
        subset: keep the first ``subset`` frames (after the city and list filters).
        cities: keep only these cities.
        list_file: keep only the frames named in this file (see :func:`read_list_file`).
        return_context: also return the ``contextMask`` (synthetic data only).
        seed: base seed of the augmentations; see :meth:`set_epoch`.

    Returns per item:
        image ``(3 h w)`` float32, normalised with the ImageNet mean/std;
        label ``(h w)`` int64 trainIds in 0..18 or 255;
        context ``(h w)`` bool, when ``return_context``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Transform | None = None,
        subset: int | None = None,
        cities: list[str] | tuple[str, ...] | None = None,
        list_file: str | Path | None = None,
        return_context: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.return_context = return_context
        self.seed = seed
        self.epoch = 0
        files = list_cityscapes(self.root, split)
        if cities is not None:
            known = {f.city for f in files}
            unknown = sorted(set(cities) - known)
            if unknown:
                raise ValueError(
                    f"cities {unknown} not in {self.root}/leftImg8bit/{split}: {sorted(known)}"
                )
            files = [f for f in files if f.city in set(cities)]
        if list_file is not None:
            by_stem = {f.stem: f for f in files}
            wanted = read_list_file(list_file)
            missing = [s for s in wanted if s not in by_stem]
            if missing:
                raise FileNotFoundError(
                    f"{list_file} names frames not found in {self.root}/leftImg8bit/{split}: "
                    f"{missing[:5]}"
                )
            files = [by_stem[s] for s in wanted]
        if subset is not None:
            files = files[:subset]
        self.files: list[CityscapesFile] = files

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws; item ``i`` of epoch ``e`` is always augmented alike."""
        self.epoch = epoch

    def load(self, index: int) -> Sample:
        """The untransformed sample ``{"image", "label"[, "context"]}`` of frame ``index``."""
        f = self.files[index]
        rgb = read_rgb(f.image)
        label_ids = load_label_ids(f.label)
        if rgb.shape[:2] != label_ids.shape:
            raise ValueError(
                f"size mismatch: image {f.image} is {rgb.shape[:2]} (h, w) but label {f.label} "
                f"is {label_ids.shape}; expected equal sizes"
            )
        sample = {
            "image": normalize(to_tensor(rgb)),
            "label": torch.from_numpy(LABEL_TO_TRAIN_LUT[label_ids].astype(np.int64)),
        }
        if self.return_context:
            if not f.context.is_file():
                raise FileNotFoundError(
                    f"missing context mask {f.context} (only synthetic data has *{CONTEXT_SUFFIX})"
                )
            context = np.asarray(open_image(f.context))
            if context.shape != label_ids.shape:
                raise ValueError(
                    f"context mask {f.context} is {context.shape}; expected {label_ids.shape}"
                )
            sample["context"] = torch.from_numpy(context != 0)
        return sample

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        sample = self.load(index)
        if self.transform is not None:
            sample = self.transform(sample, sample_generator(self.seed, self.epoch, index))
        if self.return_context:
            return sample["image"], sample["label"], sample["context"]
        return sample["image"], sample["label"]


def save_prediction(train_ids: torch.Tensor | np.ndarray, stem: str, out_dir: str | Path) -> Path:
    """Write a prediction as ``<out_dir>/<stem>_pred_labelIds.png`` in labelIds.

    This is the format cityscapesScripts' ``evalPixelLevelSemanticLabeling`` looks for
    (``<city>_<seq>_<frame>*.png`` under ``CITYSCAPES_RESULTS``).

    Args:
        train_ids: ``(h w)`` trainIds (0..18).
        stem: ``<city>_<seq>_<frame>``, e.g. ``dataset.files[i].stem``.
    """
    if isinstance(train_ids, torch.Tensor):
        train_ids = train_ids.detach().cpu().numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}_pred_labelIds.png"
    Image.fromarray(np.asarray(train_ids_to_label_ids(train_ids), dtype=np.uint8)).save(path)
    return path
