"""The ingest run: discover files, hash and skip, decode and prepare in workers, encode in batches,
commit each source in one catalog transaction (``IngestPipeline``)."""
