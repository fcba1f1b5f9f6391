"""The ingest run (``IngestPipeline`` in ``pipeline``): ``discover`` finds the files (confined,
never a store), ``workers`` hash them, skip unchanged ones and ingest and ``prepare`` the rest in
threads, the main thread encodes items in batches and commits each source in one catalog
transaction; ``progress`` reports what happens and ``interrupt`` makes Ctrl-C stop a run
promptly without losing what was committed."""
