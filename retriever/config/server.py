"""The limits of ``mmrag serve``: what one request may carry and how often it may come.

A config section like the others, so the limits are set in ``mmrag.toml`` (``[server]``), or
for one run with ``mmrag serve --set server.requests_per_minute=1200``. The HTTP layer reads it
through ``pipelines.server.limits.ServerLimits``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from retriever.config.checks import Problems

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """Limits on requests, checked before the engine sees anything.

    ``max_query_chars`` bounds search text and questions: the text models read at most
    256 tokens (CLIP 77), so 2,000 characters is already more than any of them uses.
    """

    max_body_bytes: int = 1 << 20  # a JSON body: search, ask, ingest
    max_upload_bytes: int = 32 << 20  # the image of POST /search/image, the clip of POST /search/audio
    max_form_overhead_bytes: int = 1 << 20  # the other fields and boundaries of that form
    max_query_chars: int = 2000
    max_k: int = 1000
    max_where_keys: int = 16
    max_where_chars: int = 1024  # a where key, a where string value, a source glob
    max_ingest_paths: int = 1000
    max_path_chars: int = 4096
    requests_per_minute: int = 600  # per API key (per client address while the API has no keys)
    max_concurrent_asks: int = (
        4  # answers being generated at once (POST /ask and /ask/stream), over all callers
    )
    max_audio_query_s: int = 120  # the longest clip POST /search/audio transcribes
    link_ttl_s: int = 3600  # how long a signed file link of POST /links works

    def __post_init__(self) -> None:
        check = Problems("server")
        for f in fields(self):
            check.at_least(f.name, getattr(self, f.name), 1, integer=True)
        check.raise_if_any()
