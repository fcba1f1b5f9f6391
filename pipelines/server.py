"""The document-QA HTTP service: search, ask, thumbnails and the evidence itself, over one store.

``create_app(engine)`` returns a FastAPI app; ``mmrag serve`` runs it with uvicorn.
Hits and answers have the JSON of ``mmrag search --json`` / ``mmrag ask --json``, plus an
``open_url`` per hit and citation (the evidence a person can open: the PDF at its page,
the media file at its time span, the image, the text file) and a ``thumbnail_url`` per
visual hit. Only files that are sources in the store's catalog are ever served, and
ingest is off unless the app is given directories it may ingest from.

Endpoints are plain ``def``: FastAPI runs them in its thread pool, and the engine's read
side (search, ask, stats) is safe for concurrent callers. Errors are JSON:
``{"error": "<what came and what was expected>", "type": "<class name>"}``.
"""

from __future__ import annotations

import mimetypes
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.engine import Engine
from retriever.errors import (
    ConfigError,
    GenerationError,
    IngestError,
    MmragError,
    ModelLoadError,
    QueryError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)
from retriever.types import Hit, Locator, Modality

__all__ = ["MAX_K", "MAX_UPLOAD_BYTES", "ApiError", "create_app", "open_fragment", "run"]

MAX_K = 1000
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
_IMAGE_FORMATS = "a JPEG, PNG, GIF, WebP, BMP or TIFF image"
Scalar = str | int | float | bool


# ---- errors ---------------------------------------------------------------------------


class ApiError(Exception):
    """An HTTP error of the service itself; the subclass name is the ``type`` in the body."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ItemNotFound(ApiError):
    status = 404


class SourceGone(ApiError):
    status = 410


class IngestForbidden(ApiError):
    status = 403


class UploadTooLarge(ApiError):
    status = 413


class BadUpload(ApiError):
    status = 400


def _status_of(exc: MmragError) -> int:
    """The HTTP status of an engine error (the most specific class decides)."""
    for cls, status in (
        (StoreLockedError, 409),  # another writer holds the store: try again later
        (StoreMismatchError, 409),
        (StoreError, 503),
        (ModelLoadError, 503),
        (GenerationError, 502),  # the LLM backend failed
        (QueryError, 400),
        (ConfigError, 400),
        (IngestError, 400),
    ):
        if isinstance(exc, cls):
            return status
    return 500


def _error(status: int, message: str, type_name: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "type": type_name, **extra}, status_code=status)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    """One line per problem: where it was, what was expected and what came."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            parts.append(f"request body is not valid JSON ({reason}); expected a JSON object")
            continue
        kind = {"body": "body field", "query": "query parameter", "path": "path parameter",
                "header": "header"}.get(loc[0] if loc else "", "field")
        subject = f"{kind} {'.'.join(loc[1:])!r}" if len(loc) > 1 else "the request body"
        if err.get("type") == "missing":
            parts.append(f"{subject} is required" if len(loc) > 1 else "a JSON object body is required")
            continue
        if err.get("type") == "extra_forbidden":
            parts.append(f"{subject} is not accepted (unknown field)")
            continue
        got = err.get("input")
        shown = repr(got) if len(repr(got)) <= 80 else f"a {type(got).__name__} of {len(repr(got))} characters"
        parts.append(f"{subject}: {err.get('msg', 'invalid')}, got {shown}")
    return "; ".join(parts) or "invalid request"


# ---- request bodies ---------------------------------------------------------------------


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    k: int | None = Field(None, ge=1, le=MAX_K)
    modalities: list[str] | None = None
    where: dict[str, Scalar] | None = None
    mmr: bool | None = None


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str
    k: int = Field(8, ge=1, le=MAX_K)
    modalities: list[str] | None = None
    where: dict[str, Scalar] | None = None


class IngestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    prune: bool = False


