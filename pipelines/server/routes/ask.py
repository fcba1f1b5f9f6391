"""``POST /ask``: an answer with checked citations, each with the URL of its evidence."""

from typing import Any

from fastapi import APIRouter, Request

from pipelines.engine import Engine
from pipelines.server.links import Links
from pipelines.server.models import AskRequest, RequestModels, responses
from pipelines.server.routes.requests import root_path, with_request_types

__all__ = ["ask_router"]


def ask_router(engine: Engine, models: RequestModels) -> APIRouter:
    router = APIRouter()

    def ask(request: Request, body: AskRequest) -> dict[str, Any]:
        mods = [m.value for m in body.modalities] if body.modalities else None
        where = body.where.filters() if body.where else {}
        answer = engine.ask(body.question, k=body.k, modalities=mods, where=where)
        uris = [ev.hit.source_uri for ev in answer.evidence] + [c.source for c in answer.citations]
        return Links(engine, root_path(request), uris).answer(answer)

    router.post("/ask", responses=responses(400, 413, 422, 502, 503))(with_request_types(ask, body=models.ask))
    return router
