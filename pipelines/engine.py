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

import dataclasses
import fnmatch
import os
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from indexers.ingest.pipeline import IngestPipeline, IngestReport
from indexers.registry import Registry, default_registry
from pipelines.arguments import existing_paths, modality_list, path_list, query_text, store_path, where_filter
from retriever.config import Config
from retriever.encoders import build_clip_encoder, build_text_encoder
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.encoders.spec import parse_clip_spec
from retriever.errors import ArgumentError, QueryError, StoreError
from retriever.search import Query, Retriever
from retriever.store import Store
from retriever.types import CLIP_SPACES, SPACE_CLIP, SPACE_TEXT, Hit, Modality

__all__ = ["Engine"]


MODEL_KEYS = ("models.clip", "models.text", "models.clip_texts")


class Engine:
    """One store plus the models it was built with.

    Model settings the user left unset come from the store itself (recorded by its first
    ingest), so reading a store never needs its models repeated; a model given on purpose
    that differs from the store's is a ``StoreMismatchError``.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        registry: Registry | None = None,
        *,
        clip: ImageTextEncoder | None = None,
        text: TextEncoder | None = None,
        transcriber: Any = None,
    ) -> None:
        """``clip``, ``text`` and ``transcriber`` are models to use instead of building them from the
        config (share one loaded model between engines, or plug in another implementation of the
        encoder protocols); each one left None is built from the config on first use."""
        if not isinstance(store, Store) or not isinstance(config, Config):
            raise ArgumentError(f"Engine(store, config) expects a Store and a Config, got "
                                f"{type(store).__name__} and {type(config).__name__}; use Engine.open(path)")
        self.store = store
        self.config = adopt_store_models(store, config)
        self.registry = registry or default_registry()
        self._clip: ImageTextEncoder | None = clip
        self._clip_built = clip is not None
        self._text: TextEncoder | None = text
        self._transcriber: Any = transcriber
        self._injected = {"models.clip": clip is not None, "models.text": text is not None}
        self._lock = threading.Lock()
        self._closed = False
        self.store.check_models(self._wanted_models())

    @classmethod
    def open(
        cls,
        store: str | os.PathLike[str] | None = None,
        config: Config | None = None,
        overrides: Mapping[str, Any] | None = None,
        create: bool = True,
        *,
        clip: ImageTextEncoder | None = None,
        text: TextEncoder | None = None,
        transcriber: Any = None,
    ) -> "Engine":
        """Open (or create) the store at ``store`` (default ``$MMRAG_STORE`` or ``./mmrag-store``).

        ``create=False`` opens an existing store only (a ``StoreError`` names the missing one).
        """
        store = store_path(store)
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ArgumentError(f"Engine.open(overrides=...) expects a mapping such as {{'models.clip': 'none'}}, "
                                f"got {type(overrides).__name__}: {overrides!r}")
        if config is not None and not isinstance(config, Config):
            raise ArgumentError(f"Engine.open(config=...) expects a Config, got {type(config).__name__}")
        if config is None:
            config = Config.load(store, overrides)
        elif overrides:
            config = config.with_overrides(overrides)
        if store is not None:
            config = config.with_overrides({"store": str(store)})
        return cls(Store(config.store, config, create=create), config,
                   clip=clip, text=text, transcriber=transcriber)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store; the engine cannot be used afterwards."""
        self._closed = True
        self.store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"this Engine on {self.store.root} was closed; open the store again with Engine.open()")

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
                from indexers.av.transcribe import Transcriber

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
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        prune: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        *,
        within: Sequence[str | os.PathLike[str]] | None = None,
    ) -> IngestReport:
        """Ingest one path or a list of files and directories (recursively). Unchanged files are skipped.

        A path that does not exist is an ``InputNotFound`` error before anything is written.
        ``within`` confines the run: files (symlink targets included) that resolve outside
        those directories are skipped.
        """
        self._check_open()
        items = existing_paths(paths, "Engine.ingest")
        confine = [Path(d) for d in path_list(within, "Engine.ingest(within=...)")] if within is not None else None
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            pipe = IngestPipeline(
                self.store, self.registry, self.clip_encoder, self.text_encoder, self.config,
                progress=progress, transcriber=self._transcriber_or_none(),
            )
            report = pipe.run(items, prune=prune, within=confine)
            if self.store.catalog.counts()["items"]:
                self.store.record_models(self._model_settings())
            return report

    def _model_settings(self) -> dict[str, Any]:
        """The model settings to record in the store: specs that reopen the same models from anywhere."""
        models = self.config.models
        spec = parse_clip_spec(models.clip)
        clip = models.clip.strip()
        if spec.kind == "file":
            clip = f"{spec.model_name}@{spec.weights}"
        elif spec.kind == "config":
            clip = f"{spec.config}@{spec.weights}"
        text = models.text
        if Path(text).expanduser().is_dir():
            text = str(Path(text).expanduser().resolve())
        settings = {"models.clip": clip, "models.text": text, "models.clip_texts": models.clip_texts}
        # an injected model is recorded only when the config names that same model
        if self._injected["models.clip"] and (self._clip is None or spec.model_id != self._clip.model_id):
            del settings["models.clip"]
        if self._injected["models.text"] and build_text_encoder(models).model_id != self.text_encoder.model_id:
            del settings["models.text"]
        return settings

    def remove(self, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, glob: bool = False) -> int:
        """Remove sources by file path or directory (everything under it); returns the count.

        With ``glob=True`` each path is also a pattern (``*.md``, ``*/2023/*``) matched against
        the sources' paths. Without it, ``*?[`` are ordinary characters.
        """
        self._check_open()
        items = path_list(paths, "Engine.remove")
        uris: set[str] = set()
        sources = self.store.catalog.sources()
        for raw in items:
            uris.update(_matching_sources(sources, os.fspath(raw), glob))
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            removed = self.store.catalog.remove_sources(sorted(uris))
            self.store.save()
        return removed

    # ---- read side ----------------------------------------------------------
    def retriever(self) -> Retriever:
        self._check_open()
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
        self._check_open()
        text = query_text(text)
        if audio is not None:
            if not isinstance(audio, (str, os.PathLike)):
                raise QueryError(f"audio must be a file path, got {type(audio).__name__}")
            text = self._audio_query_text(audio, text)
        query = Query(
            text=text,
            image=load_query_image(image) if image is not None else None,
            k=self.config.search.k if k is None else k,
            modalities=modality_list(modalities),
            where=where_filter(where),
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
        from indexers.av.transcribe import transcribe_query

        path = Path(audio)
        if not path.is_file():
            raise QueryError(f"audio query file not found: {audio}")
        spoken = transcribe_query(path, self.config.audio, self.transcriber).strip()
        if not spoken and not text:
            raise QueryError(f"no speech was recognised in the audio query {audio}")
        return " ".join(t for t in (text, spoken) if t)

    def ask(self, question: str, **kwargs: Any) -> Any:
        """Retrieve evidence and answer with checked citations (see ``pipelines.rag.answer.ask``)."""
        from pipelines.rag.answer import ask

        self._check_open()
        if not isinstance(question, str):
            raise QueryError(f"the question must be a str, got {type(question).__name__}: {question!r:.80}")
        query_text(question)
        return ask(self, question, text_encoder=self.text_encoder, config=self.config.llm, **kwargs)

    # ---- maintenance --------------------------------------------------------
    def verify(self, check_files: bool = True, hash_all: bool = False) -> Any:
        """Check catalog <-> indexes <-> files, read-only (a ``retriever.maintenance.verify.VerifyReport``)."""
        from retriever.maintenance.verify import verify

        self._check_open()
        return verify(self.store, check_files=check_files, hash_all=hash_all)

    def repair(self, check_files: bool = True) -> Any:
        """Rebuild the indexes from the catalog's vectors and fix what verify found (a ``RepairReport``)."""
        from retriever.maintenance.repair import repair

        self._check_open()
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            return repair(self.store, check_files=check_files)

    def stats(self) -> dict[str, Any]:
        self._check_open()
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


def adopt_store_models(store: Store, config: Config) -> Config:
    """``config`` with the store's recorded model settings wherever the user set none on purpose."""
    recorded = {k: v for k, v in store.recorded_models().items() if k in MODEL_KEYS and not config.is_explicit(k)}
    if not recorded:
        return config
    return dataclasses.replace(config.with_overrides(recorded), explicit=config.explicit)


def _matching_sources(sources: Sequence[Any], raw: str, glob: bool) -> set[str]:
    """URIs of the sources that ``raw`` names: the file itself, everything under a directory, or a glob."""
    absolute = str(Path(raw).expanduser().absolute())
    prefix = absolute.rstrip(os.sep) + os.sep
    out = {s.uri for s in sources if s.uri == absolute or s.uri.startswith(prefix)}
    if glob:
        out.update(s.uri for s in sources
                   if fnmatch.fnmatch(s.uri, raw) or fnmatch.fnmatch(s.display, raw) or fnmatch.fnmatch(s.uri, absolute))
    return out


def load_query_image(image: Any) -> Any:
    """A PIL RGB image from a path or an image object, with a clear error for bad input."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise QueryError(f"image must be a file path or a PIL image, got {type(image).__name__}")
    path = Path(image)
    if not path.is_file():
        raise QueryError(f"query image not found: {image}")
    try:
        with Image.open(path) as img:
            img.draft("RGB", (448, 448))
            return ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise QueryError(f"query image {image} is not a readable image: {exc}") from exc
