"""The store directory: catalog, indexes, thumbnails and the manifest of models.

::

    store/
      manifest.json        format version, spaces and the model each was built with
      catalog.sqlite       the source of truth (or any SQLAlchemy URL)
      indexes/             clip-<seq>.faiss + clip.json, text-..., bm25-<seq>/ + bm25.json
      media/thumbs/        one JPEG thumbnail per visual item, named by item id
      media/previews/      larger renders of derived images (PDF pages, figures, keyframes)
      write.lock           held by the one writer (with a PostgreSQL catalog, also the catalog's
                           advisory lock, which writers on other machines see)

Opening a store with another model for a space than it was built with fails:
vectors of two models never mix in one index.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retriever.catalog import Catalog
from retriever.config import Config
from retriever.errors import StoreError, StoreMismatchError
from retriever.index.atomic import atomic_write_bytes
from retriever.index.base import IndexBackend, IndexTarget
from retriever.index.registry import backend_for
from retriever.index.spaces import DenseSpace, LexicalSpace, catalog_head
from retriever.lock import hold_write_lock
from retriever.types import Space

__all__ = ["FORMAT_VERSION", "SpaceInfo", "Store"]

FORMAT_VERSION = 2
# 1 -> 2: the text-tower CLIP vectors of text items moved from space "clip" to "clip_texts"
# (upgraded in place on the first writable open; see Store._upgrade_v1)
UPGRADABLE_VERSIONS = (1,)
BM25_TOKENIZER = "words-en-stop-snowball-v1"


@dataclass(frozen=True)
class SpaceInfo:
    """A dense space as recorded in the manifest."""

    name: str
    model_id: str
    dim: int


class Store:
    """Opens (or creates) a store directory and keeps its spaces in step with the catalog."""

    def __init__(self, root: Path | str, config: Config, *, create: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.config = config
        if not self.root.exists():
            if not create:
                raise StoreError(f"no store at {self.root}; create one with `mmrag ingest PATH --store {self.root}`")
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise StoreError(f"cannot create store {self.root}: {exc.strerror or exc}") from exc
        elif not self.root.is_dir():
            raise StoreError(f"store path {self.root} exists and is not a directory")
        self.index_dir = self.root / "indexes"
        self.thumb_dir = self.root / "media" / "thumbs"
        self.preview_dir = self.root / "media" / "previews"
        self.manifest_path = self.root / "manifest.json"
        self.lock_path = self.root / "write.lock"
        self._manifest_sig: tuple[int, int] | None = None
        self.catalog = Catalog.for_store(self.root, config.catalog_url)
        self.manifest = self._read_manifest()
        self.catalog.on_media_deleted = self._delete_media
        self.dense: dict[str, DenseSpace] = {}
        self.lexical = LexicalSpace(self.index_dir, self.catalog, config.index.bm25_refresh_s)
        self._lexical_open = False
        self._lock = threading.RLock()
        self._write_depth = 0  # > 0 while this process holds the write lock
        self._backend: IndexBackend | None = None
        if self.manifest.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            self._upgrade_v1()

    # ---- manifest -----------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        """The manifest file; without one, the copy in the catalog (a second machine that shares
        only the catalog and a Milvus with the writer's machine has no store files of its own)."""
        if not self.manifest_path.exists():
            self._manifest_sig = None
            return self.catalog.get_meta("manifest") or {}
        try:
            self._manifest_sig = _signature(self.manifest_path)
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"store manifest {self.manifest_path} is unreadable: {exc}") from exc
        version = data.get("format_version")
        if version != FORMAT_VERSION and version not in UPGRADABLE_VERSIONS:
            raise StoreError(
                f"store {self.root} has format version {version!r}; this mmrag reads version {FORMAT_VERSION}. "
                + ("Upgrade mmrag to open it." if isinstance(version, int) and version > FORMAT_VERSION else
                   "Re-ingest into a new store.")
            )
        return data

    def _upgrade_v1(self) -> None:
        """Version 1 kept text items' CLIP vectors in "clip" beside the images: move them to "clip_texts".

        Idempotent and crash-safe: the catalog moves in one transaction, the stale "clip" index
        goes next (both CLIP indexes are then rebuilt from the durable vectors, nothing is
        re-encoded), and the manifest is written last, so an interrupted upgrade reruns.
        """
        if self.catalog.read_only:
            raise StoreError(
                f"store {self.root} has format version 1 and this mmrag reads version {FORMAT_VERSION}; it is "
                "upgraded in place (in seconds, without re-encoding) on the first open with write access, "
                "e.g. `mmrag stats`, and this one is read-only"
            )
        with self.write_lock(wait_s=60.0):
            self.manifest = self._read_manifest()  # another process may have upgraded it meanwhile
            if self.manifest.get("format_version") == FORMAT_VERSION:
                return
            self.catalog.move_text_item_vectors(Space.CLIP, Space.CLIP_TEXTS)
            self._discard_index(Space.CLIP)
            spaces = self.manifest.get("spaces", {})
            if Space.CLIP in spaces:
                spaces[Space.CLIP_TEXTS] = dict(spaces[Space.CLIP])
            self.manifest["format_version"] = FORMAT_VERSION
            self._write_manifest()
            with self._writing("the indexes"):
                for name in (Space.CLIP, Space.CLIP_TEXTS):
                    space = self.space(name)  # rebuilt from the catalog: no saved index any more
                    if space is not None:
                        space.save()

    def _write_manifest(self) -> None:
        self.manifest.setdefault("format_version", FORMAT_VERSION)
        self.manifest.setdefault("created_at", datetime.now(timezone.utc).isoformat())
        with self._writing("the manifest"):
            atomic_write_bytes(self.manifest_path, json.dumps(self.manifest, indent=2, sort_keys=True).encode())
        self._manifest_sig = _signature(self.manifest_path)
        if not self.catalog.read_only:
            self.catalog.set_meta("manifest", self.manifest)

    def _refresh_manifest(self) -> None:
        """Re-read the manifest if another process changed it (a reader opened before the first ingest)."""
        sig = _signature(self.manifest_path)
        if sig is None or sig != self._manifest_sig:
            with self._lock:
                self.manifest = self._read_manifest()

    def spaces(self) -> dict[str, SpaceInfo]:
        self._refresh_manifest()
        return {
            name: SpaceInfo(name, s["model_id"], int(s["dim"]))
            for name, s in self.manifest.get("spaces", {}).items()
            if "model_id" in s
        }

    def check_models(self, wanted: Mapping[str, str]) -> None:
        """Fail if a space was built with another model than ``wanted[space]``.

        ``wanted`` maps dense space name to model id; a space missing from it is
        disabled. A store that has items cannot gain or lose a dense space.
        """
        have = {n: s.model_id for n, s in self.spaces().items()}
        if not have or self.catalog.counts()["items"] == 0:
            return  # an empty store takes whatever models its first write brings (register_space)
        problems = [
            f"space '{n}' was built with {have[n]!r} but {wanted[n]!r} was requested"
            for n in have
            if n in wanted and wanted[n] != have[n]
        ]
        problems += [f"space '{n}' ({have[n]!r}) exists but no model was given for it" for n in have if n not in wanted]
        problems += [f"space '{n}' ({wanted[n]!r}) is new but the store already has items" for n in wanted if n not in have]
        if problems:
            hint = ""
            if Space.CLIP_TEXTS in have.keys() ^ wanted.keys():
                hint = f" (models.clip_texts was {'true' if Space.CLIP_TEXTS in have else 'false'} when it was built)"
            raise StoreMismatchError(
                f"store {self.root} does not match the requested models: " + "; ".join(problems) + hint
                + ". Leave the model settings unset to use the store's own models (see `mmrag stats`), "
                "or use a new store."
            )

    def register_space(self, name: str, model_id: str, dim: int) -> None:
        """Record a dense space in the manifest (first use) and check it afterwards.

        A store without items is re-targeted instead: a first ingest whose model never loaded
        must not pin the store to that model.
        """
        with self._lock:
            spaces = self.manifest.setdefault("spaces", {})
            known = spaces.get(name)
            if known is not None and (known["model_id"] != model_id or int(known["dim"]) != dim) and (
                self.catalog.counts()["items"] == 0
            ):
                self._drop_space(name)
                known = None
            if known is not None and (known["model_id"] != model_id or int(known["dim"]) != dim):
                raise StoreMismatchError(
                    f"space '{name}' was built with {known['model_id']!r} ({known['dim']}-d), "
                    f"not {model_id!r} ({dim}-d)"
                )
            if known is None:
                spaces[name] = {"model_id": model_id, "dim": int(dim)}
                spaces.setdefault("bm25", {"tokenizer": BM25_TOKENIZER})
                self._write_manifest()

    def _drop_space(self, name: str) -> None:
        """Forget an empty space (its model changes before anything was stored in it)."""
        self.manifest.get("spaces", {}).pop(name, None)
        self.manifest.pop("models", None)
        self.dense.pop(name, None)
        self._discard_index(name)

    def _discard_index(self, name: str) -> None:
        """Forget the persisted index of dense space ``name`` (rebuilt from the catalog when next opened)."""
        with self._writing("the indexes"):
            self.index_backend().discard(self.index_target(name, 0))

    def index_backend(self) -> IndexBackend:
        """The vector-index backend ``index.backend`` names (made once per store)."""
        with self._lock:
            if self._backend is None:
                self._backend = backend_for(self.config.index)
            return self._backend

    def index_target(self, name: str, dim: int) -> IndexTarget:
        """Where dense space ``name`` keeps its index; a shared backend's collections are named from
        the catalog's store id, so every machine on this catalog finds the same ones."""
        shared = bool(getattr(self.index_backend(), "shared", False))
        return IndexTarget(name, dim, self.index_dir, self.config.index, self.catalog.store_id() if shared else "")

    def make_space(self, name: str, dim: int, *, writes: bool = True) -> DenseSpace:
        """A dense space, not opened; writes a shared index only under the write lock and ``writes``."""
        target = self.index_target(name, dim)
        return DenseSpace(name, dim, self.index_dir, self.catalog, self.config.index, self.index_backend(),
                          store_id=target.store_id, writer=(lambda: self._write_depth > 0) if writes else None)

    def recorded_models(self) -> dict[str, Any]:
        """The model settings the store was built with (``models.clip``, ``models.text``, ``models.clip_texts``).

        Written after the first ingest that stored items; for older stores, derived from the
        spaces' model ids where they name a model (hub names and tags, not local files).
        """
        self._refresh_manifest()
        models = dict(self.manifest.get("models", {}))
        if models:
            return models
        spaces = self.spaces()
        text = spaces.get(Space.TEXT)
        if text is not None and text.model_id.count(":") == 1 and text.model_id.startswith("sentence-transformers:"):
            models["models.text"] = text.model_id.split(":", 1)[1]
        clip = spaces.get(Space.CLIP)
        if clip is not None and clip.model_id.startswith("open_clip:") and "=" not in clip.model_id:
            name, _, tag = clip.model_id.split(":", 1)[1].partition("@")
            if tag and "/" not in tag and ":" not in tag:
                models["models.clip"] = f"{name}@{tag}"
        if spaces and Space.TEXT in spaces:
            models["models.clip_texts"] = Space.CLIP_TEXTS in spaces
            if clip is None:
                models["models.clip"] = "none"
        return models

    def record_models(self, models: Mapping[str, Any]) -> None:
        """Remember the model settings a write used, so readers need not repeat them."""
        with self._lock:
            if self.manifest.get("models") == dict(models):
                return
            self.manifest["models"] = dict(models)
            self._write_manifest()

    # ---- spaces -------------------------------------------------------------
    def space(self, name: str) -> DenseSpace | None:
        """The opened dense space ``name`` (None if the store has no such space)."""
        with self._lock:
            if name not in self.dense:
                info = self.spaces().get(name)
                if info is None:
                    return None
                space = self.make_space(name, info.dim)
                space.open()
                self.dense[name] = space
            return self.dense[name]

    def bm25(self) -> LexicalSpace:
        with self._lock:
            if not self._lexical_open:
                self.lexical.open()
                self._lexical_open = True
        return self.lexical

    def sync(self, lexical: bool = True) -> None:
        """Bring every opened space up to the catalog's current state (readers call this)."""
        for name in list(self.spaces()):
            space = self.space(name)
            if space is not None:
                space.sync()
        if lexical:
            self.bm25().sync()

    def save(self, maintain: bool = True) -> None:
        """Persist every space (writers call this at checkpoints and the end of a run)."""
        with self._writing("the indexes"):
            self._save(maintain)

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Turn a failed write (disk full, read-only) into a StoreError naming the store."""
        try:
            yield
        except OSError as exc:
            raise StoreError(f"cannot write {what} of store {self.root}: {exc.strerror or exc}"
                             + (f" ({exc.filename})" if exc.filename else "")) from exc

    def _save(self, maintain: bool) -> None:
        for name in list(self.spaces()):
            space = self.space(name)
            if space is None:
                continue
            space.sync()
            if maintain:
                space.maintain()
            space.save()
        lex = self.bm25()
        lex.sync(force=True)
        lex.save()
        self._truncate_log()

    def _truncate_log(self) -> None:
        seqs = [s.saved_seq for s in self.dense.values()] + [self.lexical.saved_seq]
        if seqs and min(seqs) > 0 and len(self.dense) == len(self.spaces()):
            self.catalog.truncate_changes(min(seqs))

    def head(self) -> int:
        return catalog_head(self.catalog)

    def close(self) -> None:
        self.catalog.close()

    # ---- the single writer ------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the store's cross-process write lock; readers never take it.

        ``wait_s`` > 0 waits that long (for both locks together) for another writer; 0 fails at
        once. The file lock in the store directory comes first (it keeps writers of this directory
        apart and names a local holder by pid); a PostgreSQL catalog, which store directories on
        other machines share, adds its advisory lock (``CatalogBase.writer_lock``).
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        with (
            hold_write_lock(self.lock_path, self.root, wait_s),
            self.catalog.writer_lock(self.root, max(0.0, deadline - time.monotonic())),
        ):
            self._write_depth += 1
            try:
                yield
            finally:
                self._write_depth -= 1

    # ---- media --------------------------------------------------------------
    def media_path(self, kind: str, item_id: int) -> Path:
        base = self.thumb_dir if kind == "thumb" else self.preview_dir
        return base / f"{item_id % 1000:03d}" / f"{item_id}.jpg"

    def resolve_media(self, rel: str | None) -> str | None:
        return str(self.root / rel) if rel else None

    def write_media(self, kind: str, item_id: int, data: bytes) -> str:
        """Write a thumbnail/preview JPEG; returns its path relative to the store."""
        path = self.media_path(kind, item_id)
        with self._writing(f"a {kind}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path.relative_to(self.root).as_posix()

    def _delete_media(self, rels: Sequence[str]) -> None:
        """Remove the files of deleted items (best effort: verify reports leftovers, repair deletes them)."""
        for rel in rels:
            path = Path(rel)
            if path.is_absolute() or ".." in path.parts:
                continue
            with contextlib.suppress(OSError):
                (self.root / path).unlink()


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)
