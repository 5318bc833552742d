"""What a training run needs besides the model: processes, devices, precision, checkpoints.

* torchrun's process group (:func:`setup_distributed`), the device of a rank, the autocast
  dtype of a mixed-precision mode;
* :class:`ResumableSampler`, which restarts part-way into an epoch, and the RNG states, so
  that a resumed run reads the same batches and draws the same numbers;
* :func:`atomic_save` (never a half-written checkpoint), :func:`prepare_out_dir` (never a
  silently replaced run) and :func:`load_run`.

Used by :mod:`dgmn_ref.train`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "DistInfo",
    "ResumableSampler",
    "amp_dtype",
    "atomic_save",
    "load_run",
    "prepare_out_dir",
    "rng_states",
    "set_rng_states",
    "resolve_device",
    "seed_everything",
    "setup_distributed",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1):
    NCCL on GPUs, gloo on CPUs. A single process needs no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        created = True
    return DistInfo(rank, world, local, created)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` is bf16 on GPUs that support it, else fp16; none on CPU."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


class ResumableSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can start part-way into an epoch.

    The shuffle of epoch ``e`` depends only on ``(seed, e)`` and every process sees a
    disjoint shard, so the position ``(epoch, start)`` (``start`` = samples of this shard
    already consumed) is all a resumed run needs to read the same batches again.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


# ----------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a reader
    sees the old file or the new one, never half of one; nothing is left if saving fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def rng_states() -> dict[str, Any]:
    """RNG states of python, numpy and torch in types ``torch.load(weights_only=True)``
    accepts (the numpy key array as a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an existing run unless asked: ``resume`` continues it,
    ``overwrite`` deletes its checkpoint, config and log (nothing else)."""
    ours = [out / name for name in (CHECKPOINT, CONFIG, LOG)]
    existing = [p for p in ours if p.exists()]
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: no {CHECKPOINT} in {out} to resume from")
        return
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(p.name for p in existing)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    for p in existing:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint (``checkpoint.pt`` or the run folder holding it), with ``weights_only``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a run folder or .pt file)")
    return torch.load(path, map_location=map_location, weights_only=True)
