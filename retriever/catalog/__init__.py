"""The SQL catalog: sources, items, durable vectors, change log and ingest runs.

The only package that speaks SQL; everything else gets the frozen records of ``records``.
"""

from retriever.catalog.records import (
    ApiKeyRecord,
    FailedSources,
    ItemRecord,
    ItemSummary,
    NewApiKey,
    NewItem,
    RunRecord,
    SourceCount,
    SourceInfo,
    SourceRecord,
)
from retriever.catalog.repository import Catalog

__all__ = [
    "ApiKeyRecord",
    "Catalog",
    "FailedSources",
    "ItemRecord",
    "ItemSummary",
    "NewApiKey",
    "NewItem",
    "RunRecord",
    "SourceCount",
    "SourceInfo",
    "SourceRecord",
]
