"""The request and error models of the HTTP service, and the OpenAPI responses of each route.

The request models are built from the app's ``ServerLimits`` so that the schema states
exactly what the server accepts: a request the schema allows is never refused as malformed.
"""

import re
from dataclasses import dataclass
from typing import Annotated, Any

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
from retriever.types import Modality

__all__ = [
    "ErrorBody", "ValidationErrorBody", "HealthBody", "RequestModels", "request_models", "responses",
    "BINARY", "MAX_ITEM_ID", "MAX_MODALITY_NAMES", "VERSION_PATTERN",
]

MAX_ITEM_ID = 2**63 - 1  # item ids are signed 64-bit integers in the catalog
MAX_MODALITY_NAMES = 16
VERSION_PATTERN = r"^[0-9a-f]{16}$"
_HAS_TEXT = re.compile(r"\S")
BINARY = {"schema": {"type": "string", "format": "binary"}}


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


_DESCRIPTIONS = {
    400: "bad query or input (an engine error that the schema cannot express)",
    403: "not allowed: ingest is off, or the path or file lies outside the allowed directories",
    404: "no such item, or the item has no such file",
    409: "another writer holds the store, or the store does not match its models",
    410: "the evidence is gone or changed since it was ingested or cited",
    413: "the request body is over its size limit",
    416: "the Range cannot be satisfied; Content-Range says the file's size",
    422: "malformed request: one `details` entry per problem",
    502: "the LLM backend failed",
    503: "the store or a model is unusable",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer with."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = ValidationErrorBody if status == 422 else ErrorBody
        out[status] = {"model": model, "description": _DESCRIPTIONS[status]}
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


def query_text_type(limits: ServerLimits) -> Any:
    """Non-blank text of at most ``max_query_chars`` characters (the schema says so too)."""
    return Annotated[
        str,
        Field(min_length=1, max_length=limits.max_query_chars,
              json_schema_extra={"pattern": _HAS_TEXT.pattern}),
        AfterValidator(_text_with_content),
    ]


def _where_value(limit: int) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str):
            if len(value) > limit:
                message = "a where value may have at most {limit} characters"
                raise PydanticCustomError("where_value_too_long", message, {"limit": limit})
            return value
        if isinstance(value, (bool, int, float)):
            return value
        raise PydanticCustomError("where_value_type", "expected a string, number or boolean")

    schema = {"anyOf": [{"type": "string", "maxLength": limit}, {"type": "number"}, {"type": "boolean"}]}
    return Annotated[Any, PlainValidator(check), WithJsonSchema(schema)]


def where_model(limits: ServerLimits) -> type[BaseModel]:
    """Filters: ``source`` (glob on the path), ``kind``, ``modality``, or a metadata key -> value."""
    Text = Annotated[str, Field(max_length=limits.max_where_chars)]
    Value = _where_value(limits.max_where_chars)
    keys = limits.max_where_keys

    class Where(BaseModel):
        model_config = ConfigDict(extra="allow", json_schema_extra={
            "maxProperties": keys, "propertyNames": {"minLength": 1, "maxLength": limits.max_where_chars},
        })
        __pydantic_extra__: dict[str, Value] = Field(init=False)

        source: Text | None = Field(None, description="glob on the source path")
        kind: Text | None = Field(None, description="item kind: chunk, page, figure, photo, window, keyframe")
        modality: Modality | None = None

        @model_validator(mode="after")
        def _bounded(self) -> "Where":
            extra = self.model_extra or {}
            count = len(self.model_fields_set | set(extra))
            if count > keys:
                raise PydanticCustomError("too_many_filters", "at most {limit} filters are accepted, "
                                          "got {count}", {"limit": keys, "count": count})
            for key in extra:
                if not key or len(key) > limits.max_where_chars:
                    message = "a where key must have 1 to {limit} characters, got {key}"
                    raise PydanticCustomError("where_key", message, {"limit": limits.max_where_chars,
                                                                     "key": shown(key)})
            return self

        def filters(self) -> dict[str, Any]:
            """The filters that were given, as the engine takes them."""
            out = dict(self.model_extra or {})
            out.update((k, v) for k, v in (("source", self.source), ("kind", self.kind)) if v is not None)
            if self.modality is not None:
                out["modality"] = self.modality.value
            return out

    return Where


@dataclass(frozen=True)
class RequestModels:
    text: Any
    search: type[BaseModel]
    ask: type[BaseModel]
    ingest: type[BaseModel]


def request_models(limits: ServerLimits) -> RequestModels:
    """The JSON bodies of POST /search, /ask and /ingest under ``limits``."""
    Text = query_text_type(limits)
    Where = where_model(limits)
    K = Annotated[int, Field(ge=1, le=limits.max_k), BeforeValidator(_whole_number)]
    Modalities = Annotated[list[Modality], Field(max_length=MAX_MODALITY_NAMES)]
    PathText = Annotated[str, Field(min_length=1, max_length=limits.max_path_chars)]

    class SearchBody(BaseModel):
        model_config = ConfigDict(extra="forbid")

        text: Text
        k: K | None = None
        modalities: Modalities | None = None
        where: Where | None = None
        mmr: StrictBool | None = None

    class AskBody(BaseModel):
        model_config = ConfigDict(extra="forbid")

        question: Text
        k: K = 8
        modalities: Modalities | None = None
        where: Where | None = None

    class IngestBody(BaseModel):
        model_config = ConfigDict(extra="forbid")

        paths: list[PathText] = Field(min_length=1, max_length=limits.max_ingest_paths)
        prune: StrictBool = False

    return RequestModels(text=Text, search=SearchBody, ask=AskBody, ingest=IngestBody)
