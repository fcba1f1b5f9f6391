"""Stores whose vectors live in Milvus (a real server started for the session): the same results
as FAISS, filters applied inside Milvus, removals reaching it, a killed ingest repaired by the
next writer, and several processes and machines on one PostgreSQL catalog and one Milvus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.engine import Engine
from pipelines.testing.crash import doc_text, scifact_docs
from pipelines.testing.serve import start_serve, stop
from retriever.index.milvus_index import MilvusIndex

pytestmark = pytest.mark.milvus
REPO = Path(__file__).resolve().parents[2]


def _milvus(uri: str, **more: Any) -> dict[str, Any]:
    return {"index.backend": "milvus", "index.milvus_uri": uri, "index.milvus_index": "FLAT", **more}


def _key(hit: Any) -> tuple[str, str]:
    return hit.source_name, json.dumps(hit.locator.to_dict(), sort_keys=True)


@pytest.fixture(scope="module")
def corpus(eval_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mixed folder: six COCO photos, a PDF with text and figures, 24 SciFact abstracts."""
    root = tmp_path_factory.mktemp("mixed")
    for photo in sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:6]:
        shutil.copy(photo, root / photo.name)
    shutil.copy(eval_dir / "pdf" / "docling__2305.03393v1-pg9.pdf", root / "layout.pdf")
    for i, doc in enumerate(scifact_docs(eval_dir)[:24]):
        (root / f"scifact-{i:02d}.txt").write_text(doc_text(doc), encoding="utf-8")
    return root


QUERIES = ["a person riding a bicycle", "vitamin D deficiency and bone density", "document layout analysis",
           "a plate of food on a table", "gene expression in cancer cells"]


def test_milvus_store_ranks_like_faiss_and_filters_inside_milvus(
    corpus: Path, tmp_path: Path, milvus_uri: str, tiny_clip_spec: str, tiny_clip_encoder: Any, text_encoder: Any
) -> None:
    models = {"clip": tiny_clip_encoder, "text": text_encoder}
    common = {"models.clip": tiny_clip_spec, "ingest.workers": 1}
    with Engine.open(tmp_path / "faiss", overrides=common, **models) as faiss_eng, \
            Engine.open(tmp_path / "milvus", overrides={**common, **_milvus(milvus_uri)}, **models) as milvus_eng:
        for eng in (faiss_eng, milvus_eng):
            report = eng.ingest([corpus])
            assert report.added == 31 and not report.failed
        photo = next(corpus.glob("*.jpg"))
        for query in [{"text": q} for q in QUERIES] + [{"image": photo}]:
            want = [_key(h) for h in faiss_eng.search(**query, k=10)]
            assert [_key(h) for h in milvus_eng.search(**query, k=10)] == want, query
        for filters in ({"modalities": ["image"]}, {"where": {"kind": "page"}},
                        {"where": {"source": str(corpus / "scifact-0*")}}):
            want = [_key(h) for h in faiss_eng.search(text="cells and tissue", k=8, **filters)]
            got = milvus_eng.search(text="cells and tissue", k=8, **filters)
            assert [_key(h) for h in got] == want and len(got) == min(8, len(want)), filters
        # the filter ran inside Milvus: the image-only CLIP run holds only images
        space = milvus_eng.store.space("clip")
        assert space is not None and isinstance(space.index, MilvusIndex)
        vec = tiny_clip_encoder.encode_texts(["a red bicycle"])
        from retriever.index.base import IndexFilter

        _, ids = space.search(vec, 50, IndexFilter(modalities=("image",)))
        kinds = {r.kind for r in milvus_eng.store.catalog.items(ids[0].tolist()).values()}
        assert kinds == {"photo"} and ids.shape[1] == 6

        removed = milvus_eng.remove(photo)
        assert removed == 1 and space.index.count() == 6 - 1 + _visual_pdf_items(milvus_eng)
        assert milvus_eng.verify(check_files=False).ok


def _visual_pdf_items(eng: Engine) -> int:
    return sum(1 for r in eng.store.catalog.items(eng.store.catalog.item_ids("clip").tolist()).values()
               if r.kind != "photo")


def _committed(store: Path) -> int:
    with sqlite3.connect(store / "catalog.sqlite") as db:
        return int(db.execute("select count(*) from sources where status = 'ok'").fetchone()[0])


