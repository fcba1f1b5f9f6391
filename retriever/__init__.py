"""The core: value types, settings, the SQL catalog, vector and BM25 indexes, encoders, search and
store maintenance. Imports neither ``indexers`` nor ``pipelines``."""
