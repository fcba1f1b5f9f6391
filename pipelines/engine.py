"""The Python API: open a store, ingest, search, ask, remove, stats.

>>> from pipelines import Engine
>>> with Engine.open("my-store") as eng:                      # doctest: +SKIP
...     eng.ingest(["photos/", "reports/"])
...     for hit in eng.search(text="a dog on a beach", k=5):
...         print(hit.citation, hit.score)

Models load on first use. Searches never take the write lock, so any number of
readers (threads or processes) can search while one writer ingests.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from indexers.pipeline import IngestPipeline, IngestReport
from indexers.registry import Registry, default_registry
from retriever.config import Config
from retriever.encoders import build_clip_encoder, build_text_encoder
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.errors import QueryError
from retriever.search import Query, Retriever
from retriever.store import Store
from retriever.types import CLIP_SPACES, SPACE_CLIP, SPACE_TEXT, Hit, Modality

__all__ = ["Engine"]


class Engine:
    """One store plus the models it was built with."""

    def __init__(self, store: Store, config: Config, registry: Registry | None = None) -> None:
        self.store = store
        self.config = config
        self.registry = registry or default_registry()
        self._clip: ImageTextEncoder | None = None
        self._clip_built = False
        self._text: TextEncoder | None = None
        self._transcriber: Any = None
        self._lock = threading.Lock()
        self.store.check_models(self._wanted_models())

    @classmethod
    def open(
        cls,
        store: str | os.PathLike[str] | None = None,
        config: Config | None = None,
        overrides: Mapping[str, Any] | None = None,
        create: bool = True,
    ) -> "Engine":
        """Open (or create) the store at ``store`` (default ``$MMRAG_STORE`` or ``./mmrag-store``)."""
        if config is None:
            config = Config.load(store, overrides)
        elif overrides:
            config = config.with_overrides(overrides)
        if store is not None:
            config = config.with_overrides({"store": str(store)})
        return cls(Store(config.store, config, create=create), config)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # ---- models -------------------------------------------------------------
    def _wanted_models(self) -> dict[str, str]:
        wanted = {SPACE_TEXT: self.text_encoder.model_id}
        if self.clip_encoder is not None:
            spaces = CLIP_SPACES if self.config.models.clip_texts else (SPACE_CLIP,)
            wanted.update(dict.fromkeys(spaces, self.clip_encoder.model_id))
        return wanted

    @property
    def clip_encoder(self) -> ImageTextEncoder | None:
        with self._lock:
            if not self._clip_built:
                self._clip = build_clip_encoder(self.config.models)
                self._clip_built = True
            return self._clip

    @property
    def text_encoder(self) -> TextEncoder:
        with self._lock:
            if self._text is None:
                self._text = build_text_encoder(self.config.models)
            return self._text

    @property
    def transcriber(self) -> Any:
        """The shared speech model (audio/video ingest and audio queries), built on first use."""
        with self._lock:
            if self._transcriber is None:
                from indexers.transcribe import Transcriber

                self._transcriber = Transcriber(self.config.audio, device=self.config.models.device)
            return self._transcriber

    def _transcriber_or_none(self) -> Any:
        try:
            return self.transcriber
        except ImportError:
            return None

    # ---- write side ---------------------------------------------------------
    def ingest(
        self,
        paths: Sequence[str | os.PathLike[str]],
        prune: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> IngestReport:
        """Ingest files and directories (recursively). Unchanged files are skipped."""
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            pipe = IngestPipeline(
                self.store, self.registry, self.clip_encoder, self.text_encoder, self.config,
                progress=progress, transcriber=self._transcriber_or_none(),
            )
            return pipe.run(paths, prune=prune)

    def remove(self, paths: Sequence[str | os.PathLike[str]]) -> int:
        """Remove sources by file path, directory (everything under it) or glob; returns the count."""
        uris: set[str] = set()
        sources = self.store.catalog.sources()
        for raw in paths:
            text = str(raw)
            absolute = str(Path(text).expanduser().absolute())
            for s in sources:
                if s.uri == absolute or s.uri.startswith(absolute.rstrip(os.sep) + os.sep):
                    uris.add(s.uri)
                elif any(ch in text for ch in "*?[") and (
                    fnmatch.fnmatch(s.uri, text) or fnmatch.fnmatch(s.display, text) or fnmatch.fnmatch(s.uri, absolute)
                ):
                    uris.add(s.uri)
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            removed = self.store.catalog.remove_sources(sorted(uris))
            self.store.save()
        return removed

    # ---- read side ----------------------------------------------------------
    def retriever(self) -> Retriever:
        return Retriever(self.store, self.clip_encoder, self.text_encoder, self.config.search)

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        audio: str | os.PathLike[str] | None = None,
        k: int | None = None,
        modalities: Sequence[str | Modality] | None = None,
        where: Mapping[str, Any] | None = None,
        mmr: bool | None = None,
        depth: int | None = None,
        runs: Sequence[str] | None = None,
    ) -> list[Hit]:
        """One fused ranked list across modalities for a text, image and/or audio query.

        ``image`` is a path or a PIL image; ``audio`` is a path whose speech is
        transcribed and used as query text. ``where`` filters on ``source`` (glob),
        ``kind``, ``modality`` or any item metadata key (equality).
        """
        if audio is not None:
            text = self._audio_query_text(audio, text)
        query = Query(
            text=text,
            image=load_query_image(image) if image is not None else None,
            k=self.config.search.k if k is None else k,
            modalities=tuple(Modality.parse(m) for m in modalities) if modalities else None,
            where=dict(where or {}),
            depth=depth,
            mmr=mmr,
            runs=tuple(runs) if runs else None,
        )
        retriever = self.retriever()
        for _attempt in range(5):  # one catalog state per search: retry if a commit landed mid-search
            head = self.store.head()
            hits = retriever.search(query)
            if self.store.head() == head:
                break
        return hits

    def _audio_query_text(self, audio: str | os.PathLike[str], text: str | None) -> str:
        from indexers.transcribe import transcribe_query

        path = Path(audio)
        if not path.is_file():
            raise QueryError(f"audio query file not found: {audio}")
        spoken = transcribe_query(path, self.config.audio, self.transcriber).strip()
        if not spoken and not text:
            raise QueryError(f"no speech was recognised in the audio query {audio}")
        return " ".join(t for t in (text, spoken) if t)

    def ask(self, question: str, **kwargs: Any) -> Any:
        """Retrieve evidence and answer with checked citations (see ``pipelines.rag.ask``)."""
        from pipelines.rag import ask

        return ask(self, question, text_encoder=self.text_encoder, config=self.config.llm, **kwargs)

    # ---- maintenance --------------------------------------------------------
    def verify(self, check_files: bool = True, hash_all: bool = False) -> Any:
        """Check catalog <-> indexes <-> files, read-only (a ``retriever.verify.VerifyReport``)."""
        from retriever.verify import verify

        return verify(self.store, check_files=check_files, hash_all=hash_all)

    def repair(self, check_files: bool = True) -> Any:
        """Rebuild the indexes from the catalog's vectors and fix what verify found (a ``RepairReport``)."""
        from retriever.repair import repair

        with self.store.write_lock(self.config.ingest.lock_wait_s):
            return repair(self.store, check_files=check_files)

    def stats(self) -> dict[str, Any]:
        counts = self.store.catalog.counts()
        failed = [{"uri": s.uri, "reason": s.error} for s in self.store.catalog.sources(status="failed")]
        self.store.sync()
        return {
            "store": str(self.store.root),
            "catalog": self.store.catalog.safe_url,
            "spaces": {
                name: {"model": info.model_id, "dim": info.dim, "vectors": len(self.store.space(name) or []),
                       "index": getattr((self.store.space(name) or None) and self.store.space(name).index, "kind", None)}
                for name, info in self.store.spaces().items()
            },
            "bm25_docs": len(self.store.bm25()),
            **counts,
            "failed": failed,
        }


def load_query_image(image: Any) -> Any:
    """A PIL RGB image from a path or an image object, with a clear error for bad input."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise QueryError(f"query image not found: {image}")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (448, 448))
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise QueryError(f"query image {image} is not a readable image: {exc}") from exc
