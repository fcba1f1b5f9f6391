"""The document-QA HTTP service: search, ask, thumbnails and the evidence itself, over one store.

``create_app(engine)`` returns a FastAPI app; ``mmrag serve`` runs it with uvicorn.
Hits and answers have the JSON of ``mmrag search --json`` / ``mmrag ask --json``, plus an
``open_url`` per hit and citation (the evidence a person can open: the PDF at its page,
the media file at its time span, the image, the text file) and a ``thumbnail_url`` per
visual hit. Only files that are sources in the store's catalog are ever served, only while
they are what was ingested, and ingest is off unless the app is given directories it may
ingest from.

Endpoints are plain ``def``: FastAPI runs them in its thread pool, and the engine's read
side (search, ask, stats) is safe for concurrent callers. Every request is bounded
(``ServerLimits``) and every error is JSON:
``{"error": "<what came and what was expected>", "type": "<class name>"}``.
"""

# No ``from __future__ import annotations`` here: the routes' parameter types are built per app
# (from its ServerLimits), so FastAPI must see them as objects, not as names to look up.
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from pipelines.engine import Engine
from pipelines.server.errors import (
    ApiError,
    IngestForbidden,
    IngestPathMissing,
    ItemNotFound,
    ItemRemoved,
    install_error_handlers,
)
from pipelines.server.evidence import VerifiedFiles, file_response, open_source, open_thumbnail
from pipelines.server.limits import BodyLimitMiddleware, ServerLimits, shown
from pipelines.server.links import Links, open_fragment
from pipelines.server.models import (
    BINARY,
    MAX_ITEM_ID,
    MAX_MODALITY_NAMES,
    VERSION_PATTERN,
    HealthBody,
    RequestModels,
    request_models,
    responses,
)
from pipelines.server.uploads import read_upload, upload_name
from retriever.catalog.models import ItemRow
from retriever.errors import ConfigError
from retriever.types import Modality

__all__ = ["ApiError", "PortInUse", "ServerLimits", "bind", "create_app", "open_fragment", "run"]

ItemId = Annotated[int, PathParam(ge=1, le=MAX_ITEM_ID, description="an item id from a hit or citation")]
_FILE_OK = {
    200: {"description": "the whole file", "content": {"*/*": BINARY}},
    206: {"description": "one byte range of the file (Range: bytes=...)", "content": {"*/*": BINARY}},
}
_THUMB_OK = {
    200: {"description": "the JPEG thumbnail", "content": {"image/jpeg": BINARY}},
    206: {"description": "one byte range of the thumbnail", "content": {"image/jpeg": BINARY}},
}


class PortInUse(ConfigError):
    """The port to serve on is taken by another process."""


def create_app(engine: Engine, *, allow_ingest_under: list[Path] | None = None,
               limits: ServerLimits | None = None) -> FastAPI:
    """The HTTP API over ``engine``; ``POST /ingest`` accepts only paths under ``allow_ingest_under``."""
    allowed = _allowed_dirs(allow_ingest_under)
    limits = limits or ServerLimits()
    app = FastAPI(title="mmrag", summary="Multimodal search and cited answers over one store",
                  version="0.1.0")
    app.state.engine, app.state.allow_ingest_under, app.state.limits = engine, allowed, limits
    app.add_middleware(BodyLimitMiddleware, limit_for=limits.body_limit)
    install_error_handlers(app)
    _add_health(app, engine)
    models = request_models(limits)
    _add_search(app, engine, limits, models)
    _add_evidence(app, engine, allowed)
    _add_ingest(app, engine, allowed, models)
    return app


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _add_health(app: FastAPI, engine: Engine) -> None:
    @app.get("/healthz", responses={200: {"model": HealthBody}, 503: {"model": HealthBody}})
    def healthz() -> JSONResponse:
        try:
            items = engine.store.catalog.counts()["items"]
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            body = {"ok": False, "error": f"catalog unreachable: {exc}", "type": type(exc).__name__}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ok": True, "items": items})

    @app.get("/stats", responses=responses(503))
    def stats() -> dict[str, Any]:
        return engine.stats()


