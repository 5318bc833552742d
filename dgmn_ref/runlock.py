"""One writer per run folder, and no temporary files of dead writers left behind.

* :class:`RunLock`: ``RUN/run.lock`` holds the pid and host of the process writing the run;
  a second writer is refused with a :class:`RunLockedError` naming them. The lock is an
  ``flock`` on that file, so it is stale, and taken over, as soon as its process is gone
  (even after ``kill -9``); the file is removed on a clean release.
* :func:`remove_stale_tmp`: the ``.NAME.tmp-PID[-...]`` files and folders of atomic writes
  (checkpoints, generated datasets) whose process ``PID`` is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK", "RunLock", "RunLockedError", "pid_alive", "remove_stale_tmp"]

LOCK = "run.lock"
# ".checkpoint.pt.tmp-1234" (atomic_save) or ".synthetic_coco.tmp-1234-9f2c1a7b" (atomic_dir)
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(-[0-9a-f]+)?$")


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders of dead writers in ``folder``.

    Args:
        folder: where atomic writes put their ``.NAME.tmp-PID[-HEX]`` siblings.
        name: only those of this target name (e.g. ``"checkpoint.pt"``); all if None.

    Returns:
        the removed paths (those of live processes, this one included, are kept).
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = _TMP.match(path.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class RunLock:
    """The exclusive writer lock of a run folder (a context manager).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as run, RunLock(run) as lock:
        ...     sorted(lock.holder())
        ['host', 'pid', 'since']
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None  # the stale holder taken over, if any

    def holder(self) -> dict[str, Any] | None:
        """``{"pid", "host", "since"}`` written in the lock file, None if absent or unreadable."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self.holder() or {}
                raise RunLockedError(
                    f"{self.path.parent} is being written by another run (pid "
                    f"{holder.get('pid', '?')} on host {holder.get('host', '?')} since "
                    f"{holder.get('since', '?')}; lock file {self.path}); wait for it to "
                    "finish or stop it, or use another output folder"
                ) from None
            # the file may have been released and removed between open and flock: retry
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous = self.holder()
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and unlock (a no-op if not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
