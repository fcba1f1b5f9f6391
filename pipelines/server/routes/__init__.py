"""The routes of the HTTP service, one ``APIRouter`` per concern, each built for one app (its
engine, ``ServerLimits`` and allowed directories): ``status`` (health, stats), ``search``, ``ask``
(and its stream), ``items`` (the evidence files and thumbnails), ``ingest`` and ``page`` (the web page)."""
