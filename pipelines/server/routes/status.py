"""``GET /healthz`` (alive), ``GET /readyz`` (models warm) and ``GET /stats``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pipelines.engine import Engine
from pipelines.server.models import HealthBody, ReadyBody, responses
from pipelines.server.readiness import Readiness

__all__ = ["status_router"]


def status_router(engine: Engine, readiness: Readiness) -> APIRouter:
    router = APIRouter()

    @router.get("/readyz", responses={200: {"model": ReadyBody}, 503: {"model": ReadyBody}})
    def readyz() -> JSONResponse:
        """Ready for queries: the models are loaded and warm (503 while they load, or if loading failed)."""
        body = readiness.body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @router.get("/healthz", responses={200: {"model": HealthBody}, 503: {"model": HealthBody}})
    def healthz() -> JSONResponse:
        try:
            items = engine.counts()["items"]
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            body = {"ok": False, "error": f"catalog unreachable: {exc}", "type": type(exc).__name__}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"ok": True, "items": items})

    @router.get("/stats", responses=responses(503))
    def stats() -> dict[str, Any]:
        return engine.stats()

    return router
