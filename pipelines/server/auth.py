"""Who may call the HTTP service, how often, and how many answers run at once.

``AccessMiddleware`` runs before any route. Once the store has an API key that is not revoked
(or the app was created with ``require_keys=True``), every endpoint but ``/healthz`` needs
``Authorization: Bearer KEY``: 401 when the key is missing, unknown or revoked, 403 when its
scope does not cover the endpoint. A GET or HEAD of an item's file may instead carry a link
signature made by ``POST /links`` (``pipelines.server.signed_links``), checked against its key.
The key is checked against the catalog on every request, so a revoked key stops working at once;
the key is never logged or echoed.

The web page's shell (``/`` and its script and style sheet, ``pipelines.server.routes.page``) is
open too: it holds no data, and it asks the user for a key that it then sends with each call.

Scopes: ``read`` (search, ask, items, stats, the schema), ``ingest`` (read, ``POST /ingest`` and
the ingest jobs, ``GET /jobs`` and ``GET /jobs/{id}``, which show server paths), ``admin`` (everything). Each key (each client address while the store has no key) gets
``ServerLimits.requests_per_minute`` (429 with Retry-After over it), and at most
``ServerLimits.max_concurrent_asks`` answers are generated at once, ``POST /ask`` and
``POST /ask/stream`` together (503 with Retry-After; a streamed answer counts until its last event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool

from pipelines.server.limits import ASGIApp, Receive, Scope, Send, ServerLimits, send_error
from pipelines.server.ratelimit import RateLimiter
from pipelines.server.signed_links import LinkError, check_link, is_signed
from retriever.catalog import Catalog
from retriever.errors import MmragError

__all__ = ["AccessMiddleware", "Refusal", "needed_scope"]

_RANK = {"read": 0, "ingest": 1, "admin": 2}
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/static/app.js", "/static/app.css"})
_ASK_PATHS = frozenset({"/ask", "/ask/stream"})
_ASK_RETRY_S = 1


@dataclass(frozen=True)
class Refusal:
    """An answer that stops a request before the routes: status, message, error type, headers."""

    status: int
    message: str
    type_name: str
    headers: dict[str, str] = field(default_factory=dict)


def needed_scope(method: str, path: str) -> str:
    """The least scope that may call ``method path``."""
    if (method == "POST" and path == "/ingest") or path == "/jobs" or path.startswith("/jobs/"):
        return "ingest"
    return "read"


def _route_path(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/") or "/"


def _bearer(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``; None without one."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            kind, _, token = value.decode("latin-1").strip().partition(" ")
            return (token.strip() or None) if kind.lower() == "bearer" else None
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"address:{client[0]}" if client else "address:unknown"


def _unauthorized(message: str, error: str | None = None) -> Refusal:
    challenge = 'Bearer realm="mmrag"' + (f', error="{error}"' if error else "")
    return Refusal(401, message, "Unauthorized", {"WWW-Authenticate": challenge})


class AccessMiddleware:
    """API keys, scopes, the per-caller rate limit and the limit on concurrent asks."""

    def __init__(self, app: ASGIApp, catalog: Callable[[], Catalog], limits: ServerLimits,
                 require_keys: bool = False) -> None:
        """``catalog()`` is the catalog that holds the keys (asked for on each request)."""
        self.app = app
        self.catalog = catalog
        self.require_keys = require_keys
        self.rate = RateLimiter(limits.requests_per_minute)
        self.max_asks = limits.max_concurrent_asks
        self.link_ttl_s = limits.link_ttl_s
        self.asks = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope)
        if scope["type"] != "http" or path in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", ""))
        outcome = await run_in_threadpool(self._caller, scope, method, path)
        if isinstance(outcome, Refusal):
            await send_error(send, outcome.status, outcome.message, outcome.type_name, outcome.headers)
            return
        scope.setdefault("state", {})["caller"] = outcome  # request.state.caller: who signs links
        wait = self.rate.take(outcome)
        if wait:
            await send_error(send, 429, f"too many requests: at most {int(self.rate.capacity)} a minute per "
                             f"key or client; retry in {wait} s", "RateLimited", {"Retry-After": str(wait)})
            return
        if method == "POST" and path in _ASK_PATHS:
            await self._ask(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _ask(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.asks >= self.max_asks:
            await send_error(send, 503, f"the server is answering {self.asks} questions, its limit; retry in "
                             f"{_ASK_RETRY_S} s", "ServerBusy", {"Retry-After": str(_ASK_RETRY_S)})
            return
        self.asks += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.asks -= 1

    def _caller(self, scope: Scope, method: str, path: str) -> str | Refusal:
        """Who calls (``key:ID``, or the client address while no key is needed), or why not."""
        catalog = self.catalog()
        try:
            if not (self.require_keys or catalog.has_active_api_keys()):
                return _client(scope)
            token = _bearer(scope)
            if token is None and method in ("GET", "HEAD") and is_signed(scope):
                return self._signed(scope, path, catalog)
            if token is None:
                return _unauthorized("this API needs a key: send `Authorization: Bearer KEY` "
                                     "(`mmrag keys create` makes one)")
            record = catalog.authenticate_api_key(token)
        except MmragError as exc:
            return Refusal(503, f"cannot check the API key: {exc}", type(exc).__name__)
        if record is None:
            return _unauthorized("the API key is not valid: it is unknown or revoked", "invalid_token")
        needed = needed_scope(method, path)
        if _RANK[record.scope] < _RANK[needed]:
            return Refusal(403, f"key {record.name!r} has scope {record.scope!r}; {method} {path} needs "
                           f"scope {needed!r} or 'admin'", "InsufficientScope",
                           {"WWW-Authenticate": f'Bearer realm="mmrag", error="insufficient_scope", scope="{needed}"'})
        return f"key:{record.id}"

    def _signed(self, scope: Scope, path: str, catalog: Catalog) -> str | Refusal:
        """The caller of a signed file link (``pipelines.server.signed_links``), or why it is refused."""
        try:
            return f"key:{check_link(path, scope.get('query_string', b''), catalog, self.link_ttl_s)}"
        except LinkError as exc:
            return _unauthorized(str(exc), "invalid_token")
