"""The request and error models of the HTTP service, and the OpenAPI responses of each route.

The request models are built from the app's ``ServerLimits`` so that the schema states
exactly what the server accepts: a request the schema allows is never refused as malformed.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipelines.server.limits import ServerLimits, shown
from pipelines.server.signed_links import FILE_URL_PATTERN, LinkError, parse_file_url
from retriever.types import Modality

__all__ = [
    "ACCESS_STATUSES",
    "BINARY",
    "MAX_ITEM_ID",
    "MAX_MODALITY_NAMES",
    "VERSION_PATTERN",
    "AskRequest",
    "ErrorBody",
    "HealthBody",
    "IngestRequest",
    "JobBody",
    "JobListBody",
    "LinksBody",
    "LinksRequest",
    "RequestModels",
    "SearchRequest",
    "ValidationErrorBody",
    "WhereFilter",
    "request_models",
    "responses",
]

MAX_ITEM_ID = 2**63 - 1  # item ids are signed 64-bit integers in the catalog
MAX_MODALITY_NAMES = 16
VERSION_PATTERN = r"^[0-9a-f]{16}$"
_HAS_TEXT = re.compile(r"\S")
BINARY: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}


class ErrorBody(BaseModel):
    error: str = Field(description="what came and what was expected")
    type: str = Field(description="the error class")


class ValidationDetail(BaseModel):
    loc: list[str | int] = Field(description="where the problem is: body/query/path, then the field")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    details: list[ValidationDetail]


class HealthBody(BaseModel):
    ok: bool
    items: int | None = None
    error: str | None = None
    type: str | None = None


class ReadyBody(BaseModel):
    ready: bool
    status: Literal["warming", "ready", "failed"]
    models: dict[str, float]  # seconds each model took to load and answer its first query
    error: str | None = None


_DESCRIPTIONS = {
    400: "bad query or input (an engine error that the schema cannot express)",
    401: "an API key is needed (the store has keys): missing, unknown or revoked",
    403: "not allowed: the API key's scope does not cover the endpoint, ingest is off, or the path or file "
         "lies outside the allowed directories",
    404: "no such item or job, or the item has no such file",
    409: "another writer holds the store, an ingest job is running, or the store does not match its models",
    410: "the evidence is gone or changed since it was ingested or cited",
    413: "the request body is over its size limit",
    416: "the Range cannot be satisfied; Content-Range says the file's size",
    422: "malformed request: one `details` entry per problem",
    429: "too many requests from this API key or client; Retry-After says when to try again",
    502: "the LLM backend failed",
    503: "the store or a model is unusable, or (POST /ask) too many answers are being generated at once",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}
ACCESS_STATUSES = (401, 403, 429)  # any route but /healthz, once the store has an API key


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with, and those of access
    control (``ACCESS_STATUSES``), which every route but ``/healthz`` can answer with."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*statuses, *ACCESS_STATUSES}):
        model = ValidationErrorBody if status == 422 else ErrorBody
        out[status] = {"model": model, "description": _DESCRIPTIONS[status]}
        if status in _HEADERS:
            out[status]["headers"] = _HEADERS[status]
    return out


def _whole_number(value: Any) -> Any:
    """JSON's integers (``3``, also ``3.0``), never a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "expected a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise PydanticCustomError("int_from_float", "expected a whole number, not a fraction")
    return int(value)


