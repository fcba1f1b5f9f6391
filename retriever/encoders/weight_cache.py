"""Model weights kept as the model holds them after loading: converted, in the precision in use.

Loading ViT-B/32 the ordinary way builds the model with random initial weights, reads the
600 MB float32 checkpoint and converts it to bf16 parameter by parameter. An entry of this
cache is one safetensors file under ``<cache dir>/weights/`` (``MMRAG_CACHE``, default
``~/.cache/mmrag``) holding every tensor of the loaded model as it is (mixed bf16/fp32 after
open_clip's conversion; buffers that ``state_dict`` leaves out too) and, in its metadata,
facts learnt at load time (whether the trimmed CLIP text tower matched the full one), so a
later load builds an empty model and takes the tensors as they are, with no conversion and
no check. The key hashes whatever changes the result: the model's identity with the content
hash of its weights, the precision, the kind of device, the creation arguments and the torch
and open_clip versions. Writes are atomic (temporary file, fsync, rename); an entry that does
not read back (truncated, garbage, other tensors, NaN in a sample) is deleted and rebuilt;
the ``KEEP`` most recently used entries stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.config.env import cache_dir

__all__ = ["FORMAT", "KEEP", "CacheEntry", "entry_for", "read_entry", "write_entry"]

FORMAT = "1"
KEEP = 6
_SUFFIX = ".safetensors"
_STALE_TMP_S = 3600.0
_SAMPLE = 256  # values checked at each end of every tensor
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """Where one model's converted weights live, and the key its metadata must carry."""

    path: Path
    key: str


def entry_for(label: str, identity: Mapping[str, Any], root: Path | None = None) -> CacheEntry:
    """The entry for a model described by ``identity`` (JSON-able); ``label`` makes the name readable."""
    text = json.dumps({**identity, "format": FORMAT}, sort_keys=True, default=str)
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._")[:60] or "model"
    folder = (root or cache_dir()) / "weights"
    return CacheEntry(folder / f"{safe}-{key[:16]}{_SUFFIX}", key)


def read_entry(entry: CacheEntry, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]] | None:
    """The entry's tensors (on ``device``) and facts; None when it is missing or broken (then deleted)."""
    if not entry.path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(entry.path), framework="pt", device=device) as fh:
            meta = dict(fh.metadata() or {})
            if meta.get("mmrag_key") != entry.key:
                raise ValueError(f"its key {meta.get('mmrag_key')!r} is not {entry.key!r}")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        _check_no_nan(tensors)
    except Exception as exc:  # safetensors raises its own error type for a bad header or size
        log.warning("cached model weights %s are unreadable (%s: %s); rebuilding them",
                    entry.path, type(exc).__name__, exc)
        discard(entry)
        return None
    with contextlib.suppress(OSError):
        os.utime(entry.path)  # most recently used: kept by the pruning in write_entry
    facts = {k[len("fact."):]: v for k, v in meta.items() if k.startswith("fact.")}
    return tensors, facts


def write_entry(entry: CacheEntry, tensors: Mapping[str, Any], facts: Mapping[str, str]) -> bool:
    """Store ``tensors`` (CPU, contiguous) and ``facts`` atomically; False (logged) when it cannot."""
    from safetensors.torch import save_file

    folder = entry.path.parent
    metadata = {"mmrag_key": entry.key, "format": FORMAT, **{f"fact.{k}": str(v) for k, v in facts.items()}}
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=_SUFFIX)
        os.close(fd)
        save_file(dict(tensors), tmp, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, entry.path)
        tmp = None
        _fsync_dir(folder)
    except Exception as exc:  # a full disk, a read-only cache, tensors safetensors cannot store
        log.info("could not cache model weights in %s: %s: %s", folder, type(exc).__name__, exc)
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _prune(folder, keep=entry.path)
    return True


def discard(entry: CacheEntry) -> None:
    with contextlib.suppress(OSError):
        entry.path.unlink()


def _check_no_nan(tensors: Mapping[str, Any]) -> None:
    """The first and last values of each tensor hold no NaN (masks may hold -inf; bytes that are not
    weights almost always have a NaN among a few hundred values). Only a sample: the tensors map the
    file lazily, and reading all of it would cost more than the load it saves (a text query never
    touches the image tower's pages)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel():
            flat = tensor.reshape(-1)
            if bool(torch.isnan(flat[:_SAMPLE]).any()) or bool(torch.isnan(flat[-_SAMPLE:]).any()):
                raise ValueError(f"tensor {name!r} has NaN values")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _prune(folder: Path, keep: Path) -> None:
    """Leave the ``KEEP`` most recently used entries (and ``keep``); remove stale temporary files."""
    now = time.time()
    entries = []
    for path in folder.glob(f"*{_SUFFIX}"):
        with contextlib.suppress(OSError):
            mtime = path.stat().st_mtime
            if path.name.startswith(".tmp-"):
                if now - mtime > _STALE_TMP_S:
                    path.unlink()
            else:
                entries.append((mtime, path))
    for _mtime, path in sorted(entries, reverse=True)[KEEP:]:
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()
