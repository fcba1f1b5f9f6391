"""Content hashes of model files, remembered between processes.

A model's identity (``ClipSpec.model_id``, the text model's id) includes the SHA-256 of its
weight files, and every ``Engine.open`` checks it against the store's manifest. Hashing a
600 MB ViT-B/32 checkpoint takes about half a second of CPU, in every one-shot ``mmrag search``;
so the hash of a large file is kept in ``<cache dir>/fingerprints.json`` (``MMRAG_CACHE``,
default ``~/.cache/mmrag``) under its path, size, mtime, ctime and inode, the way build tools
and git's index trust file metadata: rewriting a file changes its ctime, which no tool can set
back. Small files are hashed every time. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from retriever.config.env import cache_dir
from retriever.errors import ModelLoadError

__all__ = ["DISK_MIN_BYTES", "sha256_of"]

DISK_MIN_BYTES = 1 << 20  # files from this size up are remembered
_KEEP = 512  # entries kept, most recently used first
_FILE = "fingerprints.json"
_lock = threading.Lock()
log = logging.getLogger(__name__)


def sha256_of(path: str, st: os.stat_result) -> str:
    """The hex SHA-256 of ``path`` whose ``os.stat`` is ``st``: remembered for large files."""
    if st.st_size < DISK_MIN_BYTES:
        return _hash_file(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    store = Path(cache_dir()) / _FILE
    with _lock:
        entry = _read(store).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
        return str(entry["sha256"])
    digest = _hash_file(path)
    with _lock:
        _remember(store, key, digest)
    return digest


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return h.hexdigest()


def _read(store: Path) -> dict[str, Any]:
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _remember(store: Path, key: str, digest: str) -> None:
    """Add one entry (atomic replace); drop entries of files that are gone and the least recently used."""
    files = _read(store)
    files[key] = {"sha256": digest, "used": time.time()}
    live = {k: v for k, v in files.items() if isinstance(v, dict) and os.path.exists(k.split("|", 1)[0])}
    newest = sorted(live.items(), key=lambda kv: -float(kv[1].get("used", 0)))[:_KEEP]
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".fingerprints-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "files": dict(newest)}, fh)
            os.replace(tmp, store)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("could not remember the hash of a model file in %s: %s", store, exc)

