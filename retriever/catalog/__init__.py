"""The SQL catalog: sources, items, durable vectors, change log and ingest runs."""

from retriever.catalog.repository import Catalog, ItemRecord, NewItem, SourceInfo, SourceRecord

__all__ = ["Catalog", "ItemRecord", "NewItem", "SourceInfo", "SourceRecord"]
