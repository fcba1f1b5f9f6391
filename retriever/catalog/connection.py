"""The catalog's database connection: engines, sessions, transactions, the meta table.

``CatalogBase`` is what the query mixins and ``Catalog`` build on. SQLite runs in WAL mode
(readers never block the writer); a store on a read-only file system opens its SQLite file
immutable, without the WAL's side files.

On PostgreSQL the catalog also carries the single-writer rule across machines:
``CatalogBase.writer_lock`` holds a session-level advisory lock whose key every process
pointing at the same catalog agrees on (see ``writer_lock_key``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from sqlalchemy import create_engine, delete, event, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from retriever.catalog.models import Base, ChangeRow, ItemRow, MetaRow, VectorRow
from retriever.catalog.records import chunks
from retriever.errors import StoreError, StoreLockedError

__all__ = ["CatalogBase", "writer_lock_key"]

log = logging.getLogger(__name__)
_WRITER_LOCK_NAMESPACE = "mmrag.catalog.writer"
_WRITER_APP_PREFIX = "mmrag writer "


def writer_lock_key(database: str, schema: str) -> int:
    """The advisory-lock key of the catalog in ``database``.``schema`` (a signed 64-bit integer).

    Both names come from the server (``current_database()``, ``current_schema()``), not from
    the URL, so machines that reach one catalog by different host names, ports or users still
    agree on the key, and two catalogs in different databases or schemas of one server do not
    exclude each other. The store directory is not part of it: every store directory pointing
    at one catalog shares its one writer.
    """
    raw = f"{_WRITER_LOCK_NAMESPACE}\x00{database}\x00{schema}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


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


def _writer_app_name() -> str:
    """``mmrag writer pid N on HOST``, cut to PostgreSQL's 63-byte application_name."""
    return f"{_WRITER_APP_PREFIX}pid {os.getpid()} on {socket.gethostname()}".encode()[:63].decode(errors="ignore")


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _add_missing_indexes(engine: SqlEngine) -> None:
    """Indexes added to a table after a catalog was made (``create_all`` makes only missing tables)."""
    existing = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {ix["name"] for ix in existing.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                try:
                    index.create(engine, checkfirst=True)
                except SQLAlchemyError as exc:  # another process made it first, or the catalog is busy
                    log.info("index %s of the catalog not made now: %s", index.name, exc)


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
                _add_missing_indexes(self.engine)
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

    # ---- the single writer across machines ----------------------------------------
    @contextlib.contextmanager
    def writer_lock(self, store: Path | str, wait_s: float = 0.0) -> Iterator[None]:
        """On PostgreSQL, hold the catalog's writer lock, waiting up to ``wait_s`` seconds for it.

        A session-level advisory lock (``pg_try_advisory_lock``) on a connection of its own,
        kept open (outside any transaction) for as long as the write runs; leaving unlocks it
        and closes that connection, and a writer that dies loses it with its session. The
        connection's ``application_name`` names the holder's pid and host, which is what a
        second writer's StoreLockedError reports. Other databases (SQLite: the catalog lives in
        the store directory, whose file lock covers it) take nothing here.
        """
        if self.engine.dialect.name != "postgresql":
            yield
            return
        deadline = time.monotonic() + max(0.0, wait_s)
        lock_engine = create_engine(
            self.engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"application_name": _writer_app_name()},
        )
        try:
            try:
                conn = lock_engine.connect()
            except SQLAlchemyError as exc:
                cause = getattr(exc, "orig", None) or exc
                raise StoreError(f"cannot take the write lock of catalog {self.safe_url}: {cause}") from exc
            with conn:
                key = self._acquire_writer_lock(conn, store, deadline)
                try:
                    yield
                finally:
                    with contextlib.suppress(SQLAlchemyError):
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            lock_engine.dispose()

    def _acquire_writer_lock(self, conn: Connection, store: Path | str, deadline: float) -> int:
        try:
            if (conn.dialect.server_version_info or (0,)) >= (14,):
                conn.execute(text("SET idle_session_timeout = 0"))  # an idle holder must keep its session
            database, schema = conn.execute(text("SELECT current_database(), current_schema()")).one()
            key = writer_lock_key(str(database), str(schema))
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"store {store}: another writer holds the write lock of catalog {self.safe_url} "
                        f"({self._writer_lock_holder(conn, key)}); wait for it to finish "
                        f"(or set ingest.lock_wait_s to wait)"
                    )
                time.sleep(0.1)
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot take the write lock of catalog {self.safe_url}: {cause}") from exc
        return key

    @staticmethod
    def _writer_lock_holder(conn: Connection, key: int) -> str:
        """Who holds the advisory lock ``key`` (best effort: pg_locks + pg_stat_activity)."""
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF  # a bigint key shows as classid (high half), objid (low half)
        try:
            row = conn.execute(
                text(
                    "SELECT l.pid, a.application_name FROM pg_locks l "
                    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                    "AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid) LIMIT 1"
                ),
                {"hi": unsigned >> 32, "lo": unsigned & 0xFFFF_FFFF},
            ).first()
        except SQLAlchemyError:
            row = None
        if row is None:
            return "holder unknown"
        backend, app = row
        if app and str(app).startswith(_WRITER_APP_PREFIX):
            who = str(app)[len(_WRITER_APP_PREFIX):]
            if who == _writer_app_name()[len(_WRITER_APP_PREFIX):]:
                return f"another Engine or Store in this same process (pid {os.getpid()})"
            return who
        return f"server backend pid {backend}"

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

    def store_id(self) -> str:
        """The store's id: 12 hex digits made once, kept in the catalog (names server-side indexes,
        so several stores share one Milvus and every machine on one catalog finds the same ones)."""
        got = self.get_meta("store")
        if got is None and not self.read_only:
            with contextlib.suppress(IntegrityError):  # another process made it first: read theirs
                with self.transaction() as s:
                    if s.get(MetaRow, "store") is None:
                        s.add(MetaRow(key="store", value={"id": uuid.uuid4().hex[:12]}))
            got = self.get_meta("store")
        if got is None or not str(got.get("id", "")).isalnum():
            raise StoreError(f"catalog {self.safe_url} has no store id and is read-only; open it once with write access")
        return str(got["id"])

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
