"""A run that ends well closes earlier unfinished runs and deletes what failed writes left
behind (orphan thumbnails, stray index files), so `mmrag verify` stops warning about them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retriever.catalog.models import RunRow
from retriever.errors import StoreError


def _statuses(eng) -> list[str]:
    with eng.store.catalog.session() as s:
        return [r.status for r in s.query(RunRow).order_by(RunRow.id)]


def test_a_good_run_cleans_up_after_failed_and_killed_ones(
    tmp_path: Path, coco_photos: list[Path], clip_store
) -> None:
    eng = clip_store
    photos = coco_photos
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    for p in photos[:2]:
        shutil.copy(p, first)
    for p in photos[2:4]:
        shutil.copy(p, second)
    assert eng.ingest([first]).added == 2

    catalog = eng.store.catalog
    commit = catalog.commit_source

    def disk_full(info, items, *, write_files=None, **kw):  # thumbnails written, then the commit fails
        def files(ids, its):
            write_files(ids, its)
            raise OSError(28, "No space left on device")

        return commit(info, items, write_files=files, **kw)

    catalog.commit_source = disk_full
    with pytest.raises((OSError, StoreError)):
        eng.ingest([second])
    catalog.commit_source = commit
    catalog.start_run()  # a run that was killed: never finished
    stray = eng.store.index_dir / ".text-7.faiss.tmp-1-2"
    stray.write_bytes(b"left by an interrupted save")

    before = eng.verify(check_files=False)
    assert {"media_orphan", "index_stray", "run_interrupted"} <= before.codes(), before.to_dict()
    assert before.ok  # warnings only
    report = eng.ingest([second])
    assert report.added == 2 and not report.failed
    after = eng.verify(check_files=False)
    assert after.clean, after.to_dict()
    assert not stray.exists()
    assert _statuses(eng) == ["ok", "failed", "interrupted", "ok"]
    for uri in [str(first / p.name) for p in photos[:2]] + [str(second / p.name) for p in photos[2:4]]:
        thumb = catalog.items_of_source(uri)[0].thumbnail  # referenced media are kept
        assert (eng.store.root / thumb).is_file()


def test_verify_warns_only_about_unfinished_runs_after_the_last_good_one(text_store) -> None:
    catalog = text_store.store.catalog
    older = catalog.start_run()  # killed, long ago
    done = catalog.start_run()
    catalog.finish_run(done, "ok", {})
    assert "run_interrupted" not in text_store.verify(check_files=False).codes()
    catalog.start_run()  # killed after the last good run
    problems = text_store.verify(check_files=False).of("run_interrupted")
    assert [p.count for p in problems] == [1] and older < done
