"""Indexes over the catalog's items: the vector-index protocol and its FAISS backend, BM25, and the
spaces that keep each index in step with the catalog's change log."""
