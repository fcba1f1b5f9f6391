"""Reliability of the store: kill -9 during ingest, one writer and many readers, verify and
repair, the format version, and a full or read-only disk."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli.main import main as cli_main
from pipelines.engine import Engine
from pipelines.testing import crash
from retriever.config import Config
from retriever.errors import StoreError, StoreLockedError
from retriever.store import FORMAT_VERSION, Store
from retriever.index.faiss_index import FaissStore
from retriever.maintenance.verify import verify

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def torture_models(tiny_clip_spec: str) -> crash.Models:
    """The torture's models (fp32, like its worker processes), loaded once for this module."""
    return crash.load_models(tiny_clip_spec)


def _ids_by_source(store: Store) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for src in store.catalog.sources():
        out[src.uri] = {r.id for r in store.catalog.items_of_source(src.uri)}
    return out


def _snapshot(eng: Engine, queries: list[str]) -> dict:
    """What a user can observe: every item (id, source, locator, text) and ranked results."""
    items = {
        r.id: (r.source_uri, r.kind, json.dumps(r.locator.to_dict(), sort_keys=True), r.text)
        for uri in _ids_by_source(eng.store) for r in eng.store.catalog.items_of_source(uri)
    }
    results = {q: [(h.item_id, round(h.score, 6)) for h in eng.search(text=q, k=8)] for q in queries}
    return {"items": items, "results": results}


# ---- 1. kill -9 ----------------------------------------------------------------------------
def test_kill9_short_torture(
    tmp_path: Path, eval_dir: Path, tiny_clip_spec: str, torture_models: crash.Models
) -> None:
    """3 rounds on ~30 files, killed while encoding, inside a commit and halfway through an index save."""
    summary = crash.torture(
        tmp_path, eval_dir, rounds=3, n_texts=14, n_images=8, n_pdfs=1, clip=tiny_clip_spec, save_every=5,
        kills=["encode:2", "in_commit:3", "save_partial:1"], log=lambda m: None, models=torture_models,
        in_process=True,
    )
    assert summary["killed"] >= 2, summary  # the fault points were really reached
    assert summary["items_lost"] == 0 and summary["duplicates"] == 0, summary
    assert summary["index_mismatches"] == 0 and summary["verify_errors"] == 0, summary
    assert summary["items_only_in_crash"] == summary["items_only_in_clean"] == 0, summary
    assert summary["vector_drift"] == 0 and summary["space_mismatches"] == 0, summary
    assert summary["search_mismatches"] == 0 and summary["queries"] >= 18, summary
    assert summary["items"] > 25


@pytest.mark.slow
def test_kill9_full_torture(
    tmp_path: Path, eval_dir: Path, tiny_clip_spec: str, torture_models: crash.Models
) -> None:
    """20 rounds on ~320 mixed files, killed at random points and random moments."""
    summary = crash.torture(tmp_path, eval_dir, rounds=20, clip=tiny_clip_spec, seed=1, log=print,
                            models=torture_models)
    print(json.dumps({k: v for k, v in summary.items() if k != "examples"}, indent=1))
    assert summary["rounds"] == 20 and summary["killed"] >= 12, summary
    for key in ("items_lost", "duplicates", "index_mismatches", "verify_errors", "items_only_in_crash",
                "items_only_in_clean", "vector_drift", "space_mismatches", "search_mismatches"):
        assert summary[key] == 0, (key, summary)


def test_commit_log_check_detects_a_lost_commit(
    tmp_path: Path, scifact_store
) -> None:
    """The torture's checks are not vacuous: a deleted item and an orphan index id are both caught."""
    eng, _ = scifact_store(4, seed=3)
    with eng:
        committed = {uri: sorted(ids) for uri, ids in _ids_by_source(eng.store).items()}
    victim = next(iter(committed))
    con = sqlite3.connect(tmp_path / "s" / "catalog.sqlite")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("DELETE FROM items WHERE id = ?", (committed[victim][0],))
    con.commit()
    con.close()
    check = crash.check_store(tmp_path / "s", "none", committed)
    assert check["lost"] == 1
    assert check["mismatches"] == 2  # the unlogged delete leaves the id in the text index and in BM25
    assert {e["code"] for e in check["verify_errors"]} == {"index_orphan", "source_count"}


