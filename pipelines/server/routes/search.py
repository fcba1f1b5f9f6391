"""``GET /search``, ``POST /search``, ``POST /search/image`` and ``POST /search/audio``: one fused
ranked list, with the evidence URLs of every hit."""

# No ``from __future__ import annotations``: the routes' parameter types are built per app (from its
# ServerLimits), so FastAPI must see them as objects, not as names to look up.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from pipelines.engine import Engine
from pipelines.server.limits import ServerLimits
from pipelines.server.links import Links
from pipelines.server.models import MAX_MODALITY_NAMES, RequestModels, SearchRequest, responses
from pipelines.server.routes.requests import root_path, with_request_types
from pipelines.server.uploads import audio_upload, read_upload, upload_name
from retriever.errors import QueryError
from retriever.types import Modality

__all__ = ["search_router"]

Route = Callable[..., dict[str, Any]]


def search_router(engine: Engine, limits: ServerLimits, models: RequestModels) -> APIRouter:
    router = APIRouter()
    router.get("/search", responses=responses(400, 422, 503))(_search_get(engine, limits, models))
    router.post("/search", responses=responses(400, 413, 422, 503))(_search_post(engine, models))
    router.post("/search/image", responses=responses(400, 413, 422, 503))(_search_image(engine, limits))
    router.post("/search/audio", responses=responses(400, 413, 422, 503))(_search_audio(engine, limits))
    return router


def search_response(engine: Engine, request: Request, *, text: str | None, k: int | None,
                    modalities: list[Modality] | None = None, where: dict[str, Any] | None = None,
                    mmr: bool | None = None, image: Any = None, image_name: str | None = None,
                    audio_name: str | None = None) -> dict[str, Any]:
    """``{"query": ..., "hits": [...]}``: the query as the engine ran it and the hits with their URLs."""
    mods = [m.value for m in modalities] if modalities else None
    hits = engine.search(text=text, image=image, k=k, modalities=mods, where=where, mmr=mmr)
    links = Links(engine, root_path(request), (h.source_uri for h in hits))
    query = {"text": text, "image": image_name, "audio": audio_name, "k": k or engine.config.search.k,
             "modalities": mods, "where": where or {}, "mmr": mmr}
    return {"query": query, "hits": [links.hit(h) for h in hits]}


def _search_get(engine: Engine, limits: ServerLimits, models: RequestModels) -> Route:
    k_param = Annotated[int | None, Query(ge=1, le=limits.max_k)]

    def search_get(
        request: Request,
        q: str,
        k: k_param = None,
        modality: Annotated[list[Modality] | None, Query(
            max_length=MAX_MODALITY_NAMES, description="only these modalities (repeatable)")] = None,
        source: Annotated[str | None, Query(
            max_length=limits.max_where_chars, description="glob on the source path")] = None,
        mmr: bool | None = None,
    ) -> dict[str, Any]:
        where = {"source": source} if source else {}
        return search_response(engine, request, text=q, k=k, modalities=modality, where=where, mmr=mmr)

    return with_request_types(search_get, q=Annotated[models.text, Query(description="query text")])


def _search_post(engine: Engine, models: RequestModels) -> Route:
    def search_post(request: Request, body: SearchRequest) -> dict[str, Any]:
        where = body.where.filters() if body.where else {}
        return search_response(engine, request, text=body.text, k=body.k, modalities=body.modalities,
                               where=where, mmr=body.mmr)

    return with_request_types(search_post, body=models.search)


# the static shape of the upload searches' form fields; ``_form_fields`` adds the app's limits
OptionalText = Annotated[str | None, Form()]
OptionalK = Annotated[int | None, Form()]
OptionalModalities = Annotated[list[Modality] | None, Form()]


def _search_image(engine: Engine, limits: ServerLimits) -> Route:
    def search_image(
        request: Request,
        image: Annotated[UploadFile, File(description="the query image")],
        text: OptionalText = None,
        k: OptionalK = None,
        modality: OptionalModalities = None,
        source: OptionalText = None,
    ) -> dict[str, Any]:
        picture = read_upload(image, engine, limits.max_upload_bytes)
        text = text if text and text.strip() else None
        return search_response(engine, request, text=text, image=picture, image_name=upload_name(image), k=k,
                               modalities=modality, where={"source": source} if source else {})

    return with_request_types(search_image, **_form_fields(limits))


def _search_audio(engine: Engine, limits: ServerLimits) -> Route:
    def search_audio(
        request: Request,
        audio: Annotated[UploadFile, File(description="the query clip: its speech is the query text")],
        text: OptionalText = None,
        k: OptionalK = None,
        modality: OptionalModalities = None,
        source: OptionalText = None,
    ) -> dict[str, Any]:
        from indexers.av.transcribe import transcribe_query

        with audio_upload(audio, limits.max_upload_bytes, limits.max_audio_query_s) as path:
            try:
                spoken = transcribe_query(path, engine.config.audio, engine.transcriber).strip()
            except QueryError as exc:  # the message names the temporary file: say the upload's name
                raise QueryError(str(exc).replace(path.name, upload_name(audio))) from None
        words = " ".join(t for t in ((text or "").strip(), spoken) if t)
        return search_response(engine, request, text=words, k=k, modalities=modality, audio_name=upload_name(audio),
                               where={"source": source} if source else {})

    audio_type = Annotated[UploadFile, File(description="the query clip: its speech is the query text (at most "
                                                        f"{limits.max_audio_query_s} s)")]
    return with_request_types(search_audio, audio=audio_type, **_form_fields(limits))


def _form_fields(limits: ServerLimits) -> dict[str, Any]:
    """The optional form fields of the upload searches, with the app's limits: more query text, k, and
    the filters of GET /search."""
    return {
        "text": Annotated[str | None, Form(max_length=limits.max_query_chars, description="more query text")],
        "k": Annotated[int | None, Form(ge=1, le=limits.max_k)],
        "modality": Annotated[list[Modality] | None, Form(max_length=MAX_MODALITY_NAMES,
                                                          description="only these modalities (repeatable)")],
        "source": Annotated[str | None, Form(max_length=limits.max_where_chars, description="glob on the source path")],
    }
