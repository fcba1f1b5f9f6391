"""Indexes over the catalog's items, and the spaces that keep each in step with the change log.

``base``: the ``VectorIndex`` / ``IndexBackend`` protocols, the one seam between a space and its
index; ``registry``: backends by name (``index.backend``); ``faiss_index`` and ``faiss_kinds``:
the FAISS backend; ``bm25``: the lexical index; ``spaces``: dense and lexical spaces; ``atomic``:
crash-safe index files; ``testing``: the contract tests every backend passes.
"""
