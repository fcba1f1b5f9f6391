"""Value types passed between stages: modalities, locators, items and search hits.

Everything here is a frozen dataclass so stages cannot mutate what they hand on.
A ``Locator`` is the address of a piece of evidence that a person can open:
a whole image, a PDF page (optionally a box on it), a text span, an audio span
or a video moment.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

__all__ = [
    "Modality",
    "Space",
    "RunName",
    "ItemKind",
    "SourceStatus",
    "RunStatus",
    "Locator",
    "Item",
    "Hit",
    "format_timestamp",
    "spaces_for",
    "store_spaces",
    "SPACE_CLIP",
    "SPACE_CLIP_TEXTS",
    "SPACE_TEXT",
    "SPACE_BM25",
    "CLIP_SPACES",
    "DENSE_SPACES",
    "ALL_SPACES",
]


class Space(enum.StrEnum):
    """The retrieval spaces. Dense spaces hold vectors; BM25 is lexical.

    The CLIP model fills two spaces with their own indexes: ``clip`` holds the image-tower
    vectors of visual items (photos, page renders, figures, keyframes) and ``clip_texts``
    the text-tower vectors of text items. A text query's CLIP run searches ``clip`` alone:
    through CLIP's modality gap any text chunk is nearer a text query than the right image
    is, so in one shared index a few hundred chunks would hide every image from that run.
    Members are strings, so manifests, catalog rows and JSON keep the plain names.
    """

    CLIP = "clip"
    CLIP_TEXTS = "clip_texts"
    TEXT = "text"
    BM25 = "bm25"


SPACE_CLIP = Space.CLIP
SPACE_CLIP_TEXTS = Space.CLIP_TEXTS
SPACE_TEXT = Space.TEXT
SPACE_BM25 = Space.BM25
CLIP_SPACES = (Space.CLIP, Space.CLIP_TEXTS)
DENSE_SPACES = (Space.CLIP, Space.CLIP_TEXTS, Space.TEXT)
ALL_SPACES = (*DENSE_SPACES, Space.BM25)


class RunName(enum.StrEnum):
    """The runs of a search, one per way of ranking the store (the keys of ``Hit.scores``).

    ``clip_text``: the query text through CLIP's text tower; ``clip_image``: the query image
    through its image tower; ``text``: the sentence-transformers text space; ``bm25``: lexical.
    """

    CLIP_TEXT = "clip_text"
    CLIP_IMAGE = "clip_image"
    TEXT = "text"
    BM25 = "bm25"


class ItemKind(enum.StrEnum):
    """What an item is within its modality (``Item.kind``, stored as the plain string)."""

    CHUNK = "chunk"  # a span of text: of a text file, of a PDF page
    PHOTO = "photo"  # a whole picture file
    PAGE = "page"  # a rendered PDF page (a scanned one carries its OCR text)
    FIGURE = "figure"  # an image embedded in a PDF page
    WINDOW = "window"  # a transcript window of an audio or video file
    KEYFRAME = "keyframe"  # a video frame with the speech around it


class SourceStatus(enum.StrEnum):
    """A source's state in the catalog: ingested, or recorded with the reason it failed."""

    OK = "ok"
    FAILED = "failed"


class RunStatus(enum.StrEnum):
    """How an ingest run ended (``running`` while it goes on, and after it was killed)."""

    RUNNING = "running"
    OK = "ok"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


def store_spaces(*, clip: bool, clip_texts: bool) -> tuple[Space, ...]:
    """The dense spaces of a store: the text space always, CLIP's when it has a CLIP model.

    ``clip_texts`` (``models.clip_texts``) adds the CLIP text-tower space of text items.
    """
    if not clip:
        return (Space.TEXT,)
    return (*CLIP_SPACES, Space.TEXT) if clip_texts else (Space.CLIP, Space.TEXT)


def spaces_for(*, has_text: bool, visual: bool, available: Collection[str]) -> frozenset[Space]:
    """The dense spaces an item belongs in, among the ``available`` ones of its store.

    The one rule that the ingest pipeline (what it encodes) and ``verify`` (what it expects)
    both follow: a visual item goes into ``clip`` (image tower), an item with text into
    ``text``, and an item with text that is not visual into ``clip_texts`` (text tower).
    """
    wanted = set()
    if has_text:
        wanted.add(Space.TEXT)
    if visual:
        wanted.add(Space.CLIP)
    elif has_text:
        wanted.add(Space.CLIP_TEXTS)
    return frozenset(s for s in wanted if s in available)


class Modality(str, enum.Enum):
    """The medium a piece of evidence lives in (what a person opens to see it).

    ``TEXT``: a chunk of a text/markdown/html file. ``IMAGE``: a photo or picture file.
    ``PDF``: a text chunk, page render or figure of a PDF. ``AUDIO``: a transcript
    window of an audio file. ``VIDEO``: a keyframe or transcript window of a video.
    """

    TEXT = "text"
    IMAGE = "image"
    PDF = "pdf"
    AUDIO = "audio"
    VIDEO = "video"

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        """Parse a modality name, with an error that lists the accepted names."""
        if isinstance(value, Modality):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            from retriever.errors import QueryError

            names = ", ".join(m.value for m in cls)
            raise QueryError(f"unknown modality {value!r}; expected one of: {names}") from None


