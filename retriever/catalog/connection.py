"""The catalog's database connection: engines, sessions, transactions, the meta table.

``CatalogBase`` is what the query mixins and ``Catalog`` build on. SQLite runs in WAL mode
(readers never block the writer); a store on a read-only file system opens its SQLite file
immutable, without the WAL's side files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retriever.catalog.models import Base, ChangeRow, ItemRow, MetaRow, VectorRow
from retriever.catalog.records import chunks
from retriever.errors import StoreError

__all__ = ["CatalogBase"]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_read_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class CatalogBase:
    """A connection to the SQL catalog (SQLite by default, any SQLAlchemy URL)."""

    def __init__(self, url: str, *, create: bool = True, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        try:
            self.engine: SqlEngine = create_engine(url, future=True, pool_pre_ping=True)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_read_pragmas if read_only else _sqlite_pragmas)
            if create and not read_only:
                Base.metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open catalog {self.safe_url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # called with the store-relative media paths of deleted items, after their deletion committed
        self.on_media_deleted: Callable[[Sequence[str]], None] | None = None

    @classmethod
    def for_store(cls, store_dir: Path, url: str | None = None) -> Self:
        """The catalog of the store in ``store_dir``: ``url`` if given, else its ``catalog.sqlite``."""
        if url:
            return cls(url)
        path = store_dir / "catalog.sqlite"
        if path.exists() and _read_only_fs(store_dir):
            # nothing can write there: open immutable, without the WAL's -shm/-wal files
            return cls(f"sqlite:///file:{quote(path.as_posix())}?mode=ro&immutable=1&uri=true", read_only=True)
        return cls(f"sqlite:///{path.as_posix()}")

    @property
    def safe_url(self) -> str:
        """The URL without its password (for messages)."""
        engine = getattr(self, "engine", None)
        if engine is None:
            return self.url.split("@")[-1]
        return str(engine.url.render_as_string(hide_password=True))

    def session(self) -> Session:
        return self._sessions()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction; a failed write (disk full, read-only, locked) raises StoreError."""
        try:
            with self.session() as s, s.begin():
                yield s
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot write to catalog {self.safe_url}: {cause}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        try:
            with self.session() as s:
                s.execute(select(1))
        except OperationalError as exc:
            raise StoreError(f"catalog {self.safe_url} is not reachable: {exc}") from exc

    # ---- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(MetaRow, key)
            return dict(row.value) if row else None

    def set_meta(self, key: str, value: Mapping[str, Any]) -> None:
        with self.transaction() as s:
            row = s.get(MetaRow, key)
            if row is None:
                s.add(MetaRow(key=key, value=dict(value)))
            else:
                row.value = dict(value)

    # ---- shared by the writers ------------------------------------------------
    def _delete_items(self, s: Session, source_ids: Sequence[int]) -> list[str]:
        """Delete the sources' items (logged); returns their media paths for removal after commit."""
        if not source_ids:
            return []
        rows = s.execute(
            select(ItemRow.id, ItemRow.thumbnail, ItemRow.preview).where(ItemRow.source_id.in_(source_ids))
        ).all()
        item_ids = [int(r[0]) for r in rows]
        for chunk in chunks(item_ids, 5000):
            s.execute(delete(VectorRow).where(VectorRow.item_id.in_(chunk)))
            s.execute(delete(ItemRow).where(ItemRow.id.in_(chunk)))
            s.add_all(ChangeRow(op="del", item_id=i) for i in chunk)
        return [path for r in rows for path in (r[1], r[2]) if path]

    def _media_deleted(self, paths: Sequence[str]) -> None:
        if paths and self.on_media_deleted is not None:
            self.on_media_deleted(paths)
