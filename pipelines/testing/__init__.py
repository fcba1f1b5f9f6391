"""Harnesses shared by the tests and the benchmarks (``bench/``), e.g. the kill -9 crash
torture of the ingest pipeline (``pipelines.testing.crash``). They drive the public API
only; importing this package loads no model library and does not need pytest."""