def _add_search(app: FastAPI, engine: Engine, limits: ServerLimits, models: RequestModels) -> None:
    k_param = Annotated[int | None, Query(ge=1, le=limits.max_k)]

    @app.get("/search", responses=responses(400, 422, 503))
    def search_get(
        request: Request,
        q: Annotated[models.text, Query(description="query text")],
        k: k_param = None,
        modality: Annotated[list[Modality] | None, Query(
            max_length=MAX_MODALITY_NAMES, description="only these modalities (repeatable)")] = None,
        source: Annotated[str | None, Query(
            max_length=limits.max_where_chars, description="glob on the source path")] = None,
        mmr: bool | None = None,
    ) -> dict[str, Any]:
        where = {"source": source} if source else {}
        return _search(request, text=q, k=k, modalities=modality, where=where, mmr=mmr)

    @app.post("/search", responses=responses(400, 413, 422, 503))
    def search_post(request: Request, body: models.search) -> dict[str, Any]:
        where = body.where.filters() if body.where else {}
        return _search(request, text=body.text, k=body.k, modalities=body.modalities, where=where,
                       mmr=body.mmr)

    @app.post("/search/image", responses=responses(400, 413, 422, 503))
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="the query image")],
        text: Annotated[str | None, Form(max_length=limits.max_query_chars)] = None,
        k: Annotated[int | None, Form(ge=1, le=limits.max_k)] = None,
    ) -> dict[str, Any]:
        picture = read_upload(image, engine, limits.max_upload_bytes)
        text = text if text and text.strip() else None
        return _search(request, text=text, image=picture, image_name=upload_name(image), k=k)

    def _search(request: Request, *, text: str | None, k: int | None,
                modalities: list[Modality] | None = None, where: dict[str, Any] | None = None,
                mmr: bool | None = None, image: Any = None, image_name: str | None = None) -> dict[str, Any]:
        mods = [m.value for m in modalities] if modalities else None
        hits = engine.search(text=text, image=image, k=k, modalities=mods, where=where, mmr=mmr)
        links = Links(engine, _root(request), (h.source_uri for h in hits))
        query = {"text": text, "image": image_name, "audio": None, "k": k or engine.config.search.k,
                 "modalities": mods, "where": where or {}, "mmr": mmr}
        return {"query": query, "hits": [links.hit(h) for h in hits]}

    @app.post("/ask", responses=responses(400, 413, 422, 502, 503))
    def ask(request: Request, body: models.ask) -> dict[str, Any]:
        mods = [m.value for m in body.modalities] if body.modalities else None
        where = body.where.filters() if body.where else {}
        answer = engine.ask(body.question, k=body.k, modalities=mods, where=where)
        uris = [ev.hit.source_uri for ev in answer.evidence] + [c.source for c in answer.citations]
        return Links(engine, _root(request), uris).answer(answer)


def _add_evidence(app: FastAPI, engine: Engine, allowed: list[Path]) -> None:
    verified = VerifiedFiles()

    @app.get("/items/{item_id}/thumbnail", response_class=Response,
             responses={**_THUMB_OK, **responses(400, 404, 410, 416, 422)})
    def thumbnail(request: Request, item_id: ItemId) -> Response:
        rec = _item(engine, item_id)
        if not rec.thumbnail:
            raise ItemNotFound(f"item {item_id} ({rec.modality.value}/{rec.kind}) has no thumbnail; "
                               "only visual items (images, PDF pages and figures, video keyframes) have one")
        missing = (f"the thumbnail of item {item_id} is missing from the store; "
                   "`mmrag verify` reports it and `mmrag repair` fixes the catalog")
        opened = open_thumbnail(engine.store.thumb_dir, engine.store.root / rec.thumbnail, missing)
        return file_response(opened, request)

    @app.get("/items/{item_id}/open", response_class=Response,
             responses={**_FILE_OK, **responses(400, 403, 404, 410, 416, 422)})
    def open_item(
        request: Request,
        item_id: ItemId,
        v: Annotated[str | None, Query(pattern=VERSION_PATTERN,
                                       description="the source version the link was made for")] = None,
    ) -> Response:
        rec = _item(engine, item_id)
        opened = open_source(engine, rec, allowed=allowed, version=v, verified=verified)
        return file_response(opened, request)

    app.api_route("/items/{item_id}/thumbnail", methods=["HEAD"], include_in_schema=False)(thumbnail)
    app.api_route("/items/{item_id}/open", methods=["HEAD"], include_in_schema=False)(open_item)


