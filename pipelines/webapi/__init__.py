"""The parts of the HTTP service (``pipelines.server``): request limits, error bodies,
request models, hit links and evidence files."""
