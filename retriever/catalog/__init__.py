"""The SQL catalog: sources, items, durable vectors, change log and ingest runs.

The only package that speaks SQL; everything else gets the frozen records of ``records``.
"""

from retriever.catalog.records import (
    FailedSources,
    ItemRecord,
    ItemSummary,
    NewItem,
    RunRecord,
    SourceCount,
    SourceInfo,
    SourceRecord,
)
from retriever.catalog.repository import Catalog

__all__ = [
    "Catalog",
    "FailedSources",
    "ItemRecord",
    "ItemSummary",
    "NewItem",
    "RunRecord",
    "SourceCount",
    "SourceInfo",
    "SourceRecord",
]
