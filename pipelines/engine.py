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

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from indexers.registry import Registry
from pipelines.arguments import (
    existing_paths,
    item_id_arg,
    load_query_image,
    matching_sources,
    modality_list,
    path_list,
    query_text,
    store_path,
    where_filter,
)
from pipelines.engine_models import EngineModels, adopt_store_models
from pipelines.rag.evidence import Answer, Evidence
from retriever.catalog import ItemRecord, SourceRecord
from retriever.config import Config
from retriever.encoders.base import ImageTextEncoder, TextEncoder
from retriever.errors import ArgumentError, QueryError, StoreError
from retriever.search import Query, Retriever
from retriever.store import Store
from retriever.types import Hit, Modality

if TYPE_CHECKING:
    from indexers.av.transcribe import SpeechToText
    from indexers.ingest.commit import IngestReport
    from langchain_core.language_models import BaseChatModel

    from retriever.maintenance.repair import RepairReport
    from retriever.maintenance.verify import VerifyReport

__all__ = ["Engine", "SourceFile", "load_query_image"]


@dataclass(frozen=True)
class SourceFile:
    """The evidence file of an item as the catalog records it.

    ``path`` is the catalog's source path, never one a caller gave; ``source`` says what was
    ingested from it (content hash, size, mtime, type), to check that the file still holds it.
    """

    item: ItemRecord
    source: SourceRecord

    @property
    def path(self) -> Path:
        return Path(self.source.uri)


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
        transcriber: SpeechToText | None = None,
    ) -> None:
        """``clip``, ``text`` and ``transcriber`` are models to use instead of building them from the
        config (share one loaded model between engines, or plug in another implementation of the
        encoder protocols); each one left None is built from the config on first use."""
        if not isinstance(store, Store) or not isinstance(config, Config):
            raise ArgumentError(f"Engine(store, config) expects a Store and a Config, got "
                                f"{type(store).__name__} and {type(config).__name__}; use Engine.open(path)")
        self.store = store
        self.config = adopt_store_models(store, config)
        self._registry = registry  # the default one is built on first use: a search needs no ingestor
        self._models = EngineModels(self.config, clip=clip, text=text, transcriber=transcriber)
        self._closed = False
        self.store.check_models(self._models.wanted())

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
        transcriber: SpeechToText | None = None,
    ) -> Engine:
        """Open (or create) the store at ``store`` (default ``$MMRAG_STORE`` or ``./mmrag-store``).

        ``create=False`` opens an existing store only (a ``StoreError`` names the missing one).
        ``clip``, ``text`` and ``transcriber``: loaded models to use (see ``Engine``).
        """
        path = store_path(store)
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ArgumentError(f"Engine.open(overrides=...) expects a mapping such as {{'models.clip': 'none'}}, "
                                f"got {type(overrides).__name__}: {overrides!r}")
        if config is not None and not isinstance(config, Config):
            raise ArgumentError(f"Engine.open(config=...) expects a Config, got {type(config).__name__}")
        if config is None:
            config = Config.load(path, overrides)
        elif overrides:
            config = config.with_overrides(overrides)
        if path is not None:
            config = config.with_overrides({"store": path})
        return cls(Store(config.store, config, create=create), config,
                   clip=clip, text=text, transcriber=transcriber)

    def __enter__(self) -> Self:
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

    @property
    def root(self) -> Path:
        """The store's directory."""
        return self.store.root

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"this Engine on {self.store.root} was closed; open the store again with Engine.open()")

    # ---- models -------------------------------------------------------------
    @property
    def clip_encoder(self) -> ImageTextEncoder | None:
        """The CLIP model, built on first use; None when ``models.clip`` is ``none``."""
        return self._models.clip

    @property
    def text_encoder(self) -> TextEncoder:
        """The text-space model, built on first use."""
        return self._models.text

    @property
    def transcriber(self) -> SpeechToText:
        """The shared speech model (audio/video ingest and audio queries), built on first use."""
        return self._models.transcriber

    # ---- write side ---------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The ingestors, by content type (the default registry unless one was given)."""
        if self._registry is None:
            from indexers.registry import default_registry

            self._registry = default_registry()
        return self._registry

    def ingest(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        prune: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        *,
        within: Sequence[str | os.PathLike[str]] | None = None,
        executor: str | None = None, ray_address: str | None = None,
    ) -> IngestReport:
        """Ingest one path or a list of files and directories (recursively). Unchanged files are skipped.

        A path that does not exist is an ``InputNotFound`` error before anything is written.
        ``within`` confines the run: files (symlink targets included) that resolve outside
        those directories are skipped. ``executor``: ``"local"`` (threads here) or ``"ray"`` (Ray Data on
        ``ray_address``, or a local cluster); defaults: ``ingest.executor``, ``ingest.ray_address``.
        """
        self._check_open()
        items = existing_paths(paths, "Engine.ingest")
        confine = [Path(d) for d in path_list(within, "Engine.ingest(within=...)")] if within is not None else None
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            from indexers.ingest.pipeline import IngestPipeline

            pipe = IngestPipeline(
                self.store, self.registry, self.clip_encoder, self.text_encoder, self.config,
                progress=progress, transcriber=self._models.transcriber_or_none(),
                executor=executor, ray_address=ray_address,
            )
            report = pipe.run(items, prune=prune, within=confine)
            if self.store.catalog.counts()["items"]:
                self.store.record_models(self._models.settings_to_record())
            return report

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
            uris.update(matching_sources(sources, os.fspath(raw), glob))
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
        ``kind``, ``modality`` or any item metadata key (equality). Each hit's ``scores``
        and ``ranks`` are keyed by run name (``text``, ``bm25``, ``clip_text``, ``clip_image``):
        the raw similarity and the 1-based rank of the item in each run that found it.
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
        return self._consistent_search(query)

    def _consistent_search(self, query: Query) -> list[Hit]:
        """The hits of ``query`` read from one catalog state: searched again if a commit landed meanwhile."""
        retriever = self.retriever()
        for _attempt in range(5):
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

    def ask(
        self,
        question: str,
        *,
        k: int = 8,
        where: Mapping[str, Any] | None = None,
        modalities: Sequence[str] | None = None,
        llm: str | BaseChatModel | None = None,
        prompt: str | None = None,
        on_token: Callable[[str], None] | None = None,
        on_evidence: Callable[[Sequence[Evidence]], None] | None = None,
    ) -> Answer:
        """Retrieve evidence and answer with checked citations (see ``pipelines.rag.answer.ask``)."""
        from pipelines.rag.answer import ask

        self._check_open()
        if not isinstance(question, str):
            raise QueryError(f"the question must be a str, got {type(question).__name__}: {question!r:.80}")
        query_text(question)
        return ask(self, question, text_encoder=self.text_encoder, config=self.config.llm, k=k, where=where,
                   modalities=modalities, llm=llm, prompt=prompt, on_token=on_token, on_evidence=on_evidence)

    # ---- the evidence -------------------------------------------------------
    def item(self, item_id: int) -> ItemRecord | None:
        """The catalog record of item ``item_id`` (a hit's or citation's); None when there is none."""
        return self.items([item_id]).get(item_id)

    def items(self, item_ids: Iterable[int] | None = None) -> dict[int, ItemRecord]:
        """The catalog records of ``item_ids`` (every item of the store when None), by id; ids the
        store does not have are left out."""
        self._check_open()
        catalog = self.store.catalog
        ids = [int(i) for i in catalog.item_ids()] if item_ids is None else [item_id_arg(i) for i in item_ids]
        return catalog.items(ids) if ids else {}

    def item_was_removed(self, item_id: int) -> bool:
        """Whether ``item_id`` names an item the store had and no longer has (its source changed
        or was removed). Ids are never reused: a missing id below the highest one was removed."""
        self._check_open()
        item_id = item_id_arg(item_id)
        return item_id not in self.items([item_id]) and item_id < self.store.catalog.max_item_id()

    def source_hashes(self, uris: Iterable[str]) -> dict[str, str | None]:
        """The content hash (the evidence's version) of each of ``uris`` that is a source of the store."""
        self._check_open()
        return self.store.catalog.source_hashes(uris)

    def source_file(self, item_id: int) -> SourceFile | None:
        """The evidence file of item ``item_id``: its path and what was ingested from it; None when
        the store has no such item or no longer has its source."""
        item = self.item(item_id)
        source = self.store.catalog.get_source(item.source_uri) if item is not None else None
        if item is None or source is None:
            return None
        return SourceFile(item, source)

    def thumbnail(self, item_id: int) -> Path | None:
        """The JPEG thumbnail of a visual item: a path inside the store's thumbnail folder (the
        catalog's path is checked, not trusted); None when the item has none or its path leads
        outside that folder. The file itself may be missing (``mmrag verify`` reports it)."""
        item = self.item(item_id)
        if item is None or not item.thumbnail:
            return None
        folder = self.store.thumb_dir.resolve()
        path = (self.store.root / item.thumbnail).resolve()
        return path if path.is_relative_to(folder) and path != folder else None

    # ---- maintenance --------------------------------------------------------
    def verify(self, check_files: bool = True, hash_all: bool = False) -> VerifyReport:
        """Check catalog <-> indexes <-> files, read-only."""
        from retriever.maintenance.verify import verify

        self._check_open()
        return verify(self.store, check_files=check_files, hash_all=hash_all)

    def repair(self, check_files: bool = True) -> RepairReport:
        """Rebuild the indexes from the catalog's vectors and fix what verify found."""
        from retriever.maintenance.repair import repair

        self._check_open()
        with self.store.write_lock(self.config.ingest.lock_wait_s):
            return repair(self.store, check_files=check_files)

    def counts(self) -> dict[str, Any]:
        """What the catalog holds: ``sources``, ``items`` and their breakdowns (no index is read)."""
        self._check_open()
        return self.store.catalog.counts()

    def space_models(self) -> dict[str, str]:
        """The model id each dense space of the store was built with, by space name."""
        self._check_open()
        return {name: info.model_id for name, info in self.store.spaces().items()}

    def stats(self) -> dict[str, Any]:
        """What the store holds (the JSON of ``mmrag stats --json``)."""
        from retriever.stats import store_stats

        self._check_open()
        return store_stats(self.store)

    def warm(self) -> dict[str, float]:
        """Load the models a query uses and run one tiny query through each; seconds per model
        (``mmrag serve`` does this before ``/readyz`` says ready)."""
        self._check_open()
        return self._models.warm()