def format_timestamp(seconds: float) -> str:
    """Render seconds as ``MM:SS`` (or ``H:MM:SS`` past an hour)."""
    total = max(0, int(math.floor(seconds + 1e-6)))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass(frozen=True)
class Locator:
    """Where a piece of evidence is inside its source.

    ``uri`` is the absolute path of the source file. At most one family of the
    optional fields is set: ``page`` (1-based, with an optional ``bbox`` in PDF
    points ``(x0, top, x1, bottom)``), ``t_start``/``t_end`` (seconds, a span),
    ``t`` (seconds, a moment, e.g. a video keyframe), and ``char_start``/``char_end``
    (character offsets of a text chunk in the source's, or the page's, text).
    """

    uri: str
    page: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    t_start: float | None = None
    t_end: float | None = None
    t: float | None = None
    char_start: int | None = None
    char_end: int | None = None

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("Locator.uri must be a non-empty path")
        if self.page is not None and self.page < 1:
            raise ValueError(f"Locator.page is 1-based, got {self.page}")
        if self.t_start is not None and self.t_end is not None and self.t_end < self.t_start:
            raise ValueError(f"Locator span ends before it starts: {self.t_start}..{self.t_end}")
        if self.bbox is not None:
            object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))

    @property
    def name(self) -> str:
        return os.path.basename(self.uri)

    def place(self) -> tuple[str, Any, Any]:
        """Where in the source: ("page", n, None), ("span", start, end), ("at", t, None) or ("", None, None)."""
        if self.page is not None:
            return "page", self.page, None
        if self.t_start is not None:
            return "span", self.t_start, self.t_end if self.t_end is not None else self.t_start
        if self.t is not None:
            return "at", self.t, None
        return "", None, None

    def render(self, name: str | None = None) -> str:
        """Human citation: ``report.pdf p.3``, ``talk.mp4 @ 01:23–01:41``, ``cat.jpg``."""
        label = name or self.name
        where, a, b = self.place()
        if where == "page":
            return f"{label} p.{a}"
        if where == "span":
            return f"{label} @ {format_timestamp(a)}–{format_timestamp(b)}"
        if where == "at":
            return f"{label} @ {format_timestamp(a)}"
        return label

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the unset fields."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if f.name == "bbox" else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Locator":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if kwargs.get("bbox") is not None:
            kwargs["bbox"] = tuple(kwargs["bbox"])
        return cls(**kwargs)

    def with_uri(self, uri: str) -> "Locator":
        return replace(self, uri=uri)


@dataclass(frozen=True, eq=False)
class Item:
    """One piece of evidence produced by an ingestor, before it is stored.

    ``kind`` says what it is within its modality (``chunk``, ``page``, ``figure``,
    ``photo``, ``window``, ``keyframe``). ``text`` is the item's text (a chunk, a
    transcript window, an OCR'd page, or the speech around a keyframe). ``image``
    is its pixels (a PIL image) when it is visual; it is encoded and thumbnailed
    by the pipeline and never stored as such. ``metadata`` must be JSON-serialisable.
    """

    modality: Modality
    kind: str
    locator: Locator
    text: str | None = None
    image: Any = None  # PIL.Image.Image | None; typed loosely to keep PIL out of imports
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.text is None and self.image is None:
            raise ValueError(f"an Item needs text or an image: {self.locator.render()}")
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"Item.text must be str, got {type(self.text).__name__}")

    @property
    def is_visual(self) -> bool:
        return self.image is not None


@dataclass(frozen=True)
class Hit:
    """One result of a search: a stored item with its fused and per-run scores.

    ``scores`` maps a run name (``text``, ``bm25``, ``clip_text``, ``clip_image``) to the raw
    similarity in that run (cosine for dense runs, BM25 score for the lexical one); ``ranks``
    maps it to the 1-based rank.
    ``image_path`` is a full-size image for visual items (the photo itself or a
    stored render), usable as image evidence for a multimodal LLM.
    """

    item_id: int
    score: float
    scores: Mapping[str, float]
    ranks: Mapping[str, int]
    modality: Modality
    kind: str
    source_uri: str
    source_name: str
    locator: Locator
    text: str | None
    thumbnail_path: str | None
    image_path: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    copies: tuple[str, ...] = ()  # citations of the same passage in other places, folded into this hit

    @property
    def citation(self) -> str:
        return self.locator.render(self.source_name)

    @property
    def snippet(self) -> str:
        text = (self.text or "").strip().replace("\n", " ")
        return text if len(text) <= 240 else text[:237].rstrip() + "..."

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "score": self.score,
            "scores": dict(self.scores),
            "ranks": dict(self.ranks),
            "modality": self.modality.value,
            "kind": self.kind,
            "source": self.source_uri,
            "source_name": self.source_name,
            "citation": self.citation,
            "locator": self.locator.to_dict(),
            "text": self.text,
            "thumbnail": self.thumbnail_path,
            "image": self.image_path,
            "metadata": dict(self.metadata),
            "copies": list(self.copies),
        }
