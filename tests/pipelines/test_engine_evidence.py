"""The evidence behind hits, through the Python API: item records, the source file as the catalog
records it, thumbnails inside the store, removed items; and the one-import public API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engine import Engine, SourceFile
from pipelines.synthetic import generate
from retriever.errors import ArgumentError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "chain.md").write_text("Replace a bicycle chain once it has stretched by half a percent.\n")
    generate(1, seed=3, size=96, balanced=True)[0].image.save(root / "shape.png")
    return root


def _hit(eng: Engine, name: str, query: str) -> int:
    return next(h.item_id for h in eng.search(text=query, k=10) if h.source_name == name)


def test_item_source_file_and_thumbnail_of_hits(clip_store: Engine, corpus: Path) -> None:
    clip_store.ingest(corpus)
    note, picture = _hit(clip_store, "chain.md", "bicycle chain"), _hit(clip_store, "shape.png", "a red circle")
    record = clip_store.item(note)
    assert record is not None and record.source_uri == str(corpus / "chain.md") and "bicycle" in (record.text or "")
    assert set(clip_store.items([note, picture, 10**9])) == {note, picture}
    found = clip_store.source_file(note)
    assert isinstance(found, SourceFile) and found.path == corpus / "chain.md" and found.item == record
    assert found.source.content_hash and found.source.size == (corpus / "chain.md").stat().st_size
    thumb = clip_store.thumbnail(picture)
    assert thumb is not None and thumb.is_file() and thumb.is_relative_to(clip_store.root)
    assert clip_store.thumbnail(note) is None  # a text chunk has no thumbnail
    hashes = clip_store.source_hashes([str(corpus / "chain.md"), "/not/a/source"])
    assert hashes == {str(corpus / "chain.md"): found.source.content_hash}


def test_removed_items_are_told_apart_from_unknown_ids(text_store: Engine, corpus: Path) -> None:
    text_store.ingest(corpus / "chain.md")
    first = _hit(text_store, "chain.md", "bicycle chain")
    (corpus / "chain.md").write_text("Replace a bicycle chain when it skips on the cassette.\n")
    text_store.ingest(corpus / "chain.md")  # the changed file replaces its items
    second = _hit(text_store, "chain.md", "bicycle chain")
    assert second > first
    assert text_store.item(first) is None and text_store.source_file(first) is None
    assert text_store.item_was_removed(first) and not text_store.item_was_removed(second)
    assert not text_store.item_was_removed(second + 1000)  # never existed
    assert text_store.counts()["items"] == 1


def test_item_ids_are_checked(text_store: Engine) -> None:
    for bad in (0, -3, True, "7", 1.5):
        with pytest.raises(ArgumentError, match="item id must be an integer >= 1"):
            text_store.item(bad)  # type: ignore[arg-type]


def test_public_api_is_one_lazy_import() -> None:
    code = (
        "import sys, pipelines;"
        "loaded = sorted(m for m in sys.modules if m.startswith(('pipelines.', 'indexers', 'torch')));"
        "from pipelines import Engine, Hit, Answer, IngestReport, Config, MmragError;"
        "print(loaded, Engine.__module__, Hit.__module__, Answer.__module__, IngestReport.__module__,"
        " Config.__name__, issubclass(MmragError, Exception))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "pipelines.engine", "retriever.types", "pipelines.rag.evidence",
                                   "indexers.ingest.commit", "Config", "True"]
    with pytest.raises(AttributeError, match="public API is"):
        import pipelines

        pipelines.Nothing  # noqa: B018 - the attribute lookup is what is tested
