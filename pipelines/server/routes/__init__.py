"""The routes of the HTTP service, one ``APIRouter`` per concern, each built for one app (its
engine, ``ServerLimits`` and allowed directories): ``status`` (health, stats), ``search``, ``ask``,
``items`` (the evidence files and thumbnails) and ``ingest``."""
