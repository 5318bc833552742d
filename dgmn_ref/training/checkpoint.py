"""A run on disk: ``checkpoint.pt``, ``config.json``, ``log.jsonl`` in the run folder.

:func:`atomic_save` never leaves a half-written checkpoint and seals it with a content
hash, :func:`prepare_out_dir` never silently replaces a run, :func:`load_run` reads one
back (``weights_only``) and verifies the hash (:mod:`~dgmn_ref.training.integrity`),
:func:`truncate_log` drops the log lines a resumed run will write again, and the RNG
states of python, numpy and torch travel in the checkpoint so that a resumed run draws the
same numbers as an uninterrupted one. :func:`checkpoint_state` / :func:`restore_state`
are the two ends of what a checkpoint holds.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dgmn_ref.training.integrity import CheckpointError, seal, state_bytes, verify, write_error

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "LOG",
    "atomic_save",
    "checkpoint_state",
    "load_run",
    "prepare_out_dir",
    "restore_state",
    "truncate_log",
    "rng_states",
    "seed_everything",
    "set_rng_states",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LOG = "log.jsonl"
PREVIOUS = "checkpoint_previous.pt"  # the checkpoint before the newest (keep_previous)


def atomic_save(obj: dict[str, Any], path: str | Path, *, keep_previous: bool = False) -> Path:
    """``torch.save`` of ``obj`` sealed with its integrity record, to a temporary file in
    the same folder, then ``os.replace``: a reader sees the old file or the new one, never
    half of one; nothing is left if saving fails, and the :class:`OSError` names the path
    (a full disk says so, see :func:`~dgmn_ref.training.integrity.write_error`).

    ``keep_previous`` first links the old file to ``checkpoint_previous.pt`` beside it.
    ``DGMN_SAVE_DELAY`` (seconds; for the fault tests) sleeps before the rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(seal(obj), tmp)
        if os.environ.get("DGMN_SAVE_DELAY"):
            time.sleep(float(os.environ["DGMN_SAVE_DELAY"]))
        if keep_previous and path.is_file():
            link = path.with_name(f".{PREVIOUS}.tmp-{os.getpid()}")
            link.unlink(missing_ok=True)
            os.link(path, link)
            os.replace(link, path.with_name(PREVIOUS))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise write_error(err, tmp, state_bytes(obj)) from err
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
    ``overwrite`` deletes its checkpoints, config and log (nothing else); both is an error."""
    if resume and overwrite:
        raise ValueError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            f"{out}, --overwrite deletes it; pass one"
        )
    ours = [out / name for name in (CHECKPOINT, PREVIOUS, CONFIG, LOG)]
    existing = [p for p in ours if p.exists()]
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise FileNotFoundError(
                f"--resume: no {CHECKPOINT} in {out} to resume from"
                + (" (the run stopped before its first checkpoint; start it again with "
                   "--overwrite)" if existing else "")
            )  # fmt: skip
        return
    if existing and not overwrite:
        hint = "pass --resume to continue it or --overwrite to replace it"
        if not (out / CHECKPOINT).is_file():
            hint = "it has no checkpoint to resume from: pass --overwrite to start it again"
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(p.name for p in existing)}); {hint}"
        )
    for p in existing:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def truncate_log(out: Path, iteration: int) -> None:
    """Keep only the ``log.jsonl`` records up to ``iteration`` (a resumed run writes the
    later ones again); torn last lines of a killed writer are dropped too."""
    log = out / LOG
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("iteration", 0) <= iteration:
            kept.append(line + "\n")
    tmp = log.with_name(f".{LOG}.tmp-{os.getpid()}")
    tmp.write_text("".join(kept))
    os.replace(tmp, log)


def load_run(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    threads: int | None = None,
) -> dict[str, Any]:
    """A checkpoint (``checkpoint.pt`` or the run folder holding it), with ``weights_only``,
    verified against its integrity record (and the thread count, if ``threads`` is given).

    Raises:
        FileNotFoundError: no checkpoint there.
        CheckpointError: empty, not a checkpoint, truncated, corrupted, or written with
            another thread count; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (expected a run folder or .pt file)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it cannot be used")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises EOFError, KeyError, RuntimeError, UnpicklingError
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is not a readable torch checkpoint: it is "
            f"truncated, corrupted or another kind of file ({type(err).__name__}: {err})"
        ) from err
    return verify(state, path, threads=threads)


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
