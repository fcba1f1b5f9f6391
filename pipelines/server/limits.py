"""What one request may carry, and the ASGI middleware that refuses an oversized body.

A body is refused with 413 before it is read into memory: a declared ``Content-Length``
over the limit is answered at once, and a chunked body is counted while it streams and
cut off at the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from starlette.exceptions import HTTPException

from retriever.config.server import ServerConfig

__all__ = ["ASGIApp", "BodyLimitMiddleware", "BodyTooLarge", "Receive", "Scope", "Send", "ServerLimits",
           "send_error", "shown"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits(ServerConfig):
    """The ``server`` settings (``retriever.config.server.ServerConfig``) as the HTTP layer uses them."""

    @classmethod
    def from_config(cls, config: ServerConfig) -> ServerLimits:
        return cls(**{f.name: getattr(config, f.name) for f in fields(config)})

    def body_limit(self, path: str) -> int:
        """The most bytes a request body to ``path`` may have."""
        if path.rstrip("/").endswith(("/search/image", "/search/audio")):
            return self.max_upload_bytes + self.max_form_overhead_bytes
        return self.max_body_bytes


SHOWN_CHARS = 80  # the most characters of a request's input quoted back in an error message


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said: never echo unbounded input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{text[:limit]}... (str of {len(value)} characters)"
    return f"{text[:limit]}... ({len(text)} characters written out)"


class BodyTooLarge(HTTPException):
    """The request body went over its limit while it was being read (a chunked body)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length of the request: None when absent; -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else -1
    return None


async def send_error(send: Send, status: int, message: str, type_name: str,
                     headers: dict[str, str] | None = None) -> None:
    """Answer with the JSON error body of the service, from ASGI middleware."""
    body = json.dumps({"error": message, "type": type_name}).encode()
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *extra,
    ]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit_for(path)`` bytes with a 413 JSON error."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _declared_length(scope)
        if declared == -1:
            await send_error(send, 400, "the Content-Length header is not a whole number of bytes",
                              "BadRequest")
            return
        if declared is not None and declared > limit:
            method = scope.get("method", "")
            message = (f"request body of {declared} bytes is over the limit of {limit} bytes "
                       f"for {method} {scope.get('path', '')}")
            await send_error(send, 413, message, "BodyTooLarge")
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started = False

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive_counted, send_tracked)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await send_error(send, 413, str(exc.detail), "BodyTooLarge")