# ---- hit JSON ------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def open_fragment(locator: Locator) -> str:
    """The URL fragment that points a viewer at the evidence: ``#page=N`` or ``#t=START,END``."""
    where, a, b = locator.place()
    if where == "page":
        return f"#page={a}"
    if where == "span":
        return f"#t={_seconds(a)},{_seconds(b)}"
    if where == "at":
        return f"#t={_seconds(a)}"
    return ""


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _open_url(request: Request, item_id: int, locator: Locator) -> str:
    return f"{_root(request)}/items/{item_id}/open{open_fragment(locator)}"


def _hit_json(request: Request, hit: Hit) -> dict[str, Any]:
    """``Hit.to_dict()`` (the JSON of ``mmrag search --json``) plus the URLs of its evidence."""
    out = hit.to_dict()
    out["open_url"] = _open_url(request, hit.item_id, hit.locator)
    if hit.thumbnail_path:
        out["thumbnail_url"] = f"{_root(request)}/items/{hit.item_id}/thumbnail"
    return out


def _answer_json(request: Request, answer: Any) -> dict[str, Any]:
    """``Answer.to_dict()`` (the JSON of ``mmrag ask --json``) with an ``open_url`` per citation."""
    data = answer.to_dict()
    for citation, entry in zip(answer.citations, data["citations"]):
        entry["open_url"] = _open_url(request, citation.item_id, citation.locator)
    for ev, entry in zip(answer.evidence, data["evidence"]):
        entry.update({k: v for k, v in _hit_json(request, ev.hit).items() if k.endswith("_url")})
    return data


# ---- the app ---------------------------------------------------------------------------------


