"""API keys of the HTTP service: how a key looks, how it is stored, and the catalog's queries.

A key is ``mmrag_`` followed by 32 random bytes from ``secrets`` (URL-safe base64). The catalog
keeps its first ``PREFIX_CHARS`` characters (the lookup id shown by ``mmrag keys list``) and the
SHA-256 of the whole key, never the key. Checking a key is one row lookup by its prefix and a
constant-time comparison of digests (``hmac.compare_digest``).

A fast hash is the right one here: slow password hashes (bcrypt, scrypt, Argon2) exist to make
guessing low-entropy, human-chosen passwords expensive. A key has 256 random bits (208 of them
beyond the prefix that listings show), so neither a stolen digest nor online guessing can be
searched, whatever the speed of the hash; a slow hash would only add its cost to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from retriever.catalog.connection import CatalogBase
from retriever.catalog.models import ApiKeyRow, utcnow
from retriever.catalog.records import ApiKeyRecord, NewApiKey, api_key_record
from retriever.errors import ArgumentError, StoreError

__all__ = ["KEY_PREFIX", "PREFIX_CHARS", "SCOPES", "ApiKeyQueries", "key_digest"]

log = logging.getLogger(__name__)

KEY_PREFIX = "mmrag_"
KEY_BYTES = 32
PREFIX_CHARS = len(KEY_PREFIX) + 8  # "mmrag_" and 48 random bits: the lookup id
SCOPES = ("read", "ingest", "admin")
MAX_NAME_CHARS = 64
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key


def key_digest(key: str) -> str:
    """The hex SHA-256 of ``key``: what the catalog stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ArgumentError(f"a key name must be 1 to {MAX_NAME_CHARS} printable characters, got {name[:80]!r}")
    if name.startswith(KEY_PREFIX):
        raise ArgumentError(f"a key name may not start with {KEY_PREFIX!r} (key ids do), got {name[:80]!r}")
    return name


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ArgumentError(f"a key scope must be one of {', '.join(SCOPES)}, got {scope[:80]!r}")
    return scope


class ApiKeyQueries(CatalogBase):
    """Create, list, revoke and check API keys (a mixin of ``Catalog``)."""

    def create_api_key(self, name: str, scope: str) -> NewApiKey:
        """A new key named ``name`` (unique among keys not revoked) with ``scope``."""
        _check_name(name)
        _check_scope(scope)
        with self.transaction() as s:
            if s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))):
                raise ArgumentError(f"a key named {name!r} exists; revoke it first or choose another name")
            key = self._unused_key(s)
            row = ApiKeyRow(name=name, prefix=key[:PREFIX_CHARS], digest=key_digest(key), scope=scope,
                            created_at=utcnow())
            s.add(row)
            s.flush()
            record = api_key_record(row)
        return NewApiKey(record=record, key=key)

    @staticmethod
    def _unused_key(s: Session) -> str:
        for _ in range(8):
            key = KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)
            if s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.prefix == key[:PREFIX_CHARS])) is None:
                return key
        raise StoreError("could not draw an API key whose id is unused (8 draws collided)")

    def api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones too, oldest first."""
        if self._no_keys_table():
            return []
        with self.session() as s:
            return [api_key_record(r) for r in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def has_active_api_keys(self) -> bool:
        """Whether any key is not revoked (then the HTTP service asks every caller for one)."""
        if self._no_keys_table():
            return False
        with self.session() as s:
            return s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None)).limit(1)) is not None

    def revoke_api_key(self, name_or_id: str) -> ApiKeyRecord:
        """Revoke the key named ``name_or_id`` or whose id it is; it stops working at once."""
        with self.transaction() as s:
            row = s.scalar(select(ApiKeyRow).where(
                (ApiKeyRow.name == name_or_id) | (ApiKeyRow.prefix == name_or_id),
                ApiKeyRow.revoked_at.is_(None)))
            if row is None:
                raise ArgumentError(f"no key named {name_or_id[:80]!r} or with that id is in use; "
                                    "`mmrag keys list` shows the keys")
            row.revoked_at = utcnow()
            s.flush()
            return api_key_record(row)

    def authenticate_api_key(self, key: str) -> ApiKeyRecord | None:
        """The record of ``key`` when it is a key in use (not revoked); None otherwise."""
        if not key.startswith(KEY_PREFIX) or len(key) <= PREFIX_CHARS or self._no_keys_table():
            return None
        with self.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == key[:PREFIX_CHARS]))
            if row is None or row.revoked_at is not None or not hmac.compare_digest(row.digest, key_digest(key)):
                return None
            record = api_key_record(row)
        self._touch_when_stale(record)
        return record

    def link_secret(self, key_id: str) -> str | None:
        """What signs the file links made for the key ``key_id`` (its stored digest, never shown);
        None once the key is unknown or revoked, so its links stop working with it. Signing or
        following a link is a use of the key: it updates ``last_used_at`` as a key sent in a header does."""
        if self._no_keys_table():
            return None
        with self.session() as s:
            row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == key_id, ApiKeyRow.revoked_at.is_(None)))
            if row is None:
                return None
            digest, record = str(row.digest), api_key_record(row)
        self._touch_when_stale(record)
        return digest

    def _touch_when_stale(self, record: ApiKeyRecord) -> None:
        """Record a use of the key unless one was recorded less than ``_TOUCH_EVERY`` ago."""
        if record.last_used_at is None or utcnow() - record.last_used_at >= _TOUCH_EVERY:
            self._touch(record.id)

    def _touch(self, key_id: str) -> None:
        """Record a use of the key (best effort: a read-only or busy catalog keeps the old time)."""
        if self.read_only:
            return
        try:
            with self.transaction() as s:
                row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == key_id))
                if row is not None:
                    row.last_used_at = utcnow()
        except StoreError as exc:
            log.warning("could not record the use of API key %s: %s", key_id, exc)

    def _no_keys_table(self) -> bool:
        """A catalog opened read-only from before API keys existed has no table for them: no keys."""
        return self.read_only and not inspect(self.engine).has_table(ApiKeyRow.__tablename__)
