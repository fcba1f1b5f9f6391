"""Which ingestor handles which file, decided from the content (sniffed) and the name.

``default_registry()`` imports the built-in ingestors by name; a family whose module
or optional dependency is missing is recorded as unavailable with an install hint,
so a PDF without the ``pdf`` extra fails with "PDF support needs the 'pdf' extra ..."
rather than the whole engine failing to start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from indexers.base import Ingestor
from indexers.sniff import EXTENSION_TYPES, expected_type, family, sniff
from retriever.errors import IngestError, UnsupportedInput

__all__ = [
    "Registry",
    "FamilyStatus",
    "IngestorSpec",
    "DEFAULT_INGESTORS",
    "default_registry",
    "load_ingestor",
]

FAMILIES = ("image", "text", "pdf", "audio", "video")
_LABELS = {"image": "Image", "text": "Text", "pdf": "PDF", "audio": "Audio", "video": "Video"}


@dataclass(frozen=True)
class IngestorSpec:
    """A built-in ingestor: its family, ``module:Class`` and the pip extra it needs."""

    family: str
    target: str
    extra: str | None = None


DEFAULT_INGESTORS: tuple[IngestorSpec, ...] = (
    IngestorSpec("image", "indexers.images:ImageIngestor"),
    IngestorSpec("text", "indexers.text:TextIngestor"),
    IngestorSpec("pdf", "indexers.pdf.ingestor:PdfIngestor", "pdf"),
    IngestorSpec("audio", "indexers.av.audio:AudioIngestor", "media"),
    IngestorSpec("video", "indexers.av.video:VideoIngestor", "media"),
)


@dataclass(frozen=True)
class FamilyStatus:
    """Whether a family of inputs can be ingested here, by which ingestor, or why not."""

    family: str
    available: bool
    ingestor: str | None = None
    reason: str | None = None


class Registry:
    """An ordered set of ingestors plus the families known to be unavailable (and why)."""

    def __init__(self, ingestors: Iterable[Ingestor] = (), unavailable: dict[str, str] | None = None) -> None:
        self._ingestors: list[Ingestor] = []
        self._unavailable: dict[str, str] = dict(unavailable or {})
        for ingestor in ingestors:
            self.register(ingestor)

    def register(self, ingestor: Ingestor) -> None:
        """Add an ingestor; it takes precedence over none (first registered wins a tie)."""
        if not isinstance(ingestor, Ingestor):
            raise TypeError(f"{ingestor!r} does not implement the Ingestor protocol")
        self._ingestors.append(ingestor)
        for fam in _families_of(ingestor):
            self._unavailable.pop(fam, None)

    def mark_unavailable(self, family_name: str, reason: str) -> None:
        self._unavailable[family_name] = reason

    @property
    def ingestors(self) -> tuple[Ingestor, ...]:
        return tuple(self._ingestors)

    def unavailable(self) -> dict[str, str]:
        """Family -> why it cannot be ingested here (e.g. an extra to install)."""
        return dict(self._unavailable)

    def families(self) -> tuple[FamilyStatus, ...]:
        """Every known family with its ingestor, or the reason it is unavailable."""
        out: list[FamilyStatus] = []
        names = list(FAMILIES) + sorted({f for i in self._ingestors for f in _families_of(i)} - set(FAMILIES))
        for fam in names:
            ingestor = next((i for i in self._ingestors if fam in _families_of(i)), None)
            if ingestor is not None:
                out.append(FamilyStatus(fam, True, ingestor.name))
            else:
                reason = self._unavailable.get(fam, f"no {fam} ingestor is registered")
                out.append(FamilyStatus(fam, False, None, reason))
        return tuple(out)

    def for_type(self, path: Path, content_type: str) -> Ingestor | None:
        return next((i for i in self._ingestors if i.accepts(path, content_type)), None)

    def resolve(self, path: Path) -> tuple[Ingestor, str]:
        """The ingestor for ``path`` and the content type it should be read as.

        Raises ``IngestError`` for unreadable/empty files and for content that
        contradicts the extension, ``UnsupportedInput`` when nothing handles the type.
        """
        path = Path(path)
        sniffed = _sniff_file(path)
        claimed = expected_type(path)
        content_type = _decide(path, sniffed, claimed)
        ingestor = self.for_type(path, content_type)
        if ingestor is not None:
            return ingestor, content_type
        fam = family(content_type)
        if fam in self._unavailable:
            raise UnsupportedInput(f"{content_type}: {self._unavailable[fam]}")
        supported = ", ".join(sorted({t for i in self._ingestors for t in i.content_types})) or "none"
        raise UnsupportedInput(
            f"unsupported file type {content_type}: no ingestor handles it (supported: {supported})"
        )

    def is_candidate(self, path: Path) -> bool:
        """Cheap pre-filter for directory discovery: a known extension, or sniffable content
        when the name has no extension. Dot-files and unknown extensions are skipped silently."""
        path = Path(path)
        if path.name.startswith("."):
            return False
        suffix = path.suffix.lower()
        if suffix:
            return suffix in EXTENSION_TYPES
        try:
            return family(sniff(path)) is not None
        except OSError:
            return False


def _sniff_file(path: Path) -> str | None:
    try:
        if not path.is_file():
            if path.exists():
                raise UnsupportedInput(f"not a regular file: {path}")
            raise IngestError(f"file not found: {path}")
        if path.stat().st_size == 0:
            raise IngestError("empty file (0 bytes)")
        return sniff(path)
    except OSError as exc:
        raise IngestError(f"cannot read file: {exc.strerror or exc}") from None


def _decide(path: Path, sniffed: str | None, claimed: str | None) -> str:
    """Content wins within a family; a cross-family clash is an error, except audio/video
    containers (mp4, ogg, webm) where the extension says which of the two is meant."""
    suffix = path.suffix.lower() or "(none)"
    if sniffed is None:
        if claimed is not None:
            return claimed  # let its ingestor try: it reports what is wrong with the content
        raise UnsupportedInput(
            f"unsupported file type: the extension {suffix} is not a known type and the content "
            "matches no supported format (image, PDF, text, audio, video)"
        )
    if claimed is None or family(claimed) == family(sniffed):
        return sniffed
    if {family(claimed), family(sniffed)} == {"audio", "video"}:
        return claimed
    raise IngestError(f"content is {sniffed} but the extension {suffix} says {claimed}")


def _families_of(ingestor: Ingestor) -> set[str]:
    return {f for f in (family(t) for t in ingestor.content_types) if f}


def load_ingestor(spec: IngestorSpec) -> Ingestor:
    """Import and construct ``spec.target``; ``ImportError`` says which extra to install."""
    module_name, _, class_name = spec.target.partition(":")
    label = _LABELS.get(spec.family, spec.family)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if missing == module_name:
            detail = f"module {module_name} is missing"
        else:
            detail = f"cannot import {missing or module_name}: {exc}"
        if spec.extra:
            hint = f"pip install 'mmrag[{spec.extra}]'"
            raise ImportError(f"{label} support needs the '{spec.extra}' extra: {hint} ({detail})") from exc
        raise ImportError(f"{label} support failed to load ({detail})") from exc
    except OSError as exc:  # a native library that the module loads is missing or broken
        raise ImportError(f"{label} support failed to load: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"{label} support failed to load: {module_name} has no {class_name}")
    return cls()


def default_registry(specs: Iterable[IngestorSpec] = DEFAULT_INGESTORS) -> Registry:
    """The built-in ingestors; families that cannot load are recorded with the reason."""
    registry = Registry()
    for spec in specs:
        try:
            registry.register(load_ingestor(spec))
        except ImportError as exc:
            registry.mark_unavailable(spec.family, str(exc))
    return registry
