"""Checkpoints you can trust: a content hash and the thread count, verified on load.

* :func:`seal` adds an ``integrity`` record to a state (the SHA-256 of every tensor and
  value, and ``torch.get_num_threads()``); :func:`verify` checks a loaded state against
  it. :func:`~dgmn_ref.training.checkpoint.atomic_save` and
  :func:`~dgmn_ref.training.checkpoint.load_run` use both, so a zero-byte, text,
  truncated or bit-flipped file is a :class:`CheckpointError` naming it.
* :func:`write_error`: a full disk or an unwritable folder as an :class:`OSError` naming
  the path and what to free.
* :func:`nonfinite_tensors`: the names of the tensors holding NaN or infinity.

Bit-identical resume holds only at the same thread count (CPU reductions split their work
by thread), so a resumed run compares it: ``load_run(path, threads=...)``.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "INTEGRITY",
    "CheckpointError",
    "nonfinite_tensors",
    "seal",
    "state_bytes",
    "state_digest",
    "verify",
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


def state_bytes(state: dict[str, Any]) -> int:
    """Bytes of the tensors of ``state``: about the size of its checkpoint file."""
    return sum(
        leaf.element_size() * leaf.numel()
        for _, leaf in _leaves(state)
        if isinstance(leaf, torch.Tensor)
    )


def seal(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` plus its ``integrity`` record: the content hash and the thread count."""
    record = {"sha256": state_digest(state), "torch_threads": torch.get_num_threads()}
    return {**state, INTEGRITY: record}


def verify(state: Any, path: str | Path, *, threads: int | None = None) -> dict[str, Any]:
    """Check a loaded checkpoint ``state`` against its ``integrity`` record.

    Args:
        path: the file it was read from (for the messages).
        threads: if given, the thread count this process runs with; a different recorded
            count is an error (a resumed run would not be bit-identical).

    Returns:
        ``state``.

    Raises:
        CheckpointError: not a dict, a hash mismatch, or another thread count; the
            message names the file.
    """
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(state).__name__}; expected a dict of states"
        )
    record = state.get(INTEGRITY)
    if record is None:
        warnings.warn(
            f"checkpoint {path} has no integrity record (written before dgmn_ref recorded "
            "one); it is loaded unverified",
            stacklevel=3,
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