def _text_with_content(value: str) -> str:
    if not _HAS_TEXT.search(value):
        raise PydanticCustomError("blank_text", "expected some text, not only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("bad_unicode", "expected Unicode text, not a lone surrogate") from None
    return value


class WhereFilter(BaseModel):
    """Filters: ``source`` (glob on the path), ``kind``, ``modality``, or a metadata key -> value.

    The shape the routes rely on; each app's model (``request_models``) adds its limits.
    """

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    kind: str | None = None
    modality: Modality | None = None

    def filters(self) -> dict[str, Any]:
        """The filters that were given, as the engine takes them."""
        out = dict(self.model_extra or {})
        out.update((k, v) for k, v in (("source", self.source), ("kind", self.kind)) if v is not None)
        if self.modality is not None:
            out["modality"] = self.modality.value
        return out


class SearchRequest(BaseModel):
    """The body of ``POST /search`` (its static shape; see ``WhereFilter``)."""

    text: str
    k: int | None = None
    modalities: list[Modality] | None = None
    where: WhereFilter | None = None
    mmr: bool | None = None


class AskRequest(BaseModel):
    """The body of ``POST /ask``."""

    question: str
    k: int = 8
    modalities: list[Modality] | None = None
    where: WhereFilter | None = None


class IngestRequest(BaseModel):
    """The body of ``POST /ingest``."""

    paths: list[str]
    prune: bool = False


class PathReason(BaseModel):
    path: str
    reason: str


class IngestReportBody(BaseModel):
    """What an ingest did (as ``mmrag ingest --json``)."""

    added: int
    updated: int
    unchanged: int
    removed: int
    items: int
    failed: list[PathReason]
    skipped: list[PathReason]
    seconds: float
    run_id: int | None


class JobProgressBody(BaseModel):
    files_seen: int = Field(description="files found to ingest so far")
    files_done: int = Field(description="files finished (added, updated, unchanged or failed)")
    files_failed: int
    items_added: int


class JobBody(BaseModel):
    """An ingest job (kept in the server process only; the catalog's runs table keeps the history)."""

    job: str
    status: Literal["queued", "running", "done", "failed", "interrupted"]
    url: str = Field(description="where to follow the job: GET /jobs/{job}")
    paths: list[str]
    started_at: str
    finished_at: str | None
    progress: JobProgressBody
    report: IngestReportBody | None = Field(description="the ingest report, once done")
    error: str | None = Field(description="why the job failed or was interrupted")
    error_type: str | None


def _file_url(value: str) -> str:
    try:
        parse_file_url(value)
    except LinkError as exc:
        raise PydanticCustomError("file_url", str(exc)) from None
    return value


FileUrl = Annotated[str, Field(max_length=200), AfterValidator(_file_url), WithJsonSchema({
    "type": "string", "maxLength": 200, "pattern": FILE_URL_PATTERN,
    "description": "an open_url or thumbnail_url of a hit, without its #fragment"})]


class LinksRequest(BaseModel):
    """The body of ``POST /links``: file URLs to sign."""

    urls: list[FileUrl] = Field(min_length=1, max_length=100)


class LinksBody(BaseModel):
    """The URLs signed, in the order asked; unchanged while the API needs no key."""

    urls: list[str]
    expires_at: str | None = Field(description="when the signed URLs stop working (UTC, ISO 8601); "
                                               "null when they were not signed")


class JobListBody(BaseModel):
    jobs: list[JobBody] = Field(description="the recent jobs, newest first")


@dataclass(frozen=True)
class RequestModels:
    """The request types of one app, with its limits: ``text`` is the type of query text and
    questions (an ``Annotated`` str), the others the JSON bodies."""

    text: Any
    search: type[SearchRequest]
    ask: type[AskRequest]
    ingest: type[IngestRequest]


def _where_value_check(limit: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, str):
            if len(value) > limit:
                message = "a where value may have at most {limit} characters"
                raise PydanticCustomError("where_value_too_long", message, {"limit": limit})
            return value
        if isinstance(value, (bool, int, float)):
            return value
        raise PydanticCustomError("where_value_type", "expected a string, number or boolean")

    return check


def _check_where_keys(where: BaseModel, limits: ServerLimits) -> None:
    """At most ``max_where_keys`` filters, each key 1 to ``max_where_chars`` characters."""
    extra = where.model_extra or {}
    count = len(where.model_fields_set | set(extra))
    if count > limits.max_where_keys:
        raise PydanticCustomError("too_many_filters", "at most {limit} filters are accepted, "
                                  "got {count}", {"limit": limits.max_where_keys, "count": count})
    for key in extra:
        if not key or len(key) > limits.max_where_chars:
            message = "a where key must have 1 to {limit} characters, got {key}"
            raise PydanticCustomError("where_key", message, {"limit": limits.max_where_chars,
                                                             "key": shown(key)})


def _where_schema(limits: ServerLimits) -> dict[str, Any]:
    return {"maxProperties": limits.max_where_keys,
            "propertyNames": {"minLength": 1, "maxLength": limits.max_where_chars}}


def _where_value_schema(chars: int) -> dict[str, Any]:
    return {"anyOf": [{"type": "string", "maxLength": chars}, {"type": "number"}, {"type": "boolean"}]}


def request_models(limits: ServerLimits) -> RequestModels:
    """The query text type and the JSON bodies of POST /search, /ask and /ingest under ``limits``."""
    chars = limits.max_where_chars
    Text = Annotated[
        str,
        Field(min_length=1, max_length=limits.max_query_chars, json_schema_extra={"pattern": _HAS_TEXT.pattern}),
        AfterValidator(_text_with_content),
    ]
    WhereText = Annotated[str, Field(max_length=chars)]
    WhereValue = Annotated[Any, PlainValidator(_where_value_check(chars)), WithJsonSchema(_where_value_schema(chars))]
    K = Annotated[int, Field(ge=1, le=limits.max_k), BeforeValidator(_whole_number)]
    Modalities = Annotated[list[Modality], Field(max_length=MAX_MODALITY_NAMES)]
    PathText = Annotated[str, Field(min_length=1, max_length=limits.max_path_chars)]

    class Where(WhereFilter):
        model_config = ConfigDict(extra="allow", json_schema_extra=_where_schema(limits))
        __pydantic_extra__: dict[str, WhereValue] = Field(init=False)

        source: WhereText | None = Field(None, description="glob on the source path")
        kind: WhereText | None = Field(None, description="item kind: chunk, page, figure, photo, window, keyframe")
        modality: Modality | None = None

        @model_validator(mode="after")
        def _bounded(self) -> "Where":
            _check_where_keys(self, limits)
            return self

    class SearchBody(SearchRequest):
        model_config = ConfigDict(extra="forbid")

        text: Text
        k: K | None = None
        modalities: Modalities | None = None
        where: Where | None = None
        mmr: StrictBool | None = None

    class AskBody(AskRequest):
        model_config = ConfigDict(extra="forbid")

        question: Text
        k: K = 8
        modalities: Modalities | None = None
        where: Where | None = None

    class IngestBody(IngestRequest):
        model_config = ConfigDict(extra="forbid")

        paths: list[PathText] = Field(min_length=1, max_length=limits.max_ingest_paths)
        prune: StrictBool = False

    return RequestModels(text=Text, search=SearchBody, ask=AskBody, ingest=IngestBody)
