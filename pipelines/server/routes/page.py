"""``GET /``: the search-and-ask web page, and ``GET /static/app.js`` and ``/static/app.css``.

One page, no build step: HTML, CSS and JavaScript from the package data (``pipelines/server/static``).
The shell holds no data and needs no API key (``pipelines.server.auth``); the page calls the API
from the browser, with the key the user gives it. Its Content-Security-Policy allows scripts,
styles, fetches and media from this origin only (no inline script, nothing external); images
and media may also come from ``blob:`` URLs, which the page makes from the query image or clip the
user picked. With a key, the store's files load through links that ``POST /links`` signed for it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "page_router"]

_POLICY = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
)
CONTENT_SECURITY_POLICY = "; ".join(_POLICY)
_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    return resources.files("pipelines.server").joinpath("static", name).read_bytes()


def page_router() -> APIRouter:
    """The page and its two files, read once from the package data; not part of the API schema."""
    router = APIRouter(include_in_schema=False)
    files = {name: _read(name) for name in _FILES}

    def serve(name: str) -> Response:
        headers = dict(_HEADERS)
        if name == "index.html":
            headers.update({"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY"})
        return Response(files[name], media_type=_FILES[name], headers=headers)

    router.api_route("/", methods=["GET", "HEAD"])(lambda: serve("index.html"))
    router.api_route("/static/app.js", methods=["GET", "HEAD"])(lambda: serve("app.js"))
    router.api_route("/static/app.css", methods=["GET", "HEAD"])(lambda: serve("app.css"))
    return router
