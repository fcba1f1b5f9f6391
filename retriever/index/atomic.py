"""Crash-safe files of the index caches: atomic writes and the pointer files that name them.

An index is saved as data files plus a small JSON pointer (``<name>.json``) written last,
each written to a temp file, fsynced and renamed, so a crash at any moment leaves either the
old or the new index with the change-log position it really covers.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from retriever.errors import StoreError

__all__ = ["atomic_write_bytes", "load_pointer", "pointer_path"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync and rename, then fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pointer_path(directory: Path, name: str) -> Path:
    """The pointer file of index ``name`` in ``directory``."""
    return directory / f"{name}.json"


def load_pointer(directory: Path, name: str) -> dict[str, Any] | None:
    """The saved pointer of index ``name``; None when there is none, StoreError when it is unreadable."""
    path = pointer_path(directory, name)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"index pointer {path} is unreadable ({exc}); run `mmrag repair`") from exc
    if not isinstance(data, dict):
        raise StoreError(f"index pointer {path} holds {type(data).__name__}, not an object; run `mmrag repair`")
    return data
