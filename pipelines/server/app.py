"""The document-QA HTTP service: search, ask, thumbnails and the evidence itself, over one store.

``create_app(engine)`` returns a FastAPI app; ``mmrag serve`` runs it with uvicorn.
Hits and answers have the JSON of ``mmrag search --json`` / ``mmrag ask --json``, plus an
``open_url`` per hit and citation (the evidence a person can open: the PDF at its page,
the media file at its time span, the image, the text file) and a ``thumbnail_url`` per
visual hit. Only files that are sources in the store's catalog are ever served, only while
they are what was ingested, and ingest is off unless the app is given directories it may
ingest from.

At ``/`` the app serves a search-and-ask web page (``pipelines.server.routes.page``) that calls
this API from the browser; ``POST /ask/stream`` streams answers to it as server-sent events.

The routes live in ``pipelines.server.routes``, one ``APIRouter`` per concern, built for each app.
Endpoints are plain ``def``: FastAPI runs them in its thread pool, and the engine's read
side (search, ask, stats) is safe for concurrent callers. Every request is bounded
(``ServerLimits``) and every error is JSON:
``{"error": "<what came and what was expected>", "type": "<class name>"}``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pipelines.engine import Engine
from pipelines.server.auth import AccessMiddleware
from pipelines.server.errors import ApiError, install_error_handlers
from pipelines.server.jobs import JobTable
from pipelines.server.readiness import Readiness
from pipelines.server.limits import BodyLimitMiddleware, ServerLimits
from pipelines.server.links import open_fragment
from pipelines.server.models import request_models
from pipelines.server.routes.ask import ask_router
from pipelines.server.routes.ingest import ingest_router
from pipelines.server.routes.items import items_router
from pipelines.server.routes.page import page_router
from pipelines.server.routes.search import search_router
from pipelines.server.routes.status import status_router
from retriever.errors import ConfigError

__all__ = ["ApiError", "PortInUse", "ServerLimits", "bind", "create_app", "is_loopback", "open_fragment", "run"]


class PortInUse(ConfigError):
    """The port to serve on is taken by another process."""


def create_app(engine: Engine, *, allow_ingest_under: list[Path] | None = None,
               limits: ServerLimits | None = None, require_keys: bool = False,
               cors_origins: Sequence[str] = (), warm: bool = False) -> FastAPI:
    """The HTTP API over ``engine``; ``POST /ingest`` accepts only paths under ``allow_ingest_under``
    and runs each ingest as a background job (``pipelines.server.jobs``), one at a time.

    API keys (``mmrag keys``) are needed once the store has one, or always with ``require_keys``
    (then revoking the last key shuts the API instead of opening it); see ``pipelines.server.auth``.
    Browsers may call it from other origins only when ``cors_origins`` names them (off by default).
    With ``warm`` the models load in the background at start-up and ``/readyz`` answers 503 until
    they are warm (``mmrag serve`` does this); without it ``/readyz`` is ready at once.
    """
    allowed = _allowed_dirs(allow_ingest_under)
    limits = limits or ServerLimits.from_config(engine.config.server)
    jobs = JobTable()
    readiness = Readiness(engine, warm)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        readiness.start()
        yield
        jobs.stop()

    app = FastAPI(title="mmrag", summary="Multimodal search and cited answers over one store",
                  version="0.1.0", lifespan=lifespan)
    app.state.engine, app.state.allow_ingest_under, app.state.limits = engine, allowed, limits
    app.state.jobs = jobs
    app.add_middleware(BodyLimitMiddleware, limit_for=limits.body_limit)
    app.add_middleware(AccessMiddleware, catalog=lambda: engine.store.catalog, limits=limits,  # runs first
                       require_keys=require_keys)
    install_error_handlers(app)
    models = request_models(limits)
    app.include_router(status_router(engine, readiness))
    app.include_router(search_router(engine, limits, models))
    app.include_router(ask_router(engine, models))
    app.include_router(items_router(engine, allowed, lambda: engine.store.catalog, limits.link_ttl_s))
    app.include_router(ingest_router(engine, allowed, models, jobs))
    app.include_router(page_router())
    _allow_origins(app, cors_origins)
    return app


def _allow_origins(app: FastAPI, origins: Sequence[str]) -> None:
    """Cross-origin calls from ``origins`` (``scheme://host[:port]``, or ``*`` for any): answered
    outermost, so a browser's preflight needs no key; keys travel in the Authorization header,
    never as cookies, so no credentials mode."""
    if not origins:
        return
    for origin in origins:
        parsed = urlsplit(origin)
        if origin != "*" and not (parsed.scheme in ("http", "https") and parsed.netloc
                                  and origin == f"{parsed.scheme}://{parsed.netloc}"):
            raise ConfigError(f"a CORS origin is '*' or scheme://host[:port] with no path, got {origin[:80]!r}")
    app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                       allow_headers=["Authorization", "Content-Type", "Range"], max_age=600)


def _allowed_dirs(dirs: list[Path] | None) -> list[Path]:
    out = []
    for d in dirs or []:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--allow-ingest expects an existing directory, got {str(d)!r}")
        out.append(path)
    return out


# ---- serving ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (``localhost``, 127.0.0.0/8, ``::1``); names other than
    ``localhost`` count as reachable from elsewhere."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
        *, limits: ServerLimits | None = None, sock: socket.socket | None = None,
        require_keys: bool = False, cors_origins: Sequence[str] = ()) -> None:
    """Serve ``engine`` with uvicorn until interrupted (one process: the engine lives in it).

    ``sock`` is a socket from ``bind(host, port)``; without one the port is bound here.
    """
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("mmrag serve needs uvicorn: pip install 'mmrag[server]'") from None
    sock = sock or bind(host, port)
    app = create_app(engine, allow_ingest_under=allow_ingest_under, limits=limits, require_keys=require_keys,
                     cors_origins=cors_origins, warm=True)
    allowed = app.state.allow_ingest_under
    port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"mmrag: serving {engine.root} on http://{shown_host}:{port} (ingest: "
          + (", ".join(str(d) for d in allowed) if allowed else "off") + ")", file=sys.stderr, flush=True)
    if not is_loopback(host) and not (require_keys or engine.store.catalog.has_active_api_keys()):
        print(f"mmrag: warning: the API has no authentication; anyone who can reach {host}:{port} "
              "can search the store and open its source files", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
