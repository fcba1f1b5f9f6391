"""SQLAlchemy tables of the catalog, the store's source of truth.

``items.id`` is also the vector id in every index. Ids are never reused
(``sqlite_autoincrement``; sequences on PostgreSQL), so replaying the
``changes`` log onto an index is unambiguous.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ApiKeyRow", "Base", "SourceRow", "ItemRow", "VectorRow", "ChangeRow", "RunRow", "MetaRow", "utcnow"]

# SQLite needs INTEGER (not BIGINT) for an autoincrement primary key.
IdType = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SourceRow(Base):
    __tablename__ = "sources"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(String(4096), unique=True, index=True)
    display: Mapped[str] = mapped_column(String(4096))
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    family: Mapped[str | None] = mapped_column(String(32), nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)  # copies: same bytes
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    notes: Mapped[list] = mapped_column(JSON, default=list)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int | None] = mapped_column(IdType, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (Index("ix_items_source", "source_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(IdType, ForeignKey("sources.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)  # position within its source
    modality: Mapped[str] = mapped_column(String(16), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    locator: Mapped[dict] = mapped_column(JSON)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    thumbnail: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # relative to the store
    preview: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # relative to the store
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)


class VectorRow(Base):
    """Durable copy of an item's vector in one space (float16, little-endian)."""

    __tablename__ = "vectors"

    item_id: Mapped[int] = mapped_column(IdType, ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    space: Mapped[str] = mapped_column(String(32), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ChangeRow(Base):
    """Append-only log of item additions/removals; indexes record the seq they cover."""

    __tablename__ = "changes"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(8))  # add | del
    item_id: Mapped[int] = mapped_column(BigInteger, index=True)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    summary: Mapped[dict] = mapped_column(JSON, default=dict)


class MetaRow(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict] = mapped_column(JSON)


class ApiKeyRow(Base):
    """An API key of the HTTP service: never the key itself, only its SHA-256 (see ``api_keys``).

    ``prefix`` (the key's first characters) finds the row; ``digest`` is compared in constant time.
    """

    __tablename__ = "api_keys"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    digest: Mapped[str] = mapped_column(String(64))  # hex SHA-256 of the whole key
    scope: Mapped[str] = mapped_column(String(16))  # read | ingest | admin
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