def _add_ingest(app: FastAPI, engine: Engine, allowed: list[Path], models: RequestModels) -> None:
    @app.post("/ingest", responses=responses(400, 403, 409, 413, 422, 503))
    def ingest(body: models.ingest) -> dict[str, Any]:
        if not allowed:
            raise IngestForbidden("ingest over HTTP is disabled; start the server with "
                                  "`mmrag serve --allow-ingest DIR` to allow ingesting files under DIR")
        paths = [_ingest_path(raw, allowed) for raw in body.paths]
        return engine.ingest(paths, prune=body.prune, within=allowed).to_dict()


# ---- helpers ----------------------------------------------------------------------------------


def _allowed_dirs(dirs: list[Path] | None) -> list[Path]:
    out = []
    for d in dirs or []:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--allow-ingest expects an existing directory, got {str(d)!r}")
        out.append(path)
    return out


def _item(engine: Engine, item_id: int) -> Any:
    """The catalog record of ``item_id``; ItemRemoved for an id that existed (ids are never reused)."""
    rec = engine.store.catalog.items([item_id]).get(item_id)
    if rec is not None:
        return rec
    with engine.store.catalog.session() as s:
        highest = s.scalar(select(func.max(ItemRow.id))) or 0
    if item_id < highest:
        raise ItemRemoved(f"item {item_id} is no longer in the store: its source changed and was "
                          "re-ingested, or was removed, since this link was made; search again for the "
                          "current evidence")
    raise ItemNotFound(f"no item {item_id} in the store")


def _ingest_path(raw: str, allowed: list[Path]) -> str:
    """The resolved path when it lies under an allowed directory; IngestForbidden otherwise.

    The message quotes only what the client sent: never a resolved path or a symlink's target.
    """
    if "\x00" in raw:
        raise IngestForbidden(f"ingest path {shown(raw)} is not a usable path (it has a NUL character)")
    path = Path(raw)
    if not path.is_absolute():
        raise IngestForbidden(f"ingest path {shown(raw)} is relative; expected an absolute path inside the "
                              "allowed directories")
    resolved = path.resolve()  # follows symlinks and '..': the check is on where the path really leads
    if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
        raise IngestForbidden(f"ingest path {shown(raw)} is outside the allowed directories")
    if not os.path.lexists(resolved):
        raise IngestPathMissing(f"ingest path {shown(raw)} does not exist")
    return str(resolved)


# ---- serving ----------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, made before any model loads: a busy port fails at once."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address to listen on ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use on {host}; stop the server that holds it or choose "
                            "another --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run(engine: Engine, host: str = "127.0.0.1", port: int = 8000,
        allow_ingest_under: list[Path] | None = None, log_level: Literal["info", "warning"] = "info",
        *, limits: ServerLimits | None = None, sock: socket.socket | None = None) -> None:
    """Serve ``engine`` with uvicorn until interrupted (one process: the engine lives in it).

    ``sock`` is a socket from ``bind(host, port)``; without one the port is bound here.
    """
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("mmrag serve needs uvicorn: pip install 'mmrag[server]'") from None
    sock = sock or bind(host, port)
    app = create_app(engine, allow_ingest_under=allow_ingest_under, limits=limits)
    allowed = app.state.allow_ingest_under
    port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"mmrag: serving {engine.store.root} on http://{shown_host}:{port} (ingest: "
          + (", ".join(str(d) for d in allowed) if allowed else "off") + ")", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmrag: warning: the API has no authentication; anyone who can reach {host}:{port} "
              "can search the store and open its source files", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
