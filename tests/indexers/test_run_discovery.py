"""What an ingest run may reach: confinement to allowed directories (symlinks included) and
never ingesting an mmrag store (the one written to, or any other in the tree)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from indexers.ingest.discover import OUTSIDE, STORE_DIR, Found, discover
from indexers.ingest.pipeline import IngestPipeline
from indexers.ingest.workers import FileWorkers
from retriever.config import IngestConfig
from retriever.errors import IngestError


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """allowed/ with files and symlinks pointing inside and outside it; outside/ with secrets."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    (outside / "deeper").mkdir(parents=True)
    (allowed / "a.txt").write_text("alpha note about kites\n")
    (allowed / "sub" / "b.txt").write_text("beta note about boats\n")
    (outside / "secret.txt").write_text("launch code zebra-42\n")
    (outside / "deeper" / "x.txt").write_text("another secret, walrus-7\n")
    (allowed / "link_out_file.txt").symlink_to(outside / "secret.txt")
    (allowed / "link_out_dir").symlink_to(outside)
    (allowed / "link_in_file.txt").symlink_to(allowed / "sub" / "b.txt")
    (allowed / ".hidden").mkdir()  # excluded by the default globs, reachable through a link
    (allowed / ".hidden" / "c.txt").write_text("gamma note about trains\n")
    (allowed / "link_in_dir").symlink_to(allowed / ".hidden")
    (allowed / "sub" / "up").symlink_to("../../outside/deeper")  # relative, two levels out
    return allowed, outside


EXCLUDE = IngestConfig().exclude  # the default globs skip dot-folders such as allowed/.hidden
INSIDE = ("a.txt", "sub/b.txt", "link_in_file.txt", "link_in_dir/c.txt")


def _split(found: list[Found]) -> tuple[set[str], dict[str, str]]:
    files = {str(f.path) for f in found if f.reason is None}
    return files, {str(f.path): f.reason for f in found if f.reason is not None}


def test_within_skips_every_path_that_resolves_outside(tmp_path: Path) -> None:
    allowed, outside = _tree(tmp_path)
    found = list(discover([allowed], exclude=EXCLUDE, follow_symlinks=True, within=[allowed]))
    files, skipped = _split(found)
    assert files == {str(allowed / n) for n in INSIDE}
    for name in ("link_out_file.txt", "link_out_dir", "sub/up"):
        assert skipped[str(allowed / name)] == OUTSIDE, skipped
    assert not any(str(outside) in reason for reason in skipped.values())  # the target is never shown

    for top in (outside / "secret.txt", allowed / "link_out_dir", allowed / "link_out_dir" / "secret.txt",
                allowed / "link_out_file.txt", allowed / ".." / "outside", outside / "missing.txt"):
        files, skipped = _split(list(discover([top], follow_symlinks=True, within=[allowed])))
        assert not files and list(skipped.values()) == [OUTSIDE], (top, skipped)
    files, _ = _split(list(discover([allowed / "link_in_file.txt"], within=[allowed])))
    assert files == {str(allowed / "link_in_file.txt")}

    # without `within` a followed link goes anywhere; not following it skips it as before
    files, _ = _split(list(discover([allowed], follow_symlinks=True)))
    assert {str(allowed / "link_out_file.txt"), str(allowed / "link_out_dir" / "deeper" / "x.txt")} <= files
    _, skipped = _split(list(discover([allowed], follow_symlinks=False, within=[allowed])))
    assert "not followed" in skipped[str(allowed / "link_out_file.txt")]


def test_within_through_a_symlinked_allowed_directory(tmp_path: Path) -> None:
    allowed, _outside = _tree(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(allowed)  # the allowed directory given by another name
    files, skipped = _split(list(discover([allowed], follow_symlinks=True, within=[alias])))
    assert str(allowed / "a.txt") in files and skipped[str(allowed / "link_out_dir")] == OUTSIDE


def test_pipeline_run_within_ingests_nothing_from_outside(tmp_path: Path, text_store) -> None:
    allowed, outside = _tree(tmp_path)
    eng = text_store
    eng.config = eng.config.with_overrides({"ingest.follow_symlinks": True})
    with eng.store.write_lock():
        pipe = IngestPipeline(eng.store, eng.registry, eng.clip_encoder, eng.text_encoder, eng.config)
        report = pipe.run([allowed, outside / "secret.txt"], within=[allowed])
    uris = {s.uri for s in eng.store.catalog.sources()}
    assert uris == {str(allowed / n) for n in INSIDE}
    assert report.added == 4 and not report.failed
    assert {p for p, r in report.skipped if r == OUTSIDE} >= {str(outside / "secret.txt"),
                                                               str(allowed / "link_out_file.txt")}
    texts = " ".join(h.text or "" for h in eng.search(text="secret code"))
    assert "zebra" not in texts and "walrus" not in texts


def test_a_file_swapped_for_an_outside_link_after_discovery_is_refused(tmp_path: Path, text_store) -> None:
    allowed, outside = _tree(tmp_path)
    eng = text_store
    found = Found(allowed / "a.txt", allowed)
    (allowed / "a.txt").unlink()
    (allowed / "a.txt").symlink_to(outside / "secret.txt")
    workers = FileWorkers(eng.store, eng.registry, None, eng.config, None, threading.Event(), (str(allowed),))
    with pytest.raises(IngestError, match="^outside the allowed directories$"):
        workers.source_info(found)


def _photos(photos: list[Path], dest: Path, n: int) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dest / p.name)) for p in photos[:n]]


def test_ingest_of_a_tree_holding_the_store_skips_the_store(
    tmp_path: Path, coco_photos: list[Path], open_engine
) -> None:
    tree = tmp_path / "tree"
    _photos(coco_photos, tree, 4)
    foreign = tree / "old-store"  # another mmrag store in the tree: manifest, catalog, indexes, thumbnails
    (foreign / "indexes").mkdir(parents=True)
    (foreign / "manifest.json").write_text(json.dumps({"format_version": 2, "spaces": {}}))
    _photos(coco_photos, foreign / "media" / "thumbs" / "001", 1)
    with open_engine(tree / "mmrag-store", tiny_clip=True) as eng:
        for run in range(3):
            report = eng.ingest([tree])
            assert eng.store.catalog.counts()["items"] == 4, (run, report.to_dict())
            assert report.added == (4 if run == 0 else 0) and report.unchanged == (0 if run == 0 else 4)
            skipped = dict(report.skipped)
            assert skipped[str(tree / "mmrag-store")] == skipped[str(foreign)] == STORE_DIR
        report = eng.ingest([tree / "mmrag-store" / "media", foreign / "media" / "thumbs"])
        assert report.added == 0 and [r for _, r in report.skipped] == [STORE_DIR, STORE_DIR]
        assert eng.verify(check_files=False).clean
    # a folder of your own kept inside a store directory is still yours to ingest
    notes = tree / "mmrag-store" / "my-notes"
    notes.mkdir()
    (notes / "n.txt").write_text("a note kept beside the store\n")
    assert list(discover([notes])) == [Found(notes / "n.txt", notes)]
    assert os.path.isdir(tree / "mmrag-store" / "indexes")
