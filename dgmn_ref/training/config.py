"""Every setting of a training run, Appendix A.2.2; saved as ``config.json`` beside the checkpoint.

Each field carries its help text (``dgmn-ref train --help`` shows it with the default).
To add a setting: add a field with :func:`setting`; if it has a fixed set of values, add it
to :data:`CHOICES`; if it may change on ``--resume``, to :data:`RUNTIME_FIELDS`; further
checks go in :meth:`TrainConfig.check`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from dgmn_ref.data.labels import CITYSCAPES_CLASSES, COCO_SEMANTIC_CLASSES
from dgmn_ref.layer import IMPLS
from dgmn_ref.models import CONTEXTS, DEPTHS
from dgmn_ref.variants import PAPER_VARIANTS

__all__ = [
    "AMP_MODES",
    "CHOICES",
    "DATASETS",
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
    "variant": tuple(sorted(PAPER_VARIANTS)),
    "impl": IMPLS,
    "amp": AMP_MODES,
    "depth": tuple(sorted(DEPTHS)),
    "optimizer": OPTIMIZERS,
}
# Settings that may change when a run is resumed; all others must match the saved config.
RUNTIME_FIELDS = frozenset(
    {"out", "progress", "num_workers", "log_every", "checkpoint_every", "device", "root"}
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
    variant: str = setting("da_dw_ds", "DGMN's paper variant (dgmn_ref.variants)")
    rates: list[int] | None = setting(
        None,
        "sampling rates replacing the variant's (dgmn) or the module's (deformable, aspp); "
        "the paper's 1 6 12 24 36 suit 97x97 feature maps, a 12x24 map needs smaller ones",
    )
    context_kwargs: dict[str, Any] | None = setting(
        None,
        'further keyword arguments of the context module (JSON), e.g. {"walk_init": "default"}',
    )
    impl: str = setting("fast", "DGMN kernels: reference (einops) or fast (same numbers)")
    dropout: float = setting(0.1, "dropout before the classifier")
    pretrained: str | None = setting(None, "ImageNet weights (.pth) for the backbone")
    # schedule (A.2.2)
    optimizer: str = setting(
        "sgd", "sgd (the paper's); adamw learns the small synthetic task far faster"
    )
    iterations: int = setting(40_000, "training iterations (poly schedule length)")
    batch_size: int = setting(8, "global batch, split over the processes")
    lr: float = setting(0.01, "initial learning rate, decayed by the poly rule")
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

    def check(self) -> TrainConfig:
        """Raise ``ValueError`` naming the bad value and what was expected."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("iterations", "batch_size", "width", "head_channels", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {getattr(self, name)!r}")
        if self.rates is not None:
            if self.context not in RATED_CONTEXTS:
                raise ValueError(f"rates: only for contexts {RATED_CONTEXTS}, not {self.context!r}")
            if not self.rates or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in self.rates
            ):
                raise ValueError(f"rates: expected a list of ints >= 1, got {self.rates!r}")
        if self.context_kwargs is not None and not isinstance(self.context_kwargs, dict):
            raise ValueError(f"context_kwargs: expected a dict, got {self.context_kwargs!r}")
        if len(self.crop_size) != 2:
            raise ValueError(f"crop_size: expected [h, w], got {self.crop_size!r}")
        if self.dataset in ("cityscapes", "coco"):
            if self.root is None:
                raise ValueError(f"root: dataset {self.dataset!r} needs --root DIR")
            if not Path(self.root).is_dir():
                raise FileNotFoundError(
                    f"root: {self.root!r} is not a directory (the {self.dataset} dataset root)"
                )
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

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
        return COCO_SEMANTIC_CLASSES if self.dataset == "coco" else CITYSCAPES_CLASSES
