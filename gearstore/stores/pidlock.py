"""One store, one server: an exclusive, non-blocking flock on a file holding our pid.

Used by the stores that live in local files (SQLite, the journal). The lock goes away
with the process, so a kill -9 never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from gearstore.stores.base import StoreError, StoreLocked


def lock_exclusively(
    path: str | Path, unwritable: Callable[[str], str], in_use: Callable[[str], str]
) -> int:
    """Lock ``path`` and write this process's pid into it; return the descriptor
    (closing it releases the lock).

    ``unwritable(reason)`` and ``in_use(holder_pid)`` build the operator's messages for
    :class:`StoreError` and :class:`StoreLocked`.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(unwritable(exc.strerror or str(exc))) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(in_use(holder)) from exc
    except OSError as exc:
        os.close(fd)
        raise StoreError(unwritable(exc.strerror or str(exc))) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