# ---- 2. one writer, many readers ----------------------------------------------------------------
def test_second_writer_fails_clearly_or_waits(tmp_path: Path, open_engine, scifact_texts, text_files) -> None:
    corpus = tmp_path / "c"
    text_files(corpus, scifact_texts(2, seed=5))
    store_dir = tmp_path / "s"
    marker = tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path\n"
            "from retriever.config import Config; from retriever.store import Store\n"
            f"s = Store({str(store_dir)!r}, Config.load({str(store_dir)!r}))\n"
            "with s.write_lock():\n"
            "    print('locked', flush=True); time.sleep(4)\n"
            f"    Path({str(marker)!r}).write_text('x')\n"
        )],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with open_engine(store_dir) as eng:
            with pytest.raises(StoreLockedError, match=rf"being written by pid {holder.pid}"):
                eng.ingest([corpus])
        with open_engine(store_dir, {"ingest.lock_wait_s": 120}) as eng:
            seen: list[bool] = []
            report = eng.ingest([corpus], progress=lambda *a: seen.append(marker.exists()))
            assert report.added == 2 and seen and all(seen)  # it waited for the holder to let go
    finally:
        holder.wait(timeout=60)
    # same process, two engines on one store: the lock is per open file, so the second fails too
    with open_engine(store_dir) as a, open_engine(store_dir) as b:
        with a.store.write_lock():
            with pytest.raises(StoreLockedError):
                b.ingest([corpus])
            with pytest.raises(StoreLockedError):
                b.repair()


def _check_observations(observations: list[dict], versions: list[dict[str, set[int]]], always: set[str]) -> int:
    """Each observed source shows exactly one complete version of its items, and the sources in
    ``always`` are never missing; returns the number of violations."""
    bad = 0
    for seen in observations:
        bad += len(always - set(seen))
        for uri, ids in seen.items():
            if not any(ids == v.get(uri) for v in versions):
                bad += 1
    return bad


def test_eight_readers_during_ingest_shared_engine(
    tmp_path: Path, open_engine, scifact_texts, text_files
) -> None:
    """8 threads search one Engine while it ingests: 0 errors, every source old or new, never partial."""
    mark = "zqxmark"
    corpus = tmp_path / "c"
    texts = scifact_texts(24, seed=7, mark=mark)
    paths = text_files(corpus / "a", texts[:10])
    # every item must be reachable through the dense run at full depth, so no similarity floor here:
    # the snapshot guarantee is what is measured, and BM25 refreshes lazily during an ingest
    settings = {"index.save_every_items": 10, "models.batch_size": 8, "search.min_text_similarity": -1.0}
    with open_engine(tmp_path / "s", settings) as eng:
        eng.ingest([corpus])
        before = _ids_by_source(eng.store)
        for path, text in zip(paths[:6], texts[18:24]):  # 6 sources change, 8 are new
            path.write_text(text, encoding="utf-8")
        text_files(corpus / "b", texts[10:18])
        total = sum(len(v) for v in before.values()) * 4
        stop, errors, observations = threading.Event(), [], []

        def reader(n: int) -> None:
            while not stop.is_set():
                try:
                    hits = eng.search(text=f"{mark} {texts[n][:40]}", k=total, depth=total)
                except Exception as exc:  # any error is a failure
                    errors.append(repr(exc))
                    continue
                seen: dict[str, set[int]] = defaultdict(set)
                for h in hits:
                    seen[h.source_uri].add(h.item_id)
                observations.append(dict(seen))

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        try:
            report = eng.ingest([corpus])
        finally:
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(timeout=120)
        after = _ids_by_source(eng.store)
    assert report.updated == 6 and report.added == 8 and not report.failed
    assert errors == []
    assert len(observations) >= 8
    assert any(len(o) == len(after) for o in observations[-8:])  # the last searches see everything
    assert _check_observations(observations, [before, after], always=set(before)) == 0


