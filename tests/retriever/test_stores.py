"""FAISS store, BM25 and the catalog change-log replay, without models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retriever.catalog import Catalog, NewItem, SourceInfo
from retriever.config import IndexConfig
from retriever.errors import ConfigError, StoreError
from retriever.index.bm25 import Bm25Index, tokenize
from retriever.index.faiss_index import FaissIndex, choose_kind
from retriever.index.spaces import DenseSpace


def _unit(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq", "HNSW16,SQ8"])
def test_add_search_remove_save_load(tmp_path: Path, kind: str) -> None:
    cfg = IndexConfig(kind=kind, hnsw_ef_search=128, ivf_nprobe=64)
    vecs = _unit(3000)
    ids = np.arange(100, 3100, dtype=np.int64)
    store = FaissIndex(32, cfg, n_hint=3000)
    store.add(ids, vecs)
    assert len(store) == 3000
    _, got = store.search(vecs[:20], 1)
    hit_rate = float(np.mean(got[:, 0] == ids[:20]))
    assert hit_rate >= (1.0 if kind in ("flat", "hnsw") else 0.7)
    assert store.remove(ids[:10]) == 10
    _, got = store.search(vecs[:10], 5)
    assert not set(got.ravel().tolist()) & set(ids[:10].tolist())
    assert len(store) == 2990
    store.save(tmp_path, "clip", seq=42)
    loaded, seq = FaissIndex.load(tmp_path, "clip", cfg)
    assert seq == 42 and len(loaded) == 2990
    _, again = loaded.search(vecs[10:20], 1)
    _, before = store.search(vecs[10:20], 1)
    assert (again == before).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-42.faiss", "clip.json"]


def test_auto_kind_by_size() -> None:
    cfg = IndexConfig(flat_threshold=1000)
    assert choose_kind(cfg, 999) == "flat" and choose_kind(cfg, 1000) == "hnsw"
    assert choose_kind(IndexConfig(kind="ivf"), 10) == "ivf"


def test_auto_kind_with_a_gpu_is_exact_within_the_budget_then_ivf() -> None:
    # HNSW has no GPU implementation: with a GPU, flat while float32 vectors fit the budget, IVF beyond
    cfg = IndexConfig(gpu_flat_max_bytes=512 * 4 * 1000)
    assert choose_kind(cfg, 50_000, 512, gpus=0) == "hnsw"
    assert choose_kind(cfg, 1000, 512, gpus=1) == "flat" and choose_kind(cfg, 1001, 512, gpus=1) == "ivf"
    assert choose_kind(IndexConfig(), 1_000_000, 512, gpus=1) == "flat"  # 2 GB of float32 fits 4 GiB
    assert choose_kind(IndexConfig(), 3_000_000, 512, gpus=1) == "ivf"
    assert choose_kind(IndexConfig(kind="hnsw"), 10, 512, gpus=1) == "hnsw"  # an explicit kind is kept
    assert choose_kind(IndexConfig(use_gpu="never", flat_threshold=10), 50, 512) == "hnsw"


def test_wrong_dimension_is_a_clear_error() -> None:
    store = FaissIndex(32, IndexConfig())
    with pytest.raises(StoreError, match="32-d"):
        store.add(np.arange(2), _unit(2, d=16))


def test_corrupt_index_file_is_reported(tmp_path: Path) -> None:
    store = FaissIndex(32, IndexConfig())
    store.add(np.arange(5), _unit(5))
    store.save(tmp_path, "text", 3)
    (tmp_path / "text-3.faiss").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="repair"):
        FaissIndex.load(tmp_path, "text", IndexConfig())


def test_bm25_ranks_and_tokenizes() -> None:
    idx = Bm25Index()
    idx.build([(7, "The cat sat on the mat"), (9, "Dogs are running in the park"), (11, "A mat of grass")])
    scores, ids = idx.search("running dog", 5)
    assert ids.tolist() == [9] and scores[0] > 0
    assert tokenize("The Runners were running") == ["runner", "run"]
    assert idx.search("zzzz unknownword", 5)[1].size == 0


def _commit(cat: Catalog, uri: str, vecs: np.ndarray) -> list[int]:
    info = SourceInfo(uri, uri, f"h-{uri}-{len(vecs)}", 1, 0.0)
    items = [NewItem("text", "chunk", {"uri": uri}, f"t{i}", {}, {"text": v}) for i, v in enumerate(vecs)]
    return cat.commit_source(info, items, metadata={}, notes=[], run_id=None)


def test_dense_space_replays_the_change_log(tmp_path: Path) -> None:
    cat = Catalog.for_store(tmp_path)
    cfg = IndexConfig()
    a = _commit(cat, "/a", _unit(5, seed=1))
    space = DenseSpace("text", 32, tmp_path / "idx", cat, cfg)
    space.open()
    assert len(space) == 5
    space.save()
    # later commits and a replacement are replayed onto the saved index by a fresh reader
    b = _commit(cat, "/b", _unit(4, seed=2))
    a2 = _commit(cat, "/a", _unit(3, seed=3))
    reader = DenseSpace("text", 32, tmp_path / "idx", cat, cfg)
    reader.open()
    live = set(reader.index.ids().tolist())
    assert live == set(b) | set(a2) and not live & set(a)
    # replay is idempotent: syncing twice adds nothing twice
    reader.seq = 0
    reader.sync()
    assert sorted(reader.index.ids().tolist()) == sorted(live)
    # the index holds exactly the catalog's float16 vectors
    ids, vecs = cat.vectors("text", sorted(live))
    _, got = reader.search(vecs[:1], 1)
    assert got[0, 0] == ids[0]


def test_truncated_log_makes_readers_reload(tmp_path: Path) -> None:
    cat = Catalog.for_store(tmp_path)
    cfg = IndexConfig()
    _commit(cat, "/a", _unit(5, seed=1))
    old_reader = DenseSpace("text", 32, tmp_path / "idx", cat, cfg)
    old_reader.open()
    writer = DenseSpace("text", 32, tmp_path / "idx", cat, cfg)
    writer.open()
    b = _commit(cat, "/b", _unit(4, seed=2))
    writer.sync()
    writer.save()
    cat.truncate_changes(writer.seq)
    assert cat.changes_since(0) == []
    old_reader.sync()
    assert set(b) <= set(old_reader.index.ids().tolist()) and len(old_reader) == 9
    assert json.loads((tmp_path / "idx" / "text.json").read_text())["seq"] == writer.seq


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_fp16_storage_is_lossless_for_catalog_vectors(kind: str) -> None:
    # the catalog keeps float16 vectors, so an fp16 index holds exactly what fp32 would
    vecs = _unit(4000, seed=5).astype(np.float16).astype(np.float32)
    ids = np.arange(4000, dtype=np.int64)
    got = {}
    for storage in ("fp32", "fp16"):
        store = FaissIndex(32, IndexConfig(kind=kind, storage=storage, hnsw_ef_search=64, ivf_nprobe=8), n_hint=400)
        store.add(ids, vecs)
        got[storage] = store.search(vecs[:50], 10)
        assert store.kind == kind
    assert (got["fp16"][1] == got["fp32"][1]).mean() > 0.99
    assert np.allclose(got["fp16"][0], got["fp32"][0], atol=1e-5)


def test_storage_shrinks_the_index_and_reports_its_knobs() -> None:
    vecs, ids = _unit(2000, d=64, seed=6), np.arange(2000, dtype=np.int64)
    sizes = {}
    for storage in ("fp32", "fp16", "sq8"):
        for kind in ("flat", "hnsw"):
            store = FaissIndex(64, IndexConfig(kind=kind, storage=storage, hnsw_ef_search=40))
            store.add(ids, vecs)
            sizes[kind, storage] = store.nbytes()
            assert store.search_params() == ({"ef_search": 40} if kind == "hnsw" else {})
            _, top = store.search(vecs[:20], 1)
            assert (top[:, 0] == ids[:20]).mean() >= 0.95
    # flat indexes are the vectors: 4, 2 and 1 byte(s) per component
    assert sizes["flat", "fp32"] > 1.9 * sizes["flat", "fp16"] and sizes["flat", "fp16"] > 1.8 * sizes["flat", "sq8"]
    assert sizes["hnsw", "fp32"] > sizes["hnsw", "fp16"] > sizes["hnsw", "sq8"]
    ivf = FaissIndex(64, IndexConfig(kind="ivf", ivf_nprobe=7), n_hint=100_000)
    assert ivf.search_params() == {"nprobe": 7}
    ivf.set_search_params(nprobe=3)
    assert ivf.search_params() == {"nprobe": 3}


def test_unknown_storage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="storage 'int3'"):
        FaissIndex(32, IndexConfig(storage="int3"))


def test_untrained_ivf_falls_back_to_exact_search() -> None:
    # 600 vectors cannot train the lists an IVF sized for 1M needs: searches stay exact
    vecs, ids = _unit(600, seed=7), np.arange(600, dtype=np.int64)
    store = FaissIndex(32, IndexConfig(kind="ivf", storage="sq8"), n_hint=1_000_000)
    store.add(ids, vecs)
    _, top = store.search(vecs[:30], 1)
    assert store.kind == "flat" and (top[:, 0] == ids[:30]).all()


def test_bm25_ties_are_ordered_by_item_id_at_any_cut() -> None:
    """Equal scores come back by item id, also where the top k cuts through a tie."""
    idx = Bm25Index()
    ids = [90, 12, 55, 7, 31, 64, 3, 48]
    idx.build([(i, "the red circle sits on a page") for i in ids] + [(100, "a red circle, a red circle")])
    for k in (1, 2, 3, 5, 9, 20):
        scores, got = idx.search("red circle", k)
        assert got.tolist() == ([100] + sorted(ids))[:k]
        assert np.all(np.diff(scores) <= 0)


def test_a_catalog_made_before_an_index_existed_gets_it_when_opened_for_writing(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Catalog(url).engine.dispose()
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        db.execute("DROP INDEX ix_sources_content_hash")  # as a catalog from before copies were looked up
    reader = Catalog(url, read_only=True)  # a reader changes nothing
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "ix_sources_content_hash" not in names
    reader.engine.dispose()
    catalog = Catalog(url)
    catalog.commit_source(SourceInfo("/a.txt", "a.txt", "blake2b:1", 1, 1.0), [], metadata={}, notes=[], run_id=None)
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        plan = " ".join(str(r) for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM sources WHERE content_hash = 'blake2b:1'"))
    assert "ix_sources_content_hash" in plan
    assert catalog.source_with_hash("blake2b:1", None, other_than="/b.txt").uri == "/a.txt"
    assert catalog.source_with_hash("blake2b:1", None, other_than="/a.txt") is None
