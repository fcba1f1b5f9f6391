"""The URLs of the evidence in hits and answers: ``open_url`` and ``thumbnail_url``.

``open_url`` carries ``?v=`` with the first 16 hex digits of the source's content hash at
the time of the search, so a link made before its source changed is answered with 410
instead of the new content; the fragment (``#page=N``, ``#t=START,END``) points a viewer
at the evidence inside the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipelines.engine import Engine
from retriever.types import Hit, Locator

__all__ = ["Links", "open_fragment", "source_version"]

VERSION_CHARS = 16


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def open_fragment(locator: Locator) -> str:
    """The URL fragment that points a viewer at the evidence: ``#page=N`` or ``#t=START,END``."""
    where, a, b = locator.place()
    if where == "page":
        return f"#page={a}"
    if where == "span":
        return f"#t={_seconds(a)},{_seconds(b)}"
    if where == "at":
        return f"#t={_seconds(a)}"
    return ""


def source_version(content_hash: str | None) -> str | None:
    """The first 16 hex digits of a catalog content hash (``blake2b:<hex>``); None when there is none."""
    if not content_hash:
        return None
    return content_hash.rpartition(":")[2][:VERSION_CHARS].lower() or None


def _versions(engine: Engine, uris: Iterable[str]) -> dict[str, str | None]:
    """The version of each source (one catalog read for all of them)."""
    return {uri: source_version(h) for uri, h in engine.source_hashes(uris).items()}


class Links:
    """Builds the evidence URLs of one response (one catalog read for all its sources)."""

    def __init__(self, engine: Engine, root: str, uris: Iterable[str]) -> None:
        self.root = root.rstrip("/")
        self.versions = _versions(engine, uris)

    def open_url(self, item_id: int, uri: str, locator: Locator) -> str:
        version = self.versions.get(uri)
        query = f"?v={version}" if version else ""
        return f"{self.root}/items/{item_id}/open{query}{open_fragment(locator)}"

    def hit(self, hit: Hit) -> dict[str, Any]:
        """``Hit.to_dict()`` (the JSON of ``mmrag search --json``) plus its evidence URLs and version."""
        out = hit.to_dict()
        out["source_version"] = self.versions.get(hit.source_uri)
        out["open_url"] = self.open_url(hit.item_id, hit.source_uri, hit.locator)
        if hit.thumbnail_path:
            out["thumbnail_url"] = f"{self.root}/items/{hit.item_id}/thumbnail"
        return out

    def evidence(self, ev: Any) -> dict[str, Any]:
        """``Evidence.to_dict()`` (numbered evidence of an answer) plus its evidence URLs and version."""
        entry = ev.to_dict()
        hit = self.hit(ev.hit)
        entry.update({k: v for k, v in hit.items() if k.endswith("_url") or k == "source_version"})
        return entry

    def answer(self, answer: Any) -> dict[str, Any]:
        """``Answer.to_dict()`` (the JSON of ``mmrag ask --json``) with the URLs of every citation."""
        data = answer.to_dict()
        for citation, entry in zip(answer.citations, data["citations"], strict=True):
            entry["source_version"] = self.versions.get(citation.source)
            entry["open_url"] = self.open_url(citation.item_id, citation.source, citation.locator)
        data["evidence"] = [self.evidence(ev) for ev in answer.evidence]
        return data