def test_search_retries_when_a_commit_lands_mid_search(
    tmp_path: Path, monkeypatch, scifact_texts, scifact_store
) -> None:
    """A search spans one catalog state: a commit during it (here: a removal) makes it run again."""
    from retriever.search import Retriever

    eng, paths = scifact_store(3, seed=31)
    with eng:
        victim = str(paths[0])
        query = scifact_texts(3, seed=31)[0][:60]
        original, calls = Retriever.search, []

        def racy(self, q):
            hits = original(self, q)
            if not calls:  # a writer commits while the first attempt is running
                eng.store.catalog.remove_sources([victim])
            calls.append([h.source_uri for h in hits])
            return hits

        monkeypatch.setattr(Retriever, "search", racy)
        hits = eng.search(text=query, k=5)
    assert calls[0][0] == victim and len(calls) == 2
    assert victim not in {h.source_uri for h in hits}  # no hit points at an item the commit removed


def test_reader_opened_before_the_first_ingest_sees_it(
    tmp_path: Path, open_engine, scifact_texts, text_files
) -> None:
    """A reader that opened an empty store picks up the spaces a writer registers later."""
    corpus = tmp_path / "c"
    texts = scifact_texts(2, seed=37)
    text_files(corpus, texts)
    with open_engine(tmp_path / "s") as reader:
        assert reader.search(text="anything at all", k=3) == []
        with open_engine(tmp_path / "s") as writer:
            writer.ingest([corpus])
        hits = reader.search(text=texts[1][:80], k=3)
        assert hits and hits[0].source_uri == str(corpus / "doc001.txt") and "text" in hits[0].scores


READER = """
import json, sys, time
from collections import defaultdict
from pathlib import Path
from pipelines.engine import Engine
store, out, stop, mark = sys.argv[1:5]
settings = {"models.clip": "none", "index.bm25_refresh_s": 0}  # BM25 follows every commit at once
with Engine.open(store, overrides=settings) as eng, open(out, "w") as fh:
    print("ready", flush=True)
    n = 0
    while not Path(stop).exists():
        hits = eng.search(text=mark, k=10000, depth=10000, runs=["bm25"])
        seen = defaultdict(list)
        for h in hits:
            seen[h.source_uri].append(h.item_id)
        fh.write(json.dumps(seen) + "\\n")
        n += 1
    print(n, flush=True)
"""


