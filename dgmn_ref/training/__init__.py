"""Training and evaluation of the DGMN segmentation model (Appendix A.2.2).

* :mod:`~dgmn_ref.training.config`: :class:`TrainConfig`, every setting with its help text;
* :mod:`~dgmn_ref.training.build`: the model, data, optimizer and poly schedule of a config;
* :mod:`~dgmn_ref.training.loop`: :func:`train` (open, resume, step, log, save);
* :mod:`~dgmn_ref.training.evaluate`: :func:`evaluate` (mIoU, all-reduced);
* :mod:`~dgmn_ref.training.checkpoint`: the run folder (atomic saves, exact resume);
* :mod:`~dgmn_ref.training.integrity` / :mod:`~dgmn_ref.training.guard`: checkpoints
  sealed and verified, no non-finite state saved;
* :mod:`~dgmn_ref.training.distributed`: processes, devices, mixed precision.

The command lines ``dgmn-ref train`` and ``dgmn-ref evaluate`` are in :mod:`dgmn_ref.cli`.
"""

from dgmn_ref.training.build import build_dataset, build_model, poly_lr
from dgmn_ref.training.checkpoint import atomic_save, load_run, seed_everything
from dgmn_ref.training.config import TrainConfig
from dgmn_ref.training.evaluate import evaluate
from dgmn_ref.training.loop import train

__all__ = [
    "TrainConfig",
    "atomic_save",
    "build_dataset",
    "build_model",
    "evaluate",
    "load_run",
    "poly_lr",
    "seed_everything",
    "train",
]
