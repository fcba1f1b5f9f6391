"""Copies (``retriever.copies``): which items are the same evidence in two places, and folding them."""

from __future__ import annotations

from retriever.catalog import ItemRecord
from retriever.copies import collapse_copies, copy_citations, copy_key
from retriever.types import Locator, Modality

PASSAGE = "Here's to the crazy ones. The misfits. The rebels. The troublemakers."


def _item(text: str | None = PASSAGE, modality: Modality = Modality.PDF, kind: str = "chunk", uri: str = "/a.pdf",
          thumbnail: str | None = None, source_hash: str | None = "h1", display: str | None = None,
          **where) -> ItemRecord:
    return ItemRecord(id=1, source_id=1, source_uri=uri, source_display=display or uri, modality=modality, kind=kind,
                      locator=Locator(uri=uri, **where), text=text, thumbnail=thumbnail, preview=None, metadata={},
                      source_hash=source_hash)


def test_text_copies_ignore_case_spacing_ligatures_and_the_file() -> None:
    key = copy_key(_item())
    assert key is not None
    assert copy_key(_item("  " + PASSAGE.upper().replace(" ", "\n "), uri="/b.pdf", source_hash="h2")) == key
    assert copy_key(_item("\ufb01le " + PASSAGE)) == copy_key(_item("file " + PASSAGE))
    assert copy_key(_item(modality=Modality.TEXT)) != key  # another modality or kind: not folded
    assert copy_key(_item(kind="window", modality=Modality.AUDIO)) != copy_key(_item(kind="window"))
    assert copy_key(_item("Thank you.", Modality.AUDIO, "window")) is None  # too short to be a copy
    assert copy_key(_item(None)) is None


def test_visual_copies_are_the_same_place_in_the_same_bytes_never_the_same_text() -> None:
    page = dict(kind="page", thumbnail="t.jpg", text=None)
    assert copy_key(_item(**page, page=2)) == copy_key(_item(**page, page=2, uri="/copy.pdf"))
    assert copy_key(_item(**page, page=2)) != copy_key(_item(**page, page=3))
    assert copy_key(_item(**page, page=2)) != copy_key(_item(**page, page=2, source_hash="h2"))
    assert copy_key(_item(**page, page=2, source_hash=None)) is None  # bytes unknown: no copies
    frames = [_item(PASSAGE, Modality.VIDEO, "keyframe", thumbnail="k.jpg", t=t) for t in (4.0, 9.0)]
    assert copy_key(frames[0]) != copy_key(frames[1])  # two moments under one transcript window


def test_collapse_copies_keeps_the_best_ranked_and_lists_the_rest_across_windows() -> None:
    keys = {1: ("a",), 2: ("b",), 3: ("a",), 4: None, 5: None, 6: ("b",), 7: ("a",)}
    seen: dict = {}
    kept, copies = collapse_copies([(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)], keys, seen)
    assert kept == [(1, 0.9), (2, 0.8), (4, 0.6)] and copies == {1: [3]}
    kept, copies = collapse_copies([(5, 0.5), (6, 0.4), (7, 0.3)], keys, seen)  # the next window
    assert kept == [(5, 0.5)] and copies == {2: [6], 1: [7]}


def test_a_copy_is_named_by_its_path_where_its_name_alone_is_ambiguous() -> None:
    kept = _item(uri="/a/jfk.flac", display="jfk.flac")
    same_name = _item(uri="/b/jfk.flac", display="jfk.flac")
    other = _item(uri="/b/speech.flac", display="speech.flac")
    assert copy_citations(kept, [same_name, other]) == ("/b/jfk.flac", "speech.flac")
    assert copy_citations(_item(display="x.pdf"), [_item(uri="/b/y.pdf", display="y.pdf")]) == ("y.pdf",)