def test_kill_9_during_an_ingest_into_milvus_then_rerun(eval_dir: Path, tmp_path: Path, milvus_uri: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, doc in enumerate(scifact_docs(eval_dir)[:80]):
        (docs / f"d{i:03d}.txt").write_text(doc_text(doc), encoding="utf-8")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MMRAG_INDEX_BACKEND": "milvus", "MMRAG_MILVUS_URI": milvus_uri,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "ingest", str(docs), "--store", str(store),
           "--set", "models.clip=none", "--set", "index.save_every_items=20", "--set", "models.batch_size=8"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (store / "catalog.sqlite").exists() and _committed(store) >= 25:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = _committed(store)
    assert 25 <= done < 80
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    verify = subprocess.run([sys.executable, "-m", "pipelines.cli", "verify", "--store", str(store), "--json"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-2000:]
    with Engine.open(store, overrides={"models.clip": "none", **_milvus(milvus_uri)}) as eng:
        space = eng.store.space("text")
        assert space is not None and space.index is not None
        ids = space.index.ids()
        assert len(ids) == len(set(ids.tolist())) == len(eng.store.catalog.item_ids("text"))
        assert eng.stats()["sources"] == 80


# ---- several servers and machines on one PostgreSQL catalog and one Milvus ---------------------
def _top(base: str, query: str) -> list[str]:
    body = json.dumps({"text": query, "k": 3}).encode()
    req = urllib.request.Request(base + "/search", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return [h["source_name"] for h in json.load(resp)["hits"]]


def _until(check: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_servers_and_machines_share_one_postgres_catalog_and_one_milvus(
    eval_dir: Path, tmp_path: Path, milvus_uri: str, pg_url: str
) -> None:
    docs = scifact_docs(eval_dir)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, chosen in ((first, docs[:6]), (second, docs[6:9])):
        folder.mkdir()
        for i, doc in enumerate(chosen):
            (folder / f"{folder.name}-{i}.txt").write_text(doc_text(doc), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MMRAG_CATALOG_URL": pg_url, "MMRAG_INDEX_BACKEND": "milvus", "MMRAG_MILVUS_URI": milvus_uri,
           "MMRAG_CLIP_MODEL": "none"}

    def ingest(store: Path, *paths: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", *map(str, paths), "--store", str(store)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    ingest(tmp_path / "machine-a", first)
    # machine B has only the two URLs: an empty store directory, no manifest, no index files
    (tmp_path / "machine-b").mkdir()
    servers = [start_serve(tmp_path / "machine-a", tmp_path / "a.log", env=env),
               start_serve(tmp_path / "machine-b", tmp_path / "b.log", env=env)]
    try:
        title = docs[0]["title"]
        for _, base in servers:
            assert _top(base, title)[0] == "first-0.txt"
        ingest(tmp_path / "machine-c", second)  # a third machine writes; both servers see it
        new_title = docs[7]["title"]
        for _, base in servers:
            assert _until(lambda base=base: _top(base, new_title)[:1] == ["second-1.txt"]), base
        assert not list((tmp_path / "machine-b").glob("indexes/*.faiss"))
    finally:
        for proc, _ in servers:
            stop(proc)
    verify = subprocess.run([sys.executable, "-m", "pipelines.cli", "verify", "--store", str(tmp_path / "machine-b"),
                             "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout[-3000:]


def test_move_a_faiss_store_to_milvus_with_repair(eval_dir: Path, tmp_path: Path, milvus_uri: str,
                                                   text_encoder: Any) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, doc in enumerate(scifact_docs(eval_dir)[30:42]):
        (docs / f"m{i:02d}.txt").write_text(doc_text(doc), encoding="utf-8")
    query = scifact_docs(eval_dir)[33]["title"]
    with Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder) as eng:
        eng.ingest([docs])
        before = [_key(h) for h in eng.search(text=query, k=5)]
    moved = {"models.clip": "none", **_milvus(milvus_uri)}
    with Engine.open(tmp_path / "store", overrides=moved, text=text_encoder) as eng:
        report = eng.repair(check_files=False)  # rebuilds the collection from the catalog's vectors, no model
        assert report.after.ok and any("rebuilt index 'text'" in a for a in report.actions)
        space = eng.store.space("text")
        assert space is not None and isinstance(space.index, MilvusIndex) and space.index.count() == len(
            eng.store.catalog.item_ids("text"))
        assert [_key(h) for h in eng.search(text=query, k=5)] == before
        # verify sees what Milvus lacks and what it holds beyond the catalog; repair mends both
        ids = eng.store.catalog.item_ids("text")
        space.index.remove(ids[:2])
        space.index.add(np.asarray([10**9], dtype=np.int64), np.ones((1, space.dim), np.float32) / space.dim**0.5)
        codes = {p.code: p.count for p in eng.verify(check_files=False).problems}
        assert codes.get("index_missing") == 2 and codes.get("index_orphan") == 1, codes
        assert eng.repair(check_files=False).after.ok and eng.verify(check_files=False).ok
