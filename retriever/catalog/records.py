"""What the catalog hands out and takes in: frozen records, never ORM rows.

ORM rows stay inside the catalog's sessions; callers get these dataclasses, so nothing
outside ``retriever.catalog`` touches SQL or a lazily loaded attribute.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import numpy as np

from retriever.catalog.models import ApiKeyRow, ItemRow, SourceRow
from retriever.types import Locator, Modality

__all__ = [
    "VECTOR_DTYPE",
    "ApiKeyRecord",
    "FailedSources",
    "ItemRecord",
    "ItemSummary",
    "NewApiKey",
    "NewItem",
    "RunRecord",
    "SourceCount",
    "SourceInfo",
    "SourceRecord",
    "api_key_record",
    "chunks",
    "decode_vectors",
    "encode_vector",
    "item_record",
    "source_record",
]

VECTOR_DTYPE = np.dtype("<f2")
T = TypeVar("T")


def encode_vector(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=VECTOR_DTYPE).tobytes()


def decode_vectors(blobs: Sequence[bytes], dim: int | None = None) -> np.ndarray:
    """float16 blobs -> float32 matrix (n, dim)."""
    if not blobs:
        return np.zeros((0, dim or 0), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).astype(np.float32)
    return arr.reshape(len(blobs), -1)


def chunks(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    """``seq`` in lists of at most ``size`` (SQL ``IN`` lists stay bounded)."""
    for i in range(0, len(seq), size):
        yield list(seq[i : i + size])


@dataclass(frozen=True)
class SourceInfo:
    """What the pipeline learned about a file before ingesting it."""

    uri: str
    display: str
    content_hash: str | None
    size: int | None
    mtime: float | None
    content_type: str | None = None
    family: str | None = None


@dataclass(frozen=True)
class SourceRecord:
    """A source as the catalog holds it (``status`` is a ``SourceStatus`` value)."""

    id: int
    uri: str
    display: str
    content_type: str | None
    family: str | None
    content_hash: str | None
    size: int | None
    mtime: float | None
    status: str
    error: str | None
    metadata: Mapping[str, Any]
    notes: Sequence[str]
    item_count: int


@dataclass(frozen=True)
class ItemRecord:
    """An item with its source's URI and name (``kind`` is an ``ItemKind`` value)."""

    id: int
    source_id: int
    source_uri: str
    source_display: str
    modality: Modality
    kind: str
    locator: Locator
    text: str | None
    thumbnail: str | None
    preview: str | None
    metadata: Mapping[str, Any]
    source_hash: str | None = None  # the content hash of the source's bytes (copies: ``retriever.copies``)


@dataclass(frozen=True)
class ItemSummary:
    """The fields of an item that maintenance reads (no metadata, no vectors)."""

    id: int
    source_id: int
    kind: str
    locator: Mapping[str, Any]
    text: str | None
    thumbnail: str | None
    preview: str | None

    @property
    def visual(self) -> bool:
        """Visual items (photos, renders, figures, keyframes) are the ones with a thumbnail."""
        return self.thumbnail is not None

    @property
    def media(self) -> tuple[str, ...]:
        """Store-relative paths of its thumbnail and preview."""
        return tuple(p for p in (self.thumbnail, self.preview) if p)


@dataclass(frozen=True)
class SourceCount:
    """A source and the item count it records."""

    id: int
    uri: str
    item_count: int


@dataclass(frozen=True)
class RunRecord:
    """An ingest run (``status`` is a ``RunStatus`` value)."""

    id: int
    status: str
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class FailedSources:
    """What ``Catalog.fail_sources`` did: the sources marked failed and how many items they lost."""

    uris: tuple[str, ...]
    items: int


@dataclass
class NewItem:
    """An item ready to be committed: its fields plus its vectors per space."""

    modality: str
    kind: str
    locator: Mapping[str, Any]
    text: str | None
    metadata: Mapping[str, Any]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    thumbnail: str | None = None
    preview: str | None = None


def source_record(row: SourceRow) -> SourceRecord:
    return SourceRecord(
        id=row.id,
        uri=row.uri,
        display=row.display,
        content_type=row.content_type,
        family=row.family,
        content_hash=row.content_hash,
        size=row.size,
        mtime=row.mtime,
        status=row.status,
        error=row.error,
        metadata=dict(row.meta or {}),
        notes=list(row.notes or []),
        item_count=row.item_count or 0,
    )


def item_record(row: ItemRow, uri: str, display: str, source_hash: str | None = None) -> ItemRecord:
    return ItemRecord(
        id=int(row.id),
        source_id=int(row.source_id),
        source_uri=uri,
        source_display=display,
        modality=Modality(row.modality),
        kind=row.kind,
        locator=Locator.from_dict(row.locator),
        text=row.text,
        thumbnail=row.thumbnail,
        preview=row.preview,
        metadata=dict(row.meta or {}),
        source_hash=source_hash,
    )


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as the catalog holds it, without its digest: what ``mmrag keys list`` shows.

    ``id`` is the key's first characters (its lookup prefix); ``scope`` is read, ingest or admin.
    """

    name: str
    id: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``mmrag keys list --json`` (times in ISO 8601, UTC)."""
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {"name": self.name, "id": self.id, "scope": self.scope, "created_at": iso(self.created_at),
                "last_used_at": iso(self.last_used_at), "revoked_at": iso(self.revoked_at),
                "revoked": self.revoked}


@dataclass(frozen=True)
class NewApiKey:
    """A key just created: ``key`` is the secret itself, shown once and stored nowhere."""

    record: ApiKeyRecord
    key: str = field(repr=False)


def _utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; the catalog writes UTC."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def api_key_record(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(name=row.name, id=row.prefix, scope=row.scope, created_at=_utc(row.created_at),
                        last_used_at=_utc(row.last_used_at) if row.last_used_at else None,
                        revoked_at=_utc(row.revoked_at) if row.revoked_at else None)