def test_reader_processes_during_ingest(tmp_path: Path, open_engine, scifact_texts, text_files) -> None:
    """Two reader processes (no model: BM25 searches) poll the store while another process ingests."""
    mark = "zqxmark"
    corpus = tmp_path / "c"
    texts = scifact_texts(20, seed=11, mark=mark)
    paths = text_files(corpus / "a", texts[:8])
    store_dir = tmp_path / "s"
    with open_engine(store_dir) as eng:
        eng.ingest([corpus])
        before = _ids_by_source(eng.store)
        for path, text in zip(paths[:5], texts[15:20]):
            path.write_text(text, encoding="utf-8")
        text_files(corpus / "b", texts[8:15])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        stop = tmp_path / "stop"
        readers = [
            subprocess.Popen([sys.executable, "-c", READER, str(store_dir), str(tmp_path / f"r{i}.jsonl"), str(stop),
                              mark], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        try:
            for r in readers:
                assert r.stdout.readline().strip() == "ready", r.stderr.read()
            report = eng.ingest([corpus])
        finally:
            stop.write_text("x")
            outs = [r.communicate(timeout=120) for r in readers]
        after = _ids_by_source(eng.store)
    assert report.updated == 5 and report.added == 7
    for r, (_out, err) in zip(readers, outs):
        assert r.returncode == 0, err
    observations = [
        {uri: set(ids) for uri, ids in json.loads(line).items()}
        for i in range(2) for line in (tmp_path / f"r{i}.jsonl").read_text().splitlines()
    ]
    assert len(observations) >= 4
    # BM25 alone lags the catalog by up to its refresh interval, so a source being replaced may be
    # briefly absent from a BM25-only search; it is never partial or mixed
    assert observations[-1] and _check_observations(observations, [before, after], always=set()) == 0
    assert any(len(o) == len(after) for o in observations)


# ---- 3. verify and repair ------------------------------------------------------------------
def _cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, dict]:
    code = cli_main(list(args) + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_verify_finds_and_repair_fixes(
    tmp_path: Path, capsys, open_engine, scifact_texts, text_files
) -> None:
    from pipelines.synthetic import write_images

    corpus = tmp_path / "c"
    texts = text_files(corpus / "t", scifact_texts(6, seed=13))
    images = write_images(corpus / "i", 6, seed=2, size=96)
    store_dir = tmp_path / "s"
    with open_engine(store_dir, tiny_clip=True) as eng:
        eng.ingest([corpus])
        assert eng.verify().clean, eng.verify().to_dict()
        probe = texts[4].read_text(encoding="utf-8")[:120]  # a file the damage below leaves alone

        def found(e: Engine) -> tuple[str, str]:
            return e.search(image=images[0], k=1)[0].source_uri, e.search(text=probe, k=1)[0].source_uri

        query_before = found(eng)
        assert query_before == (str(images[0]), str(texts[4]))
        store = eng.store
        text_item = store.catalog.items_of_source(str(texts[0]))[0].id
        thumbs = [store.catalog.items_of_source(str(p))[0].thumbnail for p in images[:2]]
    # damage every layer of the store
    index, seq = FaissStore.load(store_dir / "indexes", "text", Config().index)
    index.remove(np.asarray([text_item]))  # a vector missing from the saved index
    index.add(np.asarray([999_999]), np.ones((1, index.dim), np.float32) / np.sqrt(index.dim))  # an orphan id
    index.save(store_dir / "indexes", "text", seq)
    pointer = json.loads((store_dir / "indexes" / "clip.json").read_text())
    (store_dir / "indexes" / pointer["file"]).write_bytes(b"garbage")  # an unreadable index file
    (store_dir / "indexes" / "bm25.json").write_text("{not json")
    (store_dir / "indexes" / ".text-7.faiss.tmp-1-2").write_bytes(b"left by a crash")
    (store_dir / thumbs[0]).unlink()
    (store_dir / thumbs[1]).write_bytes((store_dir / thumbs[1]).read_bytes()[:100])
    orphan = store_dir / "media" / "thumbs" / "999" / "999999.jpg"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\xff\xd8 not referenced")
    con = sqlite3.connect(store_dir / "catalog.sqlite")
    con.execute("DELETE FROM vectors WHERE item_id = (SELECT id FROM items WHERE source_id = "
                "(SELECT id FROM sources WHERE uri = ?) LIMIT 1) AND space = 'text'", (str(texts[1]),))
    con.execute("UPDATE runs SET status = 'running'")
    con.commit()
    con.close()
    texts[2].write_text("changed after ingest\n", encoding="utf-8")
    texts[3].unlink()

    code, report = _cli("verify", "--store", str(store_dir), capsys=capsys)
    assert code == 1 and not report["ok"]
    codes = {p["code"] for p in report["problems"]}
    assert {"index_missing", "index_orphan", "index_unreadable", "bm25_unreadable", "media_missing",
            "media_unreadable", "media_orphan", "vector_missing", "index_stray", "run_interrupted",
            "source_changed", "source_missing"} <= codes, codes
    missing = next(p for p in report["problems"] if p["code"] == "index_missing" and p.get("space") == "text")
    assert missing["item_ids"] == [text_item]

    # readers are not stopped by the damage: unreadable caches are rebuilt in memory
    with open_engine(store_dir, tiny_clip=True) as eng:
        assert found(eng) == query_before

    code, fixed = _cli("repair", "--store", str(store_dir), capsys=capsys)
    assert code == 0 and fixed["ok"], fixed
    assert {p["code"] for p in fixed["after"]["problems"]} == {"source_changed", "source_missing"}
    assert any("marked them failed for re-ingest" in a for a in fixed["actions"])
    assert not orphan.exists()

    with open_engine(store_dir, tiny_clip=True) as eng:
        report2 = eng.ingest([corpus], prune=True)  # re-encodes what repair had to drop
        assert report2.removed == 1 and report2.updated >= 3, report2.to_dict()
        final = eng.verify()
        assert final.clean, final.to_dict()
        assert found(eng) == query_before
        assert all((store_dir / eng.store.catalog.items_of_source(str(p))[0].thumbnail).is_file() for p in images)


def test_verify_counts_on_a_healthy_store(
    tmp_path: Path, capsys, scifact_store
) -> None:
    eng, _ = scifact_store(3, seed=17)
    with eng:
        report = eng.verify()
    assert report.clean and report.ok
    assert report.counts["indexes"] == {"text": report.counts["items"], "bm25": report.counts["items"]}
    code = cli_main(["verify", "--store", str(tmp_path / "s")])
    assert code == 0 and capsys.readouterr().out.startswith("ok: 0 error(s), 0 warning(s)")


# ---- 4. format version -----------------------------------------------------------------------
def test_format_version_mismatch_fails_clearly(
    tmp_path: Path, capsys, scifact_store
) -> None:
    scifact_store(1, seed=19)[0].close()
    root = tmp_path / "s"
    manifest = root / "manifest.json"
    good = json.loads(manifest.read_text())
    assert good["format_version"] == FORMAT_VERSION == 2
    for version, hint in ((3, "Upgrade mmrag"), (0, "Re-ingest"), (None, "Re-ingest"), ("1", "Re-ingest")):
        data = dict(good)
        if version is None:
            del data["format_version"]
        else:
            data["format_version"] = version
        manifest.write_text(json.dumps(data))
        with pytest.raises(StoreError, match=rf"format version {re.escape(repr(version))}.*reads version 2.*{hint}"):
            Store(root, Config.load(root))
        assert cli_main(["verify", "--store", str(root)]) == 2
        assert "format version" in capsys.readouterr().err
    manifest.write_text(json.dumps(good))
    assert verify(Store(root, Config.load(root))).clean


# ---- 5. disk full and read-only ------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 6 MiB tmpfs (skipped where mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root/CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _noise_images(root: Path, n: int) -> None:
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(root / f"noise{i:03d}.png")


def test_disk_full_fails_clearly_and_store_stays_consistent(
    small_disk: Path, tmp_path: Path, open_engine, scifact_texts, text_files
) -> None:
    good = tmp_path / "good"
    text_files(good, scifact_texts(5, seed=23))
    _noise_images(tmp_path / "big", 250)  # ~250 noise thumbnails: more than the disk holds
    store_dir = small_disk / "store"
    queries = ["cells and proteins", "clinical trial outcome"]
    with open_engine(store_dir) as eng:
        eng.ingest([good])
        before = _snapshot(eng, queries)
        threads = threading.active_count()
        where = re.escape(str(store_dir))
        with pytest.raises(StoreError, match=rf"store {where}|catalog sqlite:///{where}") as err:
            eng.ingest([tmp_path / "big"])
        assert re.search(r"No space left on device|database or disk is full", str(err.value)), str(err.value)
        assert threading.active_count() == threads  # the run's workers stopped
    with open_engine(store_dir) as eng:  # still opens, while the disk is still full
        report = eng.verify()
        assert report.ok, report.to_dict()
        after = _snapshot(eng, queries)
        assert {i: v for i, v in after["items"].items() if i in before["items"]} == before["items"]
        assert after["results"] == before["results"]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    with open_engine(store_dir) as eng:
        fixed = eng.repair()  # deletes what the failed run left behind (media of rolled-back items)
        assert fixed.ok and fixed.after.clean, fixed.after.problems
        assert _snapshot(eng, queries)["results"] == before["results"]


def test_read_only_store_searches_and_refuses_writes(
    small_disk: Path, tmp_path: Path, open_engine, scifact_texts, text_files
) -> None:
    good = tmp_path / "good"
    text_files(good, scifact_texts(4, seed=29))
    store_dir = small_disk / "store"
    queries = ["cells and proteins"]
    with open_engine(store_dir) as eng:
        eng.ingest([good])
        before = _snapshot(eng, queries)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with open_engine(store_dir) as eng:
            assert _snapshot(eng, queries) == before
            assert eng.verify().clean
            extra = tmp_path / "extra"
            text_files(extra, ["one more document\n"])
            with pytest.raises(StoreError, match=rf"store {re.escape(str(store_dir))}.*Read-only file system"):
                eng.ingest([extra])
            with pytest.raises(StoreError, match="Read-only file system"):
                eng.remove([str(good)])
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    with open_engine(store_dir) as eng:
        assert _snapshot(eng, queries) == before and eng.verify().clean


def test_unwritable_store_dir_is_a_store_error(tmp_path: Path, open_engine) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create store"):
        open_engine(blocker / "store")
