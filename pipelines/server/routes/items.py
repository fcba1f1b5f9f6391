"""``GET /items/{id}/open`` (the evidence file itself) and ``GET /items/{id}/thumbnail``, with HEAD,
and ``POST /links``, which signs those URLs for a browser that cannot send the key.

Only source files of the store's catalog are served, and only while they hold what was ingested
(``pipelines.server.evidence``); an item that existed and was removed is a 410, not a 404.
"""

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from pipelines.engine import Engine
from pipelines.server.errors import ItemNotFound, ItemRemoved, KeyRevoked
from pipelines.server.evidence import OpenedFile, VerifiedFiles, file_response, open_source, open_thumbnail
from pipelines.server.models import BINARY, MAX_ITEM_ID, VERSION_PATTERN, LinksBody, LinksRequest, responses
from pipelines.server.signed_links import sign_url
from retriever.catalog import Catalog, ItemRecord

__all__ = ["items_router"]

ItemId = Annotated[int, PathParam(ge=1, le=MAX_ITEM_ID, description="an item id from a hit or citation")]
Version = Annotated[str | None, Query(pattern=VERSION_PATTERN, description="the source version the link was made for")]
_FILE_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "the whole file", "content": {"*/*": BINARY}},
    206: {"description": "one byte range of the file (Range: bytes=...)", "content": {"*/*": BINARY}},
}
_THUMB_OK: dict[int | str, dict[str, Any]] = {
    200: {"description": "the JPEG thumbnail", "content": {"image/jpeg": BINARY}},
    206: {"description": "one byte range of the thumbnail", "content": {"image/jpeg": BINARY}},
}


def items_router(engine: Engine, allowed: list[Path], catalog: Callable[[], Catalog],
                 link_ttl_s: int) -> APIRouter:
    """The evidence routes; a source under ``allowed`` must still resolve inside those directories.
    ``catalog()`` holds the API keys that sign links."""
    router = APIRouter()
    verified = VerifiedFiles()

    @router.post("/links", response_model=LinksBody, responses=responses(400, 413, 422))
    def links(request: Request, body: LinksRequest) -> LinksBody:
        """File URLs (``open_url``, ``thumbnail_url``) signed for the calling key, to load in an
        ``<img>``, ``<video>`` or a new tab, which cannot send the key; they work for
        ``server.link_ttl_s`` seconds, until the key is revoked, and only for that file."""
        caller = str(getattr(request.state, "caller", ""))
        if not caller.startswith("key:"):
            return LinksBody(urls=body.urls, expires_at=None)  # no key needed: the URLs work as they are
        key_id = caller.removeprefix("key:")
        secret = catalog().link_secret(key_id)
        if secret is None:  # revoked between the access check and here
            raise KeyRevoked(f"key {key_id} is no longer in use", {"WWW-Authenticate": 'Bearer realm="mmrag"'})
        expires = int(time.time()) + link_ttl_s
        return LinksBody(urls=[sign_url(url, key_id, secret, expires) for url in body.urls],
                         expires_at=datetime.fromtimestamp(expires, timezone.utc).isoformat())

    @router.get("/items/{item_id}/thumbnail", response_class=Response,
                responses={**_THUMB_OK, **responses(400, 404, 410, 416, 422)})
    def thumbnail(request: Request, item_id: ItemId) -> Response:
        return file_response(_open_thumbnail(engine, item_id), request)

    @router.get("/items/{item_id}/open", response_class=Response,
                responses={**_FILE_OK, **responses(400, 403, 404, 410, 416, 422)})
    def open_item(request: Request, item_id: ItemId, v: Version = None) -> Response:
        return file_response(_open_source(engine, item_id, allowed, v, verified), request)

    router.api_route("/items/{item_id}/thumbnail", methods=["HEAD"], include_in_schema=False)(thumbnail)
    router.api_route("/items/{item_id}/open", methods=["HEAD"], include_in_schema=False)(open_item)
    return router


def _open_thumbnail(engine: Engine, item_id: int) -> OpenedFile:
    rec = _item(engine, item_id)
    if not rec.thumbnail:
        raise ItemNotFound(f"item {item_id} ({rec.modality.value}/{rec.kind}) has no thumbnail; "
                           "only visual items (images, PDF pages and figures, video keyframes) have one")
    missing = (f"the thumbnail of item {item_id} is missing from the store; "
               "`mmrag verify` reports it and `mmrag repair` fixes the catalog")
    return open_thumbnail(engine.thumbnail(item_id), missing)


def _open_source(engine: Engine, item_id: int, allowed: list[Path], version: str | None,
                 verified: VerifiedFiles) -> OpenedFile:
    found = engine.source_file(item_id)
    if found is None:
        rec = _item(engine, item_id)  # ItemRemoved or ItemNotFound when the item itself is gone
        raise ItemNotFound(f"no item {rec.id} in the store (its source was removed)")
    return open_source(found, allowed=allowed, version=version, verified=verified)


def _item(engine: Engine, item_id: int) -> ItemRecord:
    """The catalog record of ``item_id``; ItemRemoved for an id that existed (ids are never reused)."""
    rec = engine.item(item_id)
    if rec is not None:
        return rec
    if engine.item_was_removed(item_id):
        raise ItemRemoved(f"item {item_id} is no longer in the store: its source changed and was "
                          "re-ingested, or was removed, since this link was made; search again for the "
                          "current evidence")
    raise ItemNotFound(f"no item {item_id} in the store")
