"""Checkpoints you can trust: a content hash and the thread count, verified on load.

* :func:`save_checkpoint` writes ``state`` plus an ``integrity`` record (the SHA-256 of
  every tensor and value, and ``torch.get_num_threads()``) atomically: a temporary file
  in the same folder, then ``os.replace``. A full disk or an unwritable folder is an
  :class:`OSError` naming the path and what to free.
* :func:`load_checkpoint` reads with ``weights_only=True`` and verifies the record; a
  zero-byte, text, truncated or bit-flipped file is a :class:`CheckpointError` naming it.
* :func:`nonfinite_tensors`: the names of the tensors holding NaN or infinity.

Bit-identical resume holds only at the same thread count (CPU reductions split their work
by thread), so a resumed run compares it: ``load_checkpoint(path, threads=...)``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "INTEGRITY",
    "CheckpointError",
    "load_checkpoint",
    "nonfinite_tensors",
    "save_checkpoint",
    "state_digest",
    "write_error",
]

INTEGRITY = "integrity"  # the key of the record in a saved state


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted (unreadable, corrupted, wrong threads)."""


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted name, leaf)`` of a nested dict / list / tuple, dict keys in sorted order."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=repr):
            yield from _leaves(obj[key], f"{prefix}{key}.")
    elif isinstance(obj, (list, tuple)):
        yield prefix + type(obj).__name__, len(obj)
        for i, item in enumerate(obj):
            yield from _leaves(item, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), obj


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor and the repr of
    every other value of ``state`` (its ``integrity`` record left out)."""
    digest = hashlib.sha256()
    for name, leaf in _leaves({k: v for k, v in state.items() if k != INTEGRITY}):
        digest.update(name.encode())
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(leaf.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{type(leaf).__name__}:{leaf!r}".encode())
    return digest.hexdigest()


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Dotted names of the floating-point tensors of ``state`` holding NaN or +-inf."""
    return [
        name
        for name, leaf in _leaves(state)
        if isinstance(leaf, torch.Tensor)
        and leaf.is_floating_point()
        and not bool(torch.isfinite(leaf).all())
    ]


def write_error(err: BaseException, path: str | Path, needed: int | None = None) -> OSError:
    """An :class:`OSError` for a failed write of ``path`` that says why and what to do.

    torch's zip writer reports a full disk as ``[enforce fail ...] unexpected pos`` with no
    errno, so the free space of the folder decides: less than ``needed`` bytes (or under
    1 MiB when unknown) means the disk is full.
    """
    path = Path(path)
    folder = path.parent
    code = getattr(err, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OSError(
            code,
            f"cannot write {path}: the folder {folder} is not writable ({err}); "
            "fix its permissions or choose another output folder",
        )
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    full = code in (errno.ENOSPC, errno.EDQUOT) or (
        free is not None and free < max(needed or 0, 2**20)
    )
    if full:
        need = f"; it needs about {needed / 2**20:.1f} MiB" if needed else ""
        have = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
        return OSError(
            errno.ENOSPC,
            f"no space left on device writing {path} ({have} in {folder}{need}); "
            "free disk space there (old runs, data caches) and try again",
        )
    return OSError(code or errno.EIO, f"could not write {path}: {err}")


def _state_bytes(state: dict[str, Any]) -> int:
    return sum(
        leaf.element_size() * leaf.numel()
        for _, leaf in _leaves(state)
        if isinstance(leaf, torch.Tensor)
    )


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` and its integrity record atomically; return ``path``.

    A reader sees the old file or the new one, never half of one, and nothing is left
    behind when writing fails (the :class:`OSError` names the path; see
    :func:`write_error`). ``DGMN_SAVE_DELAY`` (seconds, for the fault tests) sleeps
    between writing the temporary file and renaming it.
    """
    path = Path(path)
    record = {"sha256": state_digest(state), "torch_threads": torch.get_num_threads()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({**state, INTEGRITY: record}, tmp)
        if os.environ.get("DGMN_SAVE_DELAY"):
            time.sleep(float(os.environ["DGMN_SAVE_DELAY"]))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise write_error(err, tmp, _state_bytes(state)) from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    threads: int | None = None,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and verify its record.

    Args:
        path: the ``.pt`` file.
        threads: if given, the thread count this process runs with; a different recorded
            count is an error (a resumed run would not be bit-identical).

    Returns:
        the state as saved (with its ``integrity`` record).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, not a checkpoint, truncated or corrupted, or
            was written with another thread count; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
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
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}; expected a dict of states"
        )
    record = state.get(INTEGRITY)
    if record is None:
        warnings.warn(
            f"checkpoint {path} has no integrity record (written before dgmn_ref recorded "
            "one); it is loaded unverified",
            stacklevel=2,
        )
        return state
    if state_digest(state) != record.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its content hash does not match the SHA-256 "
            "recorded when it was written; restore it from a copy or start the run again"
        )
    if threads is not None and record.get("torch_threads") != threads:
        raise CheckpointError(
            f"checkpoint {path} was written with {record.get('torch_threads')} torch threads "
            f"but this process runs {threads}; a resumed run is bit-identical only at the "
            f"same count: set OMP_NUM_THREADS={record.get('torch_threads')}"
        )
    return state
