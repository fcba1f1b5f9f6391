"""The Ingestor protocol: one small object per kind of input file.

An ingestor says whether it accepts a file (by its sniffed content type) and turns
an accepted file into a stream of ``Item``s. It never touches the store: the
pipeline encodes, thumbnails and commits what it yields. Errors are raised as
``IngestError`` (or subclasses) with a reason a person can act on; the pipeline
records them against the source and carries on with the next file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

from retriever.config import Config
from retriever.types import Item, Modality

if TYPE_CHECKING:  # the speech model's module needs PyAV (the 'media' extra); only its type is used here
    from indexers.av.transcribe import SpeechToText

__all__ = ["Ingestor", "IngestContext", "TextEmbedder", "ImageEmbedder"]


class TextEmbedder(Protocol):
    def __call__(self, texts: list[str]) -> Any: ...


class ImageEmbedder(Protocol):
    def __call__(self, images: list[Any]) -> Any: ...


@dataclass
class IngestContext:
    """What an ingestor may use and report while ingesting one file.

    ``config`` is the engine's configuration. ``source_metadata`` is recorded on the
    source (e.g. PDF title/author/pages, audio language and model). ``notes`` are
    non-fatal findings (e.g. "page 3 has no text layer") kept on the source.
    ``embed_images`` gives L2-normalised CLIP image vectors (e.g. to drop
    near-duplicate video keyframes); it is None when no CLIP space exists.
    ``deadline`` is a ``time.monotonic()`` value after which work should stop
    with ``LimitExceeded`` (None: no limit). ``transcriber`` is the speech model that
    audio and video ingestors share (None: they use the process-wide one for the config).
    """

    config: Config = field(default_factory=Config)
    source_metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    embed_images: ImageEmbedder | None = None
    deadline: float | None = None
    transcriber: SpeechToText | None = None


@runtime_checkable
class Ingestor(Protocol):
    """Turns one kind of file into evidence items."""

    name: str
    modality: Modality
    content_types: frozenset[str]  # sniffed types it handles, e.g. {"image/jpeg", "image/png"}

    def accepts(self, path: Path, content_type: str) -> bool:
        """True if this ingestor handles a file of this sniffed content type."""
        ...

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        """Yield the file's items; raise ``IngestError`` with a reason on bad input."""
        ...
