"""A run on disk: ``checkpoint.pt``, ``config.json``, ``log.jsonl`` in the run folder.

:func:`atomic_save` never leaves a half-written checkpoint, :func:`prepare_out_dir` never
silently replaces a run, :func:`load_run` reads one back (``weights_only``), and the RNG
states of python, numpy and torch travel in the checkpoint so that a resumed run draws the
same numbers as an uninterrupted one. :func:`checkpoint_state` / :func:`restore_state`
are the two ends of what a checkpoint holds.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "atomic_save",
    "checkpoint_state",
    "load_run",
    "prepare_out_dir",
    "restore_state",
    "rng_states",
    "seed_everything",
    "set_rng_states",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"


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


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    iteration: int,
    sampler: dict[str, int],
    rng: list[dict[str, Any]],
    config: dict[str, Any],
) -> dict[str, Any]:
    """What ``checkpoint.pt`` holds: the weights, the optimizer and scaler, the iteration,
    the sampler position ``{"epoch", "batch"}``, every process's RNG states, the config."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "sampler": sampler,
        "rng": rng,
        "config": config,
        "world_size": len(rng),
    }


def restore_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rank: int,
) -> tuple[int, int, int]:
    """Load a :func:`checkpoint_state` into the objects and this process's RNG; returns
    ``(iteration, epoch, batch_in_epoch)`` to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_states(state["rng"][rank])
    return state["iteration"], state["sampler"]["epoch"], state["sampler"]["batch"]
