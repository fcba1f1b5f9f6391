"""Milvus as the vector index, against a real Milvus server started for the session: the index
contract, filtered search inside Milvus, durability of the change-log position, and the
shared-index rule (only the writer writes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retriever.config import IndexConfig
from retriever.errors import ConfigError, StoreError
from retriever.index.base import IndexBackend, IndexFilter, IndexTarget, ItemFields
from retriever.index.milvus_index import MilvusBackend, MilvusIndex, filter_expression, glob_to_like
from retriever.index.registry import backend_for
from retriever.index.testing import VectorIndexContract, unit_vectors

pytestmark = pytest.mark.milvus


class TestMilvusContract(VectorIndexContract):
    @pytest.fixture
    def index_config(self, milvus_uri: str) -> IndexConfig:
        return IndexConfig(backend="milvus", milvus_uri=milvus_uri)

    @pytest.fixture
    def backend(self, index_config: IndexConfig) -> IndexBackend:
        return backend_for(index_config)


def test_glob_to_like_only_where_exact() -> None:
    assert glob_to_like("reports/*") == "reports/%"
    assert glob_to_like("/data/a.pdf") == "/data/a.pdf"
    for pattern in ("*.pdf", "*talk*", "a*b.pdf", "?.pdf", "[ab].pdf", "*", "50%.pdf", 'a"b*', "my_file*"):
        assert glob_to_like(pattern) is None, pattern  # Milvus 2.3 LIKE: prefixes only
    expr = filter_expression(IndexFilter(("image", "pdf"), ("photo",), "/data/cats/*"))
    assert expr == ('modality in ["image", "pdf"] and kind in ["photo"] and '
                    '(source_uri like "/data/cats/%" or source_display like "/data/cats/%")')
    assert filter_expression(IndexFilter(source_glob="*.jpg")) == ""  # left to the caller


def test_missing_uri_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="milvus_uri"):
        backend_for(IndexConfig(backend="milvus"))


def test_unreachable_server_is_a_store_error(tmp_path: Path) -> None:
    cfg = IndexConfig(backend="milvus", milvus_uri="http://127.0.0.1:9")
    with pytest.raises(StoreError, match="127.0.0.1:9"):
        MilvusBackend(cfg).open(IndexTarget("x", 4, tmp_path, cfg))


def test_filtered_search_runs_inside_milvus(milvus_uri: str, tmp_path: Path) -> None:
    cfg = IndexConfig(backend="milvus", milvus_uri=milvus_uri, milvus_index="FLAT")
    index = MilvusBackend(cfg).create(IndexTarget("filters", 8, tmp_path, cfg))
    vecs = unit_vectors(60, 8, seed=5)
    kinds = [("image", "photo", "/data/cats/%d.jpg"), ("pdf", "page", "/data/reports/%d.pdf"),
             ("text", "chunk", "/data/notes/%d.md")]
    fields = [ItemFields(m, k, i % 3, p % i, (p % i).rsplit("/", 1)[1])
              for i, (m, k, p) in ((i, kinds[i % 3]) for i in range(60))]
    index.add_items(np.arange(60, dtype=np.int64), vecs, fields)
    query = vecs[1]  # a pdf page: the unfiltered top hit
    assert index.search(query, 1)[1][0, 0] == 1
    _, ids = index.search_where(query, 10, IndexFilter(modalities=("image",)))
    assert len(ids[0]) == 10 and all(i % 3 == 0 for i in ids[0])  # ten images, none dropped afterwards
    _, ids = index.search_where(query, 30, IndexFilter(source_glob="/data/notes/*"))
    assert sorted(ids[0].tolist()) == list(range(2, 60, 3))
    _, ids = index.search_where(query, 5, IndexFilter(kinds=("page",), source_glob="/data/reports/*"))
    assert ids[0, 0] == 1 and all(i % 3 == 1 for i in ids[0])
    _, ids = index.search_where(query, 5, IndexFilter(modalities=("audio",)))
    assert ids.shape[1] == 0


def test_upserts_make_replays_harmless_and_persist_is_durable(milvus_uri: str, tmp_path: Path) -> None:
    cfg = IndexConfig(backend="milvus", milvus_uri=milvus_uri, milvus_index="FLAT")
    target = IndexTarget("replay", 8, tmp_path, cfg, store_id="abc123def456")
    backend = MilvusBackend(cfg)
    index = backend.create(target)
    ids, vecs = np.arange(10, 30, dtype=np.int64), unit_vectors(20, 8, seed=2)
    index.add(ids, vecs)
    index.add(ids[:5], vecs[:5])  # a replay after a crash: the same ids again
    assert index.count() == 20 and sorted(index.ids().tolist()) == ids.tolist()
    index.persist(7)
    again = backend.open(target)
    assert isinstance(again, MilvusIndex) and again.covered_seq() == 7 and again.count() == 20
    assert again.collection.startswith("mmrag_abc123def456__replay__g")
    rebuilt = backend.create(target)  # a rebuild fills a new generation; readers keep the old one
    rebuilt.add(ids[:3], vecs[:3])
    assert backend.open(target).count() == 20  # type: ignore[union-attr]
    rebuilt.persist(9)
    now = backend.open(target)
    assert now is not None and now.count() == 3 and now.covered_seq() == 9
    names = MilvusBackend(cfg)._client.call("list", "list_collections")
    assert [n for n in names if n.startswith("mmrag_abc123def456__replay__")] == [rebuilt.collection]
