"""Where a run executes: torchrun's processes, the device of a process, mixed precision.

* :func:`setup_distributed` joins the process group torchrun describes; :func:`rank_and_world`
  is the one place that asks which process this is; :func:`global_mean` averages a value
  over the processes.
* :class:`ResumableSampler` restarts part-way into an epoch (exact resume) and
  :class:`Shard` splits an evaluation set without padding (exact metrics).
* :func:`amp_dtype` / :func:`autocast` map a mixed-precision mode to torch's autocast.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "DistInfo",
    "ResumableSampler",
    "Shard",
    "amp_dtype",
    "autocast",
    "global_mean",
    "rank_and_world",
    "resolve_device",
    "setup_distributed",
]

# the explicit mixed-precision modes (``auto`` picks one of them on a GPU, none on a CPU)
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the joined process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_mean(value: Tensor, world_size: int) -> Tensor:
    """The mean of ``value`` over the processes (a detached copy; ``value`` itself if one)."""
    if world_size == 1:
        return value.detach()
    total = value.detach() / world_size
    dist.all_reduce(total)
    return total


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``mode`` (``auto``, ``off``, ``bf16``, ``fp16``, or ``none`` =
    ``off``): ``auto`` is bf16 on GPUs that support it, else fp16; none on CPU."""
    if mode in ("off", "none") or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode not in AMP_DTYPES:
        raise ValueError(f"amp: expected auto, off, bf16 or fp16, got {mode!r}")
    return AMP_DTYPES[mode]


def autocast(mode: str, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` in the dtype of ``mode``, or a no-op context without one."""
    dtype = amp_dtype(mode, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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


class Shard(Dataset):
    """Every ``world``-th item from ``rank``: disjoint shards, no padding (exact metrics)."""

    def __init__(self, dataset: Dataset, rank: int, world: int) -> None:
        self.dataset, self.indices = dataset, list(range(rank, len(dataset), world))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]
