"""The store's cross-process write lock: one writer at a time, readers never take it.

The lock file holds ``pid N`` of its holder while held, so a second writer can say who
is writing. It is seen by the processes of one machine only; with a PostgreSQL catalog,
shared by store directories on several machines, ``Store.write_lock`` also holds the
catalog's advisory lock (``retriever.catalog.connection.CatalogBase.writer_lock``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import portalocker

from retriever.errors import StoreError, StoreLockedError

__all__ = ["hold_write_lock", "write_lock_held"]


@contextlib.contextmanager
def hold_write_lock(path: Path, store: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock at ``path`` (of the store at ``store``), waiting up to ``wait_s`` seconds for it.

    StoreLockedError, naming the holder, when another process (or another Engine of this one)
    keeps it longer.
    """
    try:
        fh = open(path, "a+")
    except OSError as exc:
        raise StoreError(f"cannot take the write lock of store {store}: {exc.strerror or exc}") from exc
    try:
        _acquire(fh, store, time.monotonic() + max(0.0, wait_s))
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(Exception):
            fh.seek(0)
            fh.truncate()
            fh.flush()
            portalocker.unlock(fh)
        fh.close()


def _acquire(fh: IO[str], store: Path, deadline: float) -> None:
    while True:
        try:
            portalocker.lock(fh, portalocker.LOCK_EX | portalocker.LOCK_NB)
            return
        except portalocker.LockException:
            if time.monotonic() >= deadline:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if holder == f"pid {os.getpid()}":
                    holder = f"another Engine or Store in this same process (pid {os.getpid()})"
                raise StoreLockedError(
                    f"store {store} is being written by {holder}; wait for it to finish "
                    f"(or set ingest.lock_wait_s to wait)"
                ) from None
            time.sleep(0.1)


def write_lock_held(path: Path) -> bool:
    """Whether some process holds the lock at ``path`` now (readers use it to flag transient findings)."""
    if not path.exists():
        return False
    try:
        with open(path, "rb") as fh:
            portalocker.lock(fh, portalocker.LOCK_SH | portalocker.LOCK_NB)
            portalocker.unlock(fh)
        return False
    except portalocker.LockException:
        return True
    except OSError:
        return False
