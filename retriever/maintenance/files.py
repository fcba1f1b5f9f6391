"""The file-level checks of ``verify``: thumbnails and previews, orphan files, source files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from retriever.maintenance.report import ERROR, WARNING, Problem, ids_problem
from retriever.store import Store
from retriever.types import SourceStatus

__all__ = ["check_index_files", "check_media", "check_sources", "index_files_in_use", "media_refs", "readable_image"]


def media_refs(store: Store) -> dict[str, list[int]]:
    """Relative media path -> the items that refer to it."""
    refs: dict[str, list[int]] = {}
    for batch in store.catalog.item_summaries():
        for item in batch:
            for rel in item.media:
                refs.setdefault(rel, []).append(item.id)
    return refs


def readable_image(path: Path) -> str | None:
    """None if ``path`` decodes as an image, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return None
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # any decoder failure means unreadable
        return f"unreadable ({type(exc).__name__}: {exc})"


def check_media(store: Store) -> list[Problem]:
    refs = media_refs(store)
    bad: dict[str, list[int]] = {"missing": [], "unreadable": []}
    example: dict[str, str] = {}
    for rel, ids in refs.items():
        path = store.root / rel
        why = "unreadable (outside the store)" if not _inside(store.root, path) else readable_image(path)
        if why is not None:
            kind = "missing" if why == "missing" else "unreadable"
            bad[kind] += ids
            example.setdefault(kind, f"{rel}: {why}")
    out = [
        ids_problem(f"media_{kind}", ERROR, "{n} item(s) refer to a " + kind + " thumbnail or preview, e.g. "
                     + example[kind], ids)
        for kind, ids in bad.items() if ids
    ]
    orphans = [p for p in _media_files(store) if p.relative_to(store.root).as_posix() not in refs]
    if orphans:
        out.append(Problem("media_orphan", WARNING, f"{len(orphans)} media file(s) belong to no item, e.g. "
                           f"{orphans[0].relative_to(store.root)}", count=len(orphans), path=str(orphans[0])))
    return out


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def _media_files(store: Store) -> list[Path]:
    out: list[Path] = []
    for base in (store.thumb_dir, store.preview_dir):
        if base.is_dir():
            out += sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink())
    return out


def index_files_in_use(store: Store) -> set[str]:
    """Names under ``indexes/`` that a pointer refers to (plus the pointers themselves)."""
    keep: set[str] = set()
    for pointer in store.index_dir.glob("*.json"):
        keep.add(pointer.name)
        try:
            meta = json.loads(pointer.read_text())
        except (OSError, ValueError):
            continue
        for key in ("file", "dir"):
            if isinstance(meta, dict) and isinstance(meta.get(key), str):
                keep.add(meta[key])
    return keep


def check_index_files(store: Store) -> list[Problem]:
    if not store.index_dir.is_dir():
        return []
    keep = index_files_in_use(store)
    stray = sorted(p.name for p in store.index_dir.iterdir() if p.name not in keep)
    if not stray:
        return []
    return [Problem("index_stray", WARNING, f"{len(stray)} file(s) in {store.index_dir} belong to no index "
                    f"(left by an interrupted save), e.g. {stray[0]}", count=len(stray), path=str(store.index_dir))]


def check_sources(store: Store, hash_all: bool) -> list[Problem]:
    """Files of ingested sources that vanished or changed since (size/mtime, then content hash)."""
    gone: list[str] = []
    changed: list[str] = []
    for src in store.catalog.sources(status=SourceStatus.OK):
        try:
            st = os.stat(src.uri)
        except OSError:
            gone.append(src.uri)
            continue
        same_stat = st.st_size == src.size and src.mtime is not None and abs(st.st_mtime - src.mtime) < 1e-3
        if same_stat and not hash_all:
            continue
        if src.content_hash is None or _hash_file(Path(src.uri)) != src.content_hash:
            changed.append(src.uri)
    out = []
    if gone:
        out.append(Problem("source_missing", WARNING, f"{len(gone)} ingested file(s) no longer exist, e.g. {gone[0]} "
                           "(`mmrag ingest --prune` or `mmrag remove` drops them)", count=len(gone), path=gone[0]))
    if changed:
        out.append(Problem("source_changed", WARNING, f"{len(changed)} file(s) changed since they were ingested, e.g. "
                           f"{changed[0]} (`mmrag ingest` updates them)", count=len(changed), path=changed[0]))
    return out


def _hash_file(path: Path, chunk: int = 1 << 20) -> str | None:
    """The content hash the ingest pipeline records (``indexers.ingest.pipeline.hash_file``)."""
    h = hashlib.blake2b(digest_size=20)
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError:
        return None
    return "blake2b:" + h.hexdigest()