def create_app(engine: Engine, *, allow_ingest_under: list[Path] | None = None) -> FastAPI:
    """The HTTP API over ``engine``; ``POST /ingest`` accepts only paths under ``allow_ingest_under``."""
    allowed = _allowed_dirs(allow_ingest_under)
    app = FastAPI(
        title="mmrag",
        summary="Multimodal search and cited answers over one store",
        version="0.1.0",
    )
    app.state.engine = engine
    app.state.allow_ingest_under = allowed

    @app.exception_handler(ApiError)
    def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, type(exc).__name__)

    @app.exception_handler(MmragError)
    def _engine_error(_request: Request, exc: MmragError) -> JSONResponse:
        return _error(_status_of(exc), str(exc) or type(exc).__name__, type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return _error(422, _validation_message(errors), "RequestValidationError", details=details)

    @app.exception_handler(StarletteHTTPException)
    def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail), "type": "HTTPException"}, status_code=exc.status_code, headers=exc.headers
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            items = engine.store.catalog.counts()["items"]
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            return JSONResponse({"ok": False, "error": f"catalog unreachable: {exc}"}, status_code=503)
        return JSONResponse({"ok": True, "items": items})

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return engine.stats()

    @app.get("/search")
    def search_get(
        request: Request,
        q: Annotated[str | None, Query(description="query text")] = None,
        k: Annotated[int | None, Query(ge=1, le=MAX_K)] = None,
        modality: Annotated[list[str] | None, Query(description="text|image|pdf|audio|video (repeatable)")] = None,
        source: Annotated[str | None, Query(description="glob on the source path")] = None,
        mmr: bool | None = None,
    ) -> dict[str, Any]:
        text = _query_text(q, "query parameter 'q'")
        where = {"source": source} if source else {}
        return _search(request, text=text, k=k, modalities=modality, where=where, mmr=mmr)

    @app.post("/search")
    def search_post(request: Request, body: SearchBody) -> dict[str, Any]:
        text = _query_text(body.text, "body field 'text'")
        return _search(request, text=text, k=body.k, modalities=body.modalities, where=body.where, mmr=body.mmr)

    @app.post("/search/image")
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="the query image")],
        text: Annotated[str | None, Form()] = None,
        k: Annotated[int | None, Form(ge=1, le=MAX_K)] = None,
    ) -> dict[str, Any]:
        picture = _read_upload(image, engine)
        text = text if text and text.strip() else None
        return _search(request, text=text, image=picture, image_name=image.filename or "upload", k=k)

    def _search(
        request: Request,
        *,
        text: str | None,
        k: int | None,
        modalities: list[str] | None = None,
        where: dict[str, Any] | None = None,
        mmr: bool | None = None,
        image: Any = None,
        image_name: str | None = None,
    ) -> dict[str, Any]:
        mods = _modalities(modalities)
        where = _where(where)
        hits = engine.search(text=text, image=image, k=k, modalities=mods, where=where, mmr=mmr)
        query = {
            "text": text, "image": image_name, "audio": None,
            "k": k or engine.config.search.k, "modalities": mods, "where": where, "mmr": mmr,
        }
        return {"query": query, "hits": [_hit_json(request, h) for h in hits]}

    @app.post("/ask")
    def ask(request: Request, body: AskBody) -> dict[str, Any]:
        question = _query_text(body.question, "body field 'question'")
        answer = engine.ask(question, k=body.k, modalities=_modalities(body.modalities), where=_where(body.where))
        return _answer_json(request, answer)

    @app.api_route("/items/{item_id}/thumbnail", methods=["GET", "HEAD"])
    def thumbnail(item_id: int) -> FileResponse:
        rec = _item(engine, item_id)
        if not rec.thumbnail:
            raise ItemNotFound(f"item {item_id} ({rec.modality.value}/{rec.kind}) has no thumbnail; "
                               "only visual items (images, PDF pages and figures, video keyframes) have one")
        path = _inside(engine.store.thumb_dir, engine.store.root / rec.thumbnail)
        if path is None or not path.is_file():
            raise ItemNotFound(f"the thumbnail of item {item_id} is missing from the store; "
                               "`mmrag verify` reports it and `mmrag repair` fixes the catalog")
        return FileResponse(path, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff"})

    @app.api_route("/items/{item_id}/open", methods=["GET", "HEAD"])
    def open_item(item_id: int) -> FileResponse:
        rec = _item(engine, item_id)
        path = Path(rec.source_uri)  # a source of the catalog, never a path from the request
        if not path.is_file():
            state = "is no longer a regular file" if path.exists() else "was deleted or moved"
            raise SourceGone(
                f"the source file of item {item_id} ({rec.source_display}) {state} since it was ingested: "
                f"{rec.source_uri}; restore it and re-ingest, or remove it with `mmrag remove`"
            )
        media_type, html = _media_type(engine, rec.source_uri)
        headers = {"X-Content-Type-Options": "nosniff"}
        if html:  # never run an ingested page's scripts in the API's origin
            headers["Content-Security-Policy"] = "sandbox"
        return FileResponse(
            path, media_type=media_type, headers=headers, filename=path.name, content_disposition_type="inline"
        )

    @app.post("/ingest")
    def ingest(body: IngestBody) -> dict[str, Any]:
        if not allowed:
            raise IngestForbidden(
                "ingest over HTTP is disabled; start the server with `mmrag serve --allow-ingest DIR` "
                "to allow ingesting files under DIR"
            )
        paths = [_ingest_path(raw, allowed) for raw in body.paths]
        return engine.ingest(paths, prune=body.prune).to_dict()

    return app


# ---- helpers ----------------------------------------------------------------------------------


def _allowed_dirs(dirs: list[Path] | None) -> list[Path]:
    out = []
    for d in dirs or []:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--allow-ingest expects an existing directory, got {str(d)!r}")
        out.append(path)
    return out


def _query_text(value: str | None, where: str) -> str:
    if value is None or not value.strip():
        raise QueryError(f"{where} must be non-empty query text, got {value!r}")
    return value


def _modalities(names: list[str] | None) -> list[str] | None:
    """Validated modality names (a ConfigError naming the accepted ones otherwise)."""
    if not names:
        return None
    return [Modality.parse(n).value for n in names]


def _where(where: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(where or {})
    for key in ("source", "kind", "modality"):
        if key in out and not isinstance(out[key], str):
            raise QueryError(f"filter {key!r} expects a string, got {out[key]!r}")
    if "modality" in out:
        out["modality"] = Modality.parse(out["modality"]).value
    return out


def _item(engine: Engine, item_id: int) -> Any:
    rec = engine.store.catalog.items([item_id]).get(item_id)
    if rec is None:
        raise ItemNotFound(f"no item {item_id} in the store (it may have been removed or re-ingested)")
    return rec


def _inside(folder: Path, path: Path) -> Path | None:
    """``path`` (resolved) when it lies inside ``folder``: a path read from the catalog is never trusted."""
    base, resolved = folder.resolve(), path.resolve()
    return resolved if resolved.is_relative_to(base) and resolved != base else None


def _media_type(engine: Engine, uri: str) -> tuple[str, bool]:
    """(Content-Type to serve the source with, whether it is HTML)."""
    source = engine.store.catalog.get_source(uri)
    ctype = (source.content_type if source else None) or mimetypes.guess_type(uri)[0] or "application/octet-stream"
    if ctype.startswith("text/"):
        encoding = (source.metadata.get("encoding") if source else None) or "utf-8"
        return f"{ctype}; charset={encoding}", ctype == "text/html"
    return ctype, False


def _ingest_path(raw: str, allowed: list[Path]) -> str:
    """The resolved path when it lies under an allowed directory; IngestForbidden otherwise."""
    if not raw or "\x00" in raw:
        raise IngestForbidden(f"ingest path {raw!r} is not a usable path")
    path = Path(raw)
    if not path.is_absolute():
        raise IngestForbidden(f"ingest path {raw!r} is relative; expected an absolute path under "
                              + " or ".join(str(a) for a in allowed))
    resolved = path.resolve()  # follows symlinks and '..': the check is on where the path really leads
    if not any(resolved == a or resolved.is_relative_to(a) for a in allowed):
        raise IngestForbidden(
            f"ingest path {raw!r} (resolved to {resolved}) is not under an allowed directory; "
            "allowed: " + ", ".join(str(a) for a in allowed)
        )
    return str(resolved)


def _read_upload(upload: UploadFile, engine: Engine) -> Any:
    """Decode an uploaded query image with the ingest decoder (sniffed type, pixel limit, EXIF)."""
    from indexers.images import load_rgb
    from indexers.sniff import sniff_bytes

    data = upload.file.read(MAX_UPLOAD_BYTES + 1)
    name = upload.filename or "upload"
    declared = upload.content_type or "no content type"
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadTooLarge(f"uploaded image {name!r} is over the limit of {MAX_UPLOAD_BYTES} bytes")
    if not data:
        raise BadUpload(f"uploaded file {name!r} is empty (0 bytes); expected {_IMAGE_FORMATS} in field 'image'")
    suffix = Path(name).suffix.lower()
    sniffed = sniff_bytes(data[:4096], suffix)
    if sniffed is None or not sniffed.startswith("image/"):
        came = sniffed or "content of no known format"
        raise BadUpload(
            f"uploaded file {name!r} ({declared}, {len(data)} bytes) is {came}, not an image; "
            f"expected {_IMAGE_FORMATS} in field 'image'"
        )
    cfg = engine.config.ingest
    fd, tmp = tempfile.mkstemp(suffix=suffix if suffix.isascii() and len(suffix) <= 8 else "")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        image, _meta = load_rgb(Path(tmp), cfg.preview_px, cfg.max_image_pixels, MAX_UPLOAD_BYTES)
    except IngestError as exc:
        raise BadUpload(f"uploaded file {name!r} ({declared}, {len(data)} bytes) is not a usable image: {exc}; "
                        f"expected {_IMAGE_FORMATS}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return image


def run(engine: Engine, host: str = "127.0.0.1", port: int = 8000,
        allow_ingest_under: list[Path] | None = None, log_level: Literal["info", "warning"] = "info") -> None:
    """Serve ``engine`` with uvicorn until interrupted (one process: the engine lives in it)."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("mmrag serve needs uvicorn: pip install 'mmrag[server]'") from None
    app = create_app(engine, allow_ingest_under=allow_ingest_under)
    allowed = app.state.allow_ingest_under
    shown = f"[{host}]" if ":" in host else host
    print(f"mmrag: serving {engine.store.root} on http://{shown}:{port} (ingest: "
          + (", ".join(str(d) for d in allowed) if allowed else "off") + ")", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmrag: warning: the API has no authentication; anyone who can reach {host}:{port} "
              "can search the store and open its source files", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
