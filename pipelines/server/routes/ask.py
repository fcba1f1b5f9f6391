"""``POST /ask``: an answer with checked citations, each with the URL of its evidence; ``POST /ask/stream``:
the same answer as server-sent events while it is made (``pipelines.server.streaming``)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from pipelines.engine import Engine
from pipelines.server.links import Links
from pipelines.server.models import AskRequest, RequestModels, responses
from pipelines.server.routes.requests import root_path, with_request_types
from pipelines.server.streaming import EVENT_STREAM, AnswerStream, answer_work

__all__ = ["ask_router"]


def _event(name: str, description: str, data: dict[str, Any]) -> dict[str, Any]:
    """The schema of one server-sent event: its name and its data, one line of JSON."""
    return {"type": "object", "description": description, "required": ["event", "data"],
            "properties": {"event": {"const": name},
                           "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


_OBJECT: dict[str, Any] = {"type": "object"}
_EVENT_SCHEMA = {"oneOf": [
    _event("evidence", "the numbered evidence that the [n] of the following text cite",
           {"type": "object", "required": ["evidence"], "properties": {"evidence": {"type": "array", "items": _OBJECT}}}),
    _event("delta", "the next piece of the answer text",
           {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
    _event("answer", "the body of POST /ask, last: it replaces what the deltas built",
           {"type": "object", "required": ["question", "text", "found", "citations", "evidence"]}),
    _event("error", "the answer failed after the stream began, last",
           {"type": "object", "required": ["error", "type", "status"],
            "properties": {"error": {"type": "string"}, "type": {"type": "string"}, "status": {"type": "integer"}}}),
]}
_STREAM_OK: dict[int | str, dict[str, Any]] = {200: {
    "description": "server-sent events, each `event: NAME` and one line of JSON `data`: `evidence` "
                   "({evidence: [...]}, the numbered evidence the following text cites), `delta` ({text}: the "
                   "next piece of the answer), then `answer` (the body of POST /ask, which replaces what the "
                   "deltas built) or `error` ({error, type, status}: the answer failed after the stream began)",
    "content": {EVENT_STREAM: {"schema": _EVENT_SCHEMA}},
}}
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"}


def ask_router(engine: Engine, models: RequestModels) -> APIRouter:
    router = APIRouter()

    def ask(request: Request, body: AskRequest) -> dict[str, Any]:
        mods = [m.value for m in body.modalities] if body.modalities else None
        where = body.where.filters() if body.where else {}
        answer = engine.ask(body.question, k=body.k, modalities=mods, where=where)
        uris = [ev.hit.source_uri for ev in answer.evidence] + [c.source for c in answer.citations]
        return Links(engine, root_path(request), uris).answer(answer)

    def ask_stream(request: Request, body: AskRequest) -> Response:
        mods = [m.value for m in body.modalities] if body.modalities else None
        where = body.where.filters() if body.where else {}
        stream = AnswerStream()
        first = stream.start(answer_work(engine, root_path(request), body.question.strip(), k=body.k,
                                         modalities=mods, where=where))
        return StreamingResponse(stream.events(first), media_type=EVENT_STREAM, headers=_STREAM_HEADERS)

    router.post("/ask", responses=responses(400, 413, 422, 502, 503))(with_request_types(ask, body=models.ask))
    router.post("/ask/stream", response_class=StreamingResponse,
                responses={**_STREAM_OK, **responses(400, 413, 422, 502, 503)},
                summary="Ask, with the answer streamed as server-sent events")(
        with_request_types(ask_stream, body=models.ask))
    return router
