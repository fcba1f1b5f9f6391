"""The ingest run (``IngestPipeline`` in ``pipeline``): ``discover`` finds the files (confined,
never a store), ``workers`` hash them, skip unchanged ones and ingest and ``prepare`` the rest in
threads, the main thread encodes items in batches and commits each source in one catalog
transaction (``commit``, ``encode``); ``progress`` reports what happens and ``interrupt`` makes
Ctrl-C stop a run promptly without losing what was committed. With ``executor="ray"`` the decode
and encode stages run on a Ray cluster instead (``ray_executor``, ``ray_tasks``); the rest of the
run is the same."""
