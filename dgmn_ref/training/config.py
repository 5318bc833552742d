"""Every setting of a training run, Appendix A.2.2; saved as ``config.json`` beside the checkpoint.

Each field carries its help text (``dgmn-ref train --help`` shows it with the default).
To add a setting: add a field with :func:`setting`; if it has a fixed set of values, add it
to :data:`CHOICES`; if it has a range, to :data:`LIMITS`; if it may change on ``--resume``,
to :data:`RUNTIME_FIELDS`; further checks go in :meth:`TrainConfig.check`.

Every value is checked against its field's type (``"seed": "1"``, ``"freeze_bn": "false"``
are errors, an int is a valid float) and range before anything is written; an unknown key
is an error naming its closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgmn_ref.data.labels import CITYSCAPES_CLASSES
from dgmn_ref.layer import IMPLS
from dgmn_ref.models import CONTEXTS, DEPTHS
from dgmn_ref.variants import PAPER_VARIANTS, RELEASED_VARIANTS

__all__ = [
    "AMP_MODES",
    "CHOICES",
    "DATASETS",
    "LIMITS",
    "OPTIMIZERS",
    "RATED_CONTEXTS",
    "RUNTIME_FIELDS",
    "SYNTHETIC_ROOT",
    "TrainConfig",
    "setting",
]

DATASETS: tuple[str, ...] = ("cityscapes", "coco", "synthetic")
AMP_MODES: tuple[str, ...] = ("auto", "off", "bf16", "fp16")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SYNTHETIC_ROOT = "data/synthetic_cityscapes"
# context modules that take sampling rates (TrainConfig.rates)
RATED_CONTEXTS: tuple[str, ...] = ("dgmn", "deformable", "aspp")
# The settings with a fixed set of values (checked by TrainConfig.check, listed in --help).
CHOICES: dict[str, tuple] = {
    "dataset": DATASETS,
    "context": CONTEXTS,
    "variant": tuple(sorted(PAPER_VARIANTS)) + tuple(sorted(RELEASED_VARIANTS)),
    "impl": IMPLS,
    "amp": AMP_MODES,
    "depth": tuple(sorted(DEPTHS)),
    "optimizer": OPTIMIZERS,
}
# The ranges of the other settings: (what is expected, test of a value of the right type).
LIMITS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "out": ("a folder name", lambda v: v.strip() != ""),
    "width": ("an int >= 1", lambda v: v >= 1),
    "head_channels": ("an int >= 1", lambda v: v >= 1),
    "rates": ("a list of ints >= 1, not empty", lambda v: len(v) > 0 and min(v) >= 1),
    "dropout": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "iterations": ("an int >= 1", lambda v: v >= 1),
    "batch_size": ("an int >= 1", lambda v: v >= 1),
    "lr": ("a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    "walk_lr_mult": ("a finite number > 0", lambda v: math.isfinite(v) and v > 0),
    "momentum": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "weight_decay": ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "power": ("a finite number >= 0", lambda v: math.isfinite(v) and v >= 0),
    "crop_size": ("[h, w], ints >= 8", lambda v: len(v) == 2 and min(v) >= 8),
    "scale_range": (
        "[lo, hi], finite, 0 < lo <= hi",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] and math.isfinite(v[1]),
    ),
    "train_subset": ("an int >= 1, or none for all images", lambda v: v >= 1),
    "val_subset": ("an int >= 1, or none for all images", lambda v: v >= 1),
    "seed": ("an int >= 0", lambda v: v >= 0),
    "device": (
        "auto, cpu, mps, cuda or cuda:N",
        lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v),
    ),
    "num_workers": ("an int >= 0", lambda v: v >= 0),
    "checkpoint_every": ("an int >= 1", lambda v: v >= 1),
    "log_every": ("an int >= 1", lambda v: v >= 1),
}
# Settings that may change when a run is resumed; all others must match the saved config.
RUNTIME_FIELDS = frozenset(
    {
        "out", "progress", "num_workers", "log_every", "checkpoint_every", "device", "root",
        "keep_previous",
    }
)  # fmt: skip
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def _of_type(value: Any, kind: str) -> bool:
    """Whether ``value`` fits one alternative of an annotation (bool is not an int)."""
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind.startswith("dict["):
        return isinstance(value, dict)
    if kind.startswith("list["):
        return isinstance(value, list) and all(_of_type(v, kind[5:-1]) for v in value)
    return isinstance(value, _TYPES[kind]) and not isinstance(value, bool)


def check_type(name: str, value: Any, annotation: str) -> Any:
    """``value`` if it fits ``annotation`` (e.g. ``"list[int] | None"``), ints as floats
    for a float; else a ValueError naming the setting, the value and the type."""
    for kind in (k.strip() for k in annotation.split("|")):
        if _of_type(value, kind):
            if kind == "float":
                return float(value)
            if kind == "list[float]":
                return [float(v) for v in value]
            return value
    raise ValueError(
        f"{name}: expected {annotation.replace('None', 'null')}, got {value!r} "
        f"({type(value).__name__})"
    )


def setting(default: Any, help: str) -> Any:
    """A config field with its ``--help`` text (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TrainConfig:
    """All settings of a run. Defaults are the paper's Cityscapes setting (Appendix A.2.2)."""

    dataset: str = setting("cityscapes", "which data (synthetic: the embedded context task)")
    root: str | None = setting(
        None, "dataset root (synthetic: default data/synthetic_cityscapes, made on first use)"
    )
    out: str = setting("runs/dgmn", "run folder: checkpoint.pt, config.json, log.jsonl")
    # model (sec. 4.1)
    depth: int = setting(101, "ResNet depth of the dilated backbone (output stride 8)")
    width: int = setting(64, "channels of the backbone's stem (64 = the standard ResNet)")
    head_channels: int = setting(512, "C, the channels entering the context module")
    context: str = setting("dgmn", "the context module of the head")
    variant: str = setting(
        "da_dw_ds", "DGMN's paper row or the authors' released layer (dgmn_ref.variants)"
    )
    rates: list[int] | None = setting(
        None,
        "sampling rates replacing the variant's (dgmn) or the module's (deformable, aspp); "
        "the paper's 1 6 12 24 36 suit 97x97 feature maps, a 12x24 map needs smaller ones",
    )
    context_kwargs: dict[str, Any] | None = setting(
        None,
        'further keyword arguments of the context module (JSON), e.g. {"walk_init": "default"}',
    )
    impl: str = setting(
        "auto",
        "DGMN kernels: reference (einops), fast (same numbers) or auto (the faster of the two "
        "for the feature map's size, dgmn_ref.layer.resolve_impl)",
    )
    dropout: float = setting(0.1, "dropout before the classifier")
    pretrained: str | None = setting(None, "ImageNet weights (.pth) for the backbone")
    # schedule (A.2.2)
    optimizer: str = setting(
        "sgd", "sgd (the paper's); adamw learns the small synthetic task far faster"
    )
    iterations: int = setting(40_000, "training iterations (poly schedule length)")
    batch_size: int = setting(8, "global batch, split over the processes")
    lr: float = setting(0.01, "initial learning rate, decayed by the poly rule")
    walk_lr_mult: float = setting(
        1.0,
        "learning-rate multiplier of the walk convolutions (eq. 4) of DGMN and deformable "
        "message passing; deformable convolution's practice is 0.1 for its offsets",
    )
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "weight decay")
    power: float = setting(0.9, "exponent of the poly learning-rate decay")
    # data (A.2.2; scaling as in PSPNet)
    crop_size: list[int] = setting([769, 769], "random crop H W (one value: square)")
    scale_range: list[float] | None = setting(
        [0.5, 2.0], "random scaling LO HI before the crop (none in a config file: off)"
    )
    flip: bool = setting(True, "random horizontal flips")
    train_subset: int | None = setting(None, "train on the first N images only")
    val_subset: int | None = setting(None, "evaluate on the first N images only")
    # runtime
    seed: int = setting(0, "seed of the weights, the shuffle and the augmentations")
    amp: str = setting("auto", "mixed precision: auto = bf16/fp16 on GPUs, off on CPU")
    sync_bn: bool = setting(True, "SyncBatchNorm across processes (CUDA only)")
    freeze_bn: bool = setting(False, "keep BatchNorm in eval mode (running statistics)")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    num_workers: int = setting(4, "DataLoader worker processes")
    checkpoint_every: int = setting(1000, "save checkpoint.pt every N iterations")
    log_every: int = setting(10, "log the loss every N iterations (and at the end)")
    progress: bool = setting(True, "show a progress bar")
    keep_previous: bool = setting(
        False, "also keep the checkpoint before the newest, as checkpoint_previous.pt"
    )

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the bad value and what was expected (type, choice,
        range), or ``FileNotFoundError`` for a missing dataset root or weights file."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_type(f.name, getattr(self, f.name), str(f.type)))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name, (expected, valid) in LIMITS.items():
            value = getattr(self, name)
            if value is not None and not valid(value):
                raise ValueError(f"{name}: expected {expected}, got {value!r}")
        if self.rates is not None and self.context not in RATED_CONTEXTS:
            raise ValueError(f"rates: only for contexts {RATED_CONTEXTS}, not {self.context!r}")
        if self.dataset in ("cityscapes", "coco"):
            if self.root is None:
                raise ValueError(f"root: dataset {self.dataset!r} needs --root DIR")
            if not Path(self.root).is_dir():
                raise FileNotFoundError(
                    f"root: {self.root!r} is not a directory (the {self.dataset} dataset root)"
                )
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FileNotFoundError(f"pretrained: no weights file {self.pretrained!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of ``values`` (e.g. a JSON file), each checked against its type;
        an unknown key is an error naming the closest known one."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown config key {key!r}{hint} (known: {', '.join(known)})")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        return cls(**{k: check_type(k, v, types[k]) for k, v in values.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"config file {path}: malformed JSON: {err.msg} at line {err.lineno} "
                f"column {err.colno}"
            ) from err
        if not isinstance(values, dict):
            raise ValueError(f"config file {path}: expected a JSON object of settings")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed_settings(self, saved: TrainConfig) -> list[str]:
        """The fields outside :data:`RUNTIME_FIELDS` whose value differs from ``saved``."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.name not in RUNTIME_FIELDS and getattr(self, f.name) != getattr(saved, f.name)
        ]

    def num_classes(self) -> int:
        return len(self.class_names())

    def class_names(self) -> tuple[str, ...]:
        """Cityscapes' 19 classes; for COCO the annotation files' own categories (the 80
        of COCO 2017 in the real files), so a set of its own is named correctly."""
        if self.dataset != "coco":
            return CITYSCAPES_CLASSES
        return _coco_class_names(str(Path(self.root).resolve()))


@functools.lru_cache(maxsize=8)
def _coco_class_names(root: str) -> tuple[str, ...]:
    """Background + the categories of the COCO splits present (train and val must agree)."""
    from dgmn_ref.data.check import coco_class_names

    splits = [
        s
        for s in ("train2017", "val2017")
        if (Path(root) / "annotations" / f"instances_{s}.json").is_file()
    ]
    if not splits:
        raise FileNotFoundError(f"root: no annotations/instances_{{train,val}}2017.json in {root}")
    return coco_class_names(root, splits)
