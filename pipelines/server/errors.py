"""Errors of the HTTP service: every one is JSON ``{"error": ..., "type": ...}``.

``error`` says what came and what was expected (input is quoted cut short, never whole);
``type`` is the error class. A 422 adds ``details``: one ``{loc, msg, type}`` per problem.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pipelines.server.limits import shown
from retriever.errors import (
    ArgumentError,
    ConfigError,
    GenerationError,
    IngestError,
    InputNotFound,
    MmragError,
    ModelLoadError,
    QueryError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
)

__all__ = [
    "ApiError",
    "BadRange",
    "BadUpload",
    "IngestForbidden",
    "IngestPathMissing",
    "ItemNotFound",
    "KeyRevoked",
    "ItemRemoved",
    "RangeNotSatisfiable",
    "SourceChanged",
    "SourceForbidden",
    "SourceGone",
    "UploadTooLarge",
    "error_response",
    "install_error_handlers",
    "status_of",
    "validation_message",
]

class ApiError(Exception):
    """An HTTP error of the service itself; the subclass name is the ``type`` in the body."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class KeyRevoked(ApiError):
    status = 401


class ItemNotFound(ApiError):
    status = 404


class ItemRemoved(ApiError):
    """The item existed (ids are never reused) but was removed: its source changed or was removed."""

    status = 410


class SourceGone(ApiError):
    status = 410


class SourceChanged(ApiError):
    """The evidence is not what was ingested or cited any more."""

    status = 410


class SourceForbidden(ApiError):
    status = 403


class IngestForbidden(ApiError):
    status = 403


class IngestPathMissing(ApiError):
    status = 400


class UploadTooLarge(ApiError):
    status = 413


class BadUpload(ApiError):
    status = 400


class BadRange(ApiError):
    status = 400


class RangeNotSatisfiable(ApiError):
    status = 416


_ENGINE_STATUS: tuple[tuple[type[MmragError], int], ...] = (
    (StoreLockedError, 409),  # another writer holds the store: try again later
    (StoreMismatchError, 409),
    (StoreError, 503),
    (ModelLoadError, 503),
    (GenerationError, 502),  # the LLM backend failed
    (QueryError, 400),
    (ConfigError, 400),
    (IngestError, 400),
    (ArgumentError, 400),
    (InputNotFound, 400),
)


def status_of(exc: MmragError) -> int:
    """The HTTP status of an engine error (the first matching class decides)."""
    for cls, status in _ENGINE_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, message: str, type_name: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "type": type_name, **extra}, status_code=status, headers=headers)


_PLACES = {"body": "body field", "query": "query parameter", "path": "path parameter", "header": "header"}


def _problem(err: dict[str, Any]) -> str:
    """One validation problem: where it was, what was expected and what came."""
    loc = [str(p) for p in err.get("loc", ())]
    kind = err.get("type")
    if kind == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "invalid JSON")
        return f"request body is not valid JSON ({reason}); expected a JSON object"
    subject = f"{_PLACES.get(loc[0] if loc else '', 'field')} {'.'.join(loc[1:])!r}" if len(loc) > 1 \
        else "the request body"
    if kind == "missing":
        return f"{subject} is required" if len(loc) > 1 else "a JSON object body is required"
    if kind == "extra_forbidden":
        return f"{subject} is not accepted (unknown field)"
    return f"{subject}: {err.get('msg', 'invalid')}, got {shown(err.get('input'))}"


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One part per problem, joined by '; '."""
    return "; ".join(_problem(err) for err in errors) or "invalid request"


def _details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


def install_error_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a JSON body, including FastAPI's and Starlette's own."""

    @app.exception_handler(ApiError)
    def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, type(exc).__name__, exc.headers)

    @app.exception_handler(MmragError)
    def _engine_error(_request: Request, exc: MmragError) -> JSONResponse:
        return error_response(status_of(exc), str(exc) or type(exc).__name__, type(exc).__name__)

    @app.exception_handler(RequestValidationError)
    def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return error_response(422, validation_message(errors), "RequestValidationError",
                              details=_details(errors))

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of its first route
            headers["Allow"] = ", ".join(_methods_of(request))
        return error_response(exc.status_code, _http_message(exc), type(exc).__name__, headers)

    @app.exception_handler(Exception)  # the server still logs the traceback
    def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details",
                              "InternalError")


_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _methods_of(request: Request) -> list[str]:
    """The standard HTTP methods that some route of the request's path accepts (included routers too)."""
    routes = request.app.routes
    return [method for method in sorted(_HTTP_METHODS)
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


def _http_message(exc: StarletteHTTPException) -> str:
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            return "request body is not UTF-8 text; expected a JSON object encoded as UTF-8"
        reason = type(cause).__name__ if cause else "unknown cause"
        return f"request body could not be parsed ({reason}); expected a JSON object"
    return str(exc.detail)
