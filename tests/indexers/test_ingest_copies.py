"""A file with the same bytes as one already ingested, or as another file of the run, is copied:
its items, vectors and thumbnails come from that one, without decoding or encoding it again, and
it stays whole when the other is removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.engine import Engine

FILES = ("images/coco/coco_train2017_000000000790.jpg", "pdf/docling__multi_page.pdf", "audio/jfk.flac")


@pytest.fixture()
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the run decodes (``decode_file`` calls), in order."""
    import indexers.ingest.workers as workers

    calls: list[str] = []
    real = workers.decode_file

    def spy(path: Path, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(workers, "decode_file", spy)
    return calls


def _folder(root: Path, eval_dir: Path, broken: bytes | None = None) -> Path:
    root.mkdir(parents=True)
    for rel in FILES:
        shutil.copy(eval_dir / rel, root / Path(rel).name)
    if broken is not None:
        (root / "broken.jpg").write_bytes(broken)
    return root


def _items(eng: Engine, uri: str) -> list[tuple[str, str, str | None, dict[str, bytes], bytes | None]]:
    """(kind, locator without the uri, text, vectors as bytes, thumbnail bytes) of each item of ``uri``."""
    catalog = eng.store.catalog
    out = []
    for rec in catalog.items_of_source(uri):
        where = {k: v for k, v in rec.locator.to_dict().items() if k != "uri"}
        assert rec.locator.uri == uri
        vectors = {}
        for space in eng.store.spaces():
            _, vecs = catalog.vectors(space, [rec.id])
            if len(vecs):
                vectors[space] = np.asarray(vecs[0]).tobytes()
        thumb = Path(eng.store.resolve_media(rec.thumbnail)).read_bytes() if rec.thumbnail else None
        out.append((rec.kind, json.dumps(where, sort_keys=True), rec.text, vectors, thumb))
    return out


def test_copies_in_one_run_and_in_a_later_one_are_copied_not_decoded(
    clip_store: Engine, eval_dir: Path, tmp_path: Path, decoded: list[str]
) -> None:
    truncated = (eval_dir / FILES[0]).read_bytes()[:3000]
    first, second = _folder(tmp_path / "lib" / "a", eval_dir, truncated), _folder(tmp_path / "lib" / "b", eval_dir,
                                                                                 truncated)
    report = clip_store.ingest([tmp_path / "lib"])
    assert report.added == 6 and len(report.failed) == 2
    (reason_a, reason_b) = {Path(p).parent.name: r for p, r in report.failed}.values()
    assert reason_a == reason_b and "truncated" in reason_a  # a copy of a bad file fails alike
    names = sorted(Path(p).name for p in decoded)
    assert names == sorted([*(Path(f).name for f in FILES), "broken.jpg"]), decoded  # each pair decoded once
    for rel in FILES:
        name = Path(rel).name
        original = _items(clip_store, str(first / name))
        assert original and _items(clip_store, str(second / name)) == original, name
    assert clip_store.verify().clean

    decoded.clear()
    third = _folder(tmp_path / "later", eval_dir)
    later = clip_store.ingest([third])
    assert later.added == 3 and not later.failed and decoded == []  # all three copied from the catalog
    assert _items(clip_store, str(third / "jfk.flac")) == _items(clip_store, str(first / "jfk.flac"))

    clip_store.remove([tmp_path / "lib"])  # the originals go; the copies stay whole
    assert clip_store.verify().clean
    hit = clip_store.search(text="ask not what your country can do for you", k=1)[0]
    assert hit.source_uri == str(third / "jfk.flac") and hit.locator.t_start is not None
    photo = clip_store.search(image=third / Path(FILES[0]).name, k=1, modalities=["image"])[0]
    assert photo.source_uri == str(third / Path(FILES[0]).name) and Path(photo.thumbnail_path).is_file()


def test_the_same_bytes_read_as_another_type_are_decoded_not_copied(
    clip_store: Engine, eval_dir: Path, tmp_path: Path, decoded: list[str]
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("history.md", "history.txt"):  # Markdown chunks by its headings, plain text does not
        shutil.copy(eval_dir / "pdf/groundtruth/docling__multi_page.docling.md", folder / name)
    shutil.copy(eval_dir / "pdf/pypdf__crazyones.pdf", folder / "crazy.pdf")
    shutil.copy(eval_dir / "pdf/pypdf__crazyones.pdf", folder / "crazy.jpg")  # a PDF named .jpg
    report = clip_store.ingest([folder])
    assert sorted(Path(p).name for p in decoded) == ["crazy.pdf", "history.md", "history.txt"]
    assert report.added == 3 and [Path(p).name for p, _ in report.failed] == ["crazy.jpg"]
    types = {Path(s.uri).name: s.content_type for s in clip_store.store.catalog.sources("ok")}
    assert types["history.md"] != types["history.txt"]
