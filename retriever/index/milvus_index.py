"""Milvus as the vector index (``index.backend = "milvus"``; the ``milvus`` extra, pymilvus).

Several stores share one Milvus: every collection is named from the catalog's store id, so any
machine that reaches the same catalog and Milvus finds the same ones::

    mmrag_<store>__<space>__g<gen>   one generation of a space's index: id (INT64, the catalog item
                                     id), vector, and the fields searches filter on (modality, kind,
                                     source_id, source_uri, source_display)
    mmrag_<store>__state             one row per space: the generation in use, the change-log
                                     position it covers (``covered_seq``), its dimension

The catalog stays the source of truth. Writes go to the server as they happen, as upserts and
deletes by id, so replaying a change twice changes nothing; ``persist(seq)`` flushes the
generation and then records ``seq`` in the state row, so after a crash the state row never
claims more than was flushed (it may claim less: replaying more is harmless), and the writer's next open replays the rest. A rebuild fills a new
generation and switches the state row to it on ``persist``; until then readers keep the old one.
Searches use ``index.milvus_consistency`` (Session by default: a writer reads its own writes);
counts, id lists and vector read-backs are Strong.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from retriever.config import IndexConfig
from retriever.errors import ConfigError, StoreError
from retriever.index.base import IndexFilter, IndexTarget, ItemFields

__all__ = ["MilvusBackend", "MilvusIndex", "collection_prefix", "glob_to_like"]

_BATCH = 2_000  # rows per upsert / query
_MAX_TOPK = 16_384  # Milvus's limit on k and on a query's page
_TEXT_LEN = 4_096
_NO_FIELDS = ItemFields("", "", -1, "", "")


def collection_prefix(target: IndexTarget) -> str:
    """``mmrag_<store>``: the store id, or (a target of no store) a digest of its directory."""
    sid = target.store_id or hashlib.sha1(str(target.directory.resolve()).encode()).hexdigest()[:12]
    return "mmrag_" + re.sub(r"[^A-Za-z0-9]", "", sid)


def glob_to_like(pattern: str) -> str | None:
    """A Milvus LIKE pattern matching what ``fnmatch`` matches, or None when LIKE cannot say it.

    Milvus 2.3 matches LIKE patterns by prefix only: ``X`` and ``X*`` translate (``reports/*``);
    suffix and inner patterns (``*.pdf``, ``?``, ``[...]``) are left to the caller's filter.
    """
    core = pattern[:-1] if pattern.endswith("*") else pattern
    if not core or any(c in core for c in "*?[]%_\\\""):
        return None
    return core + ("%" if pattern.endswith("*") else "")


def _quote(value: str) -> str:
    return json.dumps(value)  # a double-quoted string with \" and \\ escaped, as Milvus expressions read it


def filter_expression(where: IndexFilter) -> str:
    """The Milvus boolean expression of ``where`` ("" when it has no condition Milvus can apply)."""
    parts = []
    if where.modalities:
        parts.append(f"modality in [{', '.join(_quote(m) for m in where.modalities)}]")
    if where.kinds:
        parts.append(f"kind in [{', '.join(_quote(k) for k in where.kinds)}]")
    like = glob_to_like(where.source_glob) if where.source_glob else None
    if like is not None:
        parts.append(f"(source_uri like {_quote(like)} or source_display like {_quote(like)})")
    return " and ".join(parts)


class _Client:
    """One pymilvus client per server, database and token in this process; errors become StoreError."""

    _clients: dict[tuple[str, str, str], Any] = {}
    _lock = threading.Lock()

    def __init__(self, cfg: IndexConfig) -> None:
        if not cfg.milvus_uri:
            raise ConfigError("index.backend = 'milvus' needs index.milvus_uri (or MMRAG_MILVUS_URI), "
                              "e.g. http://127.0.0.1:19530")
        self.uri = cfg.milvus_uri
        key = (cfg.milvus_uri, cfg.milvus_token, cfg.milvus_db)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._connect(cfg)
            self.api = self._clients[key]

    def _connect(self, cfg: IndexConfig) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise ConfigError("index.backend = 'milvus' needs pymilvus: pip install 'mmrag[milvus]'") from exc
        kwargs: dict[str, Any] = {"uri": cfg.milvus_uri, "timeout": 30}
        if cfg.milvus_token:
            kwargs["token"] = cfg.milvus_token
        if cfg.milvus_db:
            kwargs["db_name"] = cfg.milvus_db
        try:
            return MilvusClient(**kwargs)
        except Exception as exc:  # pymilvus raises MilvusException and grpc errors alike
            raise StoreError(f"cannot reach Milvus at {cfg.milvus_uri} (index.milvus_uri): {exc}") from exc

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.api, method)(*args, **kwargs)
        except Exception as exc:
            raise StoreError(f"Milvus at {self.uri} failed to {what}: {exc}") from exc


class MilvusIndex:
    """One generation of a space's index: a Milvus collection addressed by item id."""

    shared = True  # one index on a server for every process: only the writer writes (see base.py)

    def __init__(self, client: _Client, target: IndexTarget, collection: str, covered: int = -1) -> None:
        self._c, self.target, self.collection, self._covered = client, target, collection, covered
        self.dim = target.dim
        self.cfg = target.config

    # ---- VectorIndex ------------------------------------------------------------
    @property
    def kind(self) -> str:
        return f"milvus-{self.cfg.milvus_index.lower()}"

    def count(self) -> int:
        rows = self._c.call("count", "query", self.collection, filter="", output_fields=["count(*)"],
                            consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.add_items(ids, vectors, [_NO_FIELDS] * len(np.atleast_1d(ids)))

    def add_items(self, ids: np.ndarray, vectors: np.ndarray, fields: Sequence[ItemFields]) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise StoreError(f"vectors of shape {vecs.shape} do not fit this {self.dim}-d index")
        if len(ids) != len(vecs) or len(ids) != len(fields):
            raise StoreError(f"{len(ids)} ids for {len(vecs)} vectors and {len(fields)} field rows")
        for start in range(0, len(ids), _BATCH):
            rows = [_row(int(i), v, f) for i, v, f in zip(ids[start:start + _BATCH], vecs[start:start + _BATCH],
                                                          fields[start:start + _BATCH])]
            self._c.call("upsert vectors", "upsert", self.collection, rows)

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(np.ascontiguousarray(ids, dtype=np.int64))
        if not len(ids):
            return 0
        present = self.present(ids)
        if len(present):
            for start in range(0, len(present), _BATCH):
                chunk = [int(i) for i in present[start:start + _BATCH]]
                self._c.call("delete vectors", "delete", self.collection, ids=chunk)
        return int(len(present))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search_where(queries, k, IndexFilter())

    def search_where(self, queries: np.ndarray, k: int, where: IndexFilter) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise StoreError(f"query of dimension {q.shape[-1]} for a {self.dim}-d index")
        k = min(int(k), _MAX_TOPK)
        scores = np.full((len(q), max(k, 0)), -np.inf, dtype=np.float32)
        ids = np.full((len(q), max(k, 0)), -1, dtype=np.int64)
        if k <= 0 or not len(q):
            return scores, ids
        found = self._c.call("search", "search", self.collection, data=q.tolist(), limit=k,
                             filter=filter_expression(where), output_fields=[],
                             search_params={"metric_type": "IP", "params": self._search_params(k)},
                             consistency_level=self.cfg.milvus_consistency)
        for r, hits in enumerate(found):
            for j, hit in enumerate(list(hits)[:k]):
                ids[r, j], scores[r, j] = int(hit["id"]), float(hit["distance"])
        width = int((ids >= 0).sum(axis=1).max()) if len(ids) else 0
        return scores[:, :width], ids[:, :width]

    def ids(self) -> np.ndarray:
        return np.fromiter((int(r["id"]) for r in self._scan(["id"])), dtype=np.int64)

    def memory(self) -> int:
        """An estimate of the server's memory for this collection: float32 vectors, ids, graph links."""
        links = 2 * self.cfg.hnsw_m * 4 if self.cfg.milvus_index.upper().startswith("HNSW") else 0
        return self.count() * (4 * self.dim + 8 + links) + 1

    def stored_vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        got: list[int] = []
        vecs: list[list[float]] = []
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel()]
        for start in range(0, len(wanted), _BATCH):
            rows = self._c.call("read vectors", "query", self.collection, ids=wanted[start:start + _BATCH],
                                output_fields=["vector"], consistency_level="Strong")
            for row in rows:
                got.append(int(row["id"]))
                vecs.append(row["vector"])
        matrix = np.asarray(vecs, dtype=np.float32).reshape(len(got), self.dim)
        return np.asarray(got, dtype=np.int64), matrix

    def needs_rebuild(self) -> bool:
        return False  # Milvus compacts deletes itself and has no size-dependent kind

    def covered_seq(self) -> int:
        return self._covered

    def persist(self, seq: int) -> None:
        """Flush this generation, then record it and ``seq`` in the state row; drop older generations."""
        self._c.call("flush", "flush", self.collection)
        state = _state_collection(self._c, self.target)
        row = {"space": self.target.space, "collection": self.collection, "seq": int(seq), "dim": self.dim,
               "vector": [0.0, 0.0]}
        # not flushed: a state row lost in a crash is an older one, and replaying from an older
        # position only upserts what is there already
        self._c.call("record the index position", "upsert", state, [row])
        self._covered = int(seq)
        _drop_generations(self._c, self.target, keep=self.collection)

    # ---- Milvus specifics -----------------------------------------------------------
    def present(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the collection holds."""
        out: list[int] = []
        wanted = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel()]
        for start in range(0, len(wanted), _BATCH):
            rows = self._c.call("look up ids", "query", self.collection, ids=wanted[start:start + _BATCH],
                                output_fields=["id"], consistency_level="Strong")
            out += [int(r["id"]) for r in rows]
        return np.asarray(out, dtype=np.int64)

    def _scan(self, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row (``fields`` of it), in pages of id order."""
        last = -1  # item ids are never negative
        while True:
            rows = self._c.call("list ids", "query", self.collection, filter=f"id > {last}", output_fields=fields,
                                limit=_MAX_TOPK, consistency_level="Strong")
            if not rows:
                return
            rows = sorted(rows, key=lambda r: int(r["id"]))
            yield from rows
            if len(rows) < _MAX_TOPK:
                return
            last = int(rows[-1]["id"])

    def _search_params(self, k: int) -> dict[str, Any]:
        kind = self.cfg.milvus_index.upper()
        if kind.startswith("HNSW"):
            return {"ef": max(self.cfg.hnsw_ef_search, k)}
        if "IVF" in kind:
            return {"nprobe": self.cfg.ivf_nprobe}
        return {}


def _row(item_id: int, vector: np.ndarray, f: ItemFields) -> dict[str, Any]:
    return {"id": item_id, "vector": vector.tolist(), "modality": f.modality[:32], "kind": f.kind[:64],
            "source_id": int(f.source_id), "source_uri": f.source_uri[:_TEXT_LEN],
            "source_display": f.source_display[:_TEXT_LEN]}


def _generation_prefix(target: IndexTarget) -> str:
    return f"{collection_prefix(target)}__{target.space}__g"


def _state_name(target: IndexTarget) -> str:
    return f"{collection_prefix(target)}__state"


def _state_collection(c: _Client, target: IndexTarget) -> str:
    """The store's state collection, made on first use."""
    name = _state_name(target)
    if not c.call("list collections", "has_collection", name):
        from pymilvus import DataType

        schema = c.call("describe a schema", "create_schema", auto_id=False, enable_dynamic_field=False)
        schema.add_field("space", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("collection", DataType.VARCHAR, max_length=255)
        schema.add_field("seq", DataType.INT64)
        schema.add_field("dim", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        params = c.call("describe an index", "prepare_index_params")
        params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
        c.call("create the state collection", "create_collection", name, schema=schema, index_params=params,
               consistency_level="Strong")
    return name


def _drop_generations(c: _Client, target: IndexTarget, keep: str | None) -> None:
    prefix = _generation_prefix(target)
    for name in c.call("list collections", "list_collections"):
        if name.startswith(prefix) and name != keep:
            c.call(f"drop {name}", "drop_collection", name)


class MilvusBackend:
    """The ``milvus`` backend: one collection per store and space on a Milvus server."""

    name = "milvus"
    shared = True

    def __init__(self, cfg: IndexConfig) -> None:
        self._client = _Client(cfg)

    def create(self, target: IndexTarget, n_hint: int = 0) -> MilvusIndex:
        from pymilvus import DataType

        c, cfg = self._client, target.config
        name = _generation_prefix(target) + uuid.uuid4().hex[:10]
        schema = c.call("describe a schema", "create_schema", auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=target.dim)
        schema.add_field("modality", DataType.VARCHAR, max_length=32)
        schema.add_field("kind", DataType.VARCHAR, max_length=64)
        schema.add_field("source_id", DataType.INT64)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=_TEXT_LEN)
        schema.add_field("source_display", DataType.VARCHAR, max_length=_TEXT_LEN)
        params = c.call("describe an index", "prepare_index_params")
        params.add_index(field_name="vector", index_type=cfg.milvus_index.upper(), metric_type="IP",
                         params=_build_params(cfg, n_hint))
        c.call(f"create collection {name}", "create_collection", name, schema=schema, index_params=params,
               consistency_level=cfg.milvus_consistency)
        return MilvusIndex(c, target, name)

    def open(self, target: IndexTarget) -> MilvusIndex | None:
        c = self._client
        state = _state_name(target)
        if not c.call("list collections", "has_collection", state):
            return None
        c.call("load the state", "load_collection", state)
        rows = c.call("read the state", "query", state, ids=[target.space], output_fields=["collection", "seq", "dim"],
                      consistency_level="Strong")
        if not rows:
            return None
        name, seq, dim = str(rows[0]["collection"]), int(rows[0]["seq"]), int(rows[0]["dim"])
        if not c.call("list collections", "has_collection", name):
            raise StoreError(f"Milvus at {c.uri} has no collection {name}, which the state of space "
                             f"'{target.space}' names; run `mmrag repair`")
        c.call(f"load {name}", "load_collection", name)
        return MilvusIndex(c, IndexTarget(target.space, dim, target.directory, target.config, target.store_id),
                           name, covered=seq)

    def discard(self, target: IndexTarget) -> None:
        """Forget the space: its state row and every generation of its collection."""
        c = self._client
        state = _state_name(target)
        if c.call("list collections", "has_collection", state):
            c.call("load the state", "load_collection", state)
            c.call("forget the index position", "delete", state, ids=[target.space])
            c.call("flush", "flush", state)
        _drop_generations(c, target, keep=None)


def _build_params(cfg: IndexConfig, n_hint: int) -> dict[str, Any]:
    kind = cfg.milvus_index.upper()
    if kind.startswith("HNSW"):
        return {"M": cfg.hnsw_m, "efConstruction": cfg.hnsw_ef_construction}
    if "IVF" in kind:
        nlist = cfg.milvus_nlist if n_hint <= 0 else min(cfg.milvus_nlist, max(16, int(4 * math.sqrt(n_hint))))
        return {"nlist": nlist}
    return {}
