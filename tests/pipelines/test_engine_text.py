"""Core engine on real text files: paraphrase search, re-ingest, change, remove, prune, reopen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.engine import Engine

DOCS = {
    "word_processors.md": "pdf/groundtruth/docling__multi_page.docling.md",
    "aviation_nuts.md": "pdf/groundtruth/docling__amt_handbook_sample.docling.md",
    "table_structure.md": "pdf/groundtruth/docling__2305.03393v1-pg9.docling.md",
    "crazy_ones.txt": "pdf/groundtruth/pypdf__crazyones.txt",
}

# (paraphrased question, file of the answer, words the answering chunk contains)
QUESTIONS = [
    ("Which early machine paired a typewriter with magnetic tape storage?", "word_processors.md", "MT/ST"),
    ("What nut stays tight under heavy vibration thanks to a spring joining two sections?", "aviation_nuts.md", "Boots"),
    ("Which table representation made inference twice as fast as HTML?", "table_structure.md", "OTSL"),
    ("Which program did lawyers like to use for writing documents?", "word_processors.md", "WordPerfect"),
    ("A tribute to the misfits and rebels who see things differently", "crazy_ones.txt", "rebels"),
    ("When did browser-based collaborative document editing arrive?", "word_processors.md", "Google Docs"),
]


@pytest.fixture()
def corpus(tmp_path: Path, eval_dir: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, rel in DOCS.items():
        shutil.copy(eval_dir / rel, root / name)
    return root


def _top(eng: Engine, question: str, k: int = 3):
    return eng.search(text=question, k=k)


def test_paraphrased_questions_find_the_right_chunk(text_store: Engine, corpus: Path) -> None:
    report = text_store.ingest([corpus])
    assert report.added == len(DOCS) and not report.failed
    top1 = 0
    for question, name, words in QUESTIONS:
        hits = _top(text_store, question)
        assert any(h.source_name == name and words in (h.text or "") for h in hits), (question, [h.citation for h in hits])
        top1 += hits[0].source_name == name and words in (hits[0].text or "")
        assert set(hits[0].scores) <= {"text", "bm25"}
        assert hits[0].locator.char_start is not None
    assert top1 >= len(QUESTIONS) - 1


def test_chunk_offsets_point_into_the_file(text_store: Engine, corpus: Path) -> None:
    text_store.ingest([corpus])
    hit = _top(text_store, "Boots self-locking nut spring")[0]
    source = Path(hit.source_uri).read_text(encoding="utf-8")
    assert source[hit.locator.char_start : hit.locator.char_end] == hit.text


def test_reingest_is_noop_and_change_replaces(text_store: Engine, corpus: Path) -> None:
    first = text_store.ingest([corpus])
    items = text_store.stats()["items"]
    again = text_store.ingest([corpus])
    assert (again.added, again.updated, again.unchanged) == (0, 0, len(DOCS))
    assert text_store.stats()["items"] == items

    target = corpus / "crazy_ones.txt"
    target.write_text("Quantum teleportation of a zebra across the Sahara desert at dawn.\n", encoding="utf-8")
    changed = text_store.ingest([corpus])
    assert (changed.updated, changed.unchanged) == (1, len(DOCS) - 1)
    hits = _top(text_store, "zebra teleported across a desert")
    assert hits[0].source_name == "crazy_ones.txt" and "zebra" in hits[0].text
    assert all("rebels" not in (h.text or "") for h in _top(text_store, "the misfits and the rebels", k=10))
    assert first.items > 0


def test_remove_and_prune_delete_everywhere(text_store: Engine, corpus: Path) -> None:
    text_store.ingest([corpus])
    assert text_store.remove([corpus / "aviation_nuts.md"]) == 1
    hits = text_store.search(text="Boots self-locking nut", k=20)
    assert all(h.source_name != "aviation_nuts.md" for h in hits)

    (corpus / "table_structure.md").unlink()
    report = text_store.ingest([corpus], prune=True)
    assert (report.removed, report.added) == (1, 1)  # the removed file still exists: ingested again
    stats = text_store.stats()
    assert stats["sources"] == 3
    assert stats["spaces"]["text"]["vectors"] == stats["items"] == stats["bm25_docs"]
    names = {h.source_name for h in text_store.search(text="OTSL HTML tables", k=20)}
    assert names <= {"word_processors.md", "crazy_ones.txt", "aviation_nuts.md"}


def test_reopen_gives_identical_results(tmp_path: Path, corpus: Path, text_encoder) -> None:
    store = tmp_path / "store"
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        eng.ingest([corpus])
        before = [[(h.item_id, round(h.score, 9)) for h in eng.search(text=q, k=5)] for q, _, _ in QUESTIONS]
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        after = [[(h.item_id, round(h.score, 9)) for h in eng.search(text=q, k=5)] for q, _, _ in QUESTIONS]
    assert before == after
    # the indexes are caches: delete them and the store rebuilds identical ones from the catalog
    shutil.rmtree(store / "indexes")
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        rebuilt = [[(h.item_id, round(h.score, 9)) for h in eng.search(text=q, k=5)] for q, _, _ in QUESTIONS]
    assert rebuilt == before


def test_filters_and_per_space_scores(text_store: Engine, corpus: Path) -> None:
    text_store.ingest([corpus])
    hits = text_store.search(text="the crazy ones who think they can change the world", k=5, where={"source": "*crazy*"})
    assert hits and all(h.source_name == "crazy_ones.txt" for h in hits)
    assert text_store.search(text="word processing", modalities=["image"]) == []
    hit = text_store.search(text="Microsoft Word 1983 MS-DOS", k=1)[0]
    assert hit.ranks.get("bm25") == 1 and hit.scores["bm25"] > 0 and -1 <= hit.scores["text"] <= 1


def test_opening_with_other_models_fails(
    tmp_path: Path, corpus: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder
) -> None:
    from retriever.errors import StoreMismatchError

    store = tmp_path / "store"
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        eng.ingest([corpus])
    with pytest.raises(StoreMismatchError, match="clip"):
        Engine.open(store, overrides={"models.clip": tiny_clip_spec}, clip=tiny_clip_encoder, text=text_encoder)


def test_a_file_saved_twice_is_one_result_that_names_its_copy(tmp_path: Path, corpus: Path, eval_dir: Path,
                                                               text_encoder) -> None:
    for name in ("crazy_ones.pdf", "crazy_ones (copy).pdf"):
        shutil.copy(eval_dir / "pdf/pypdf__crazyones.pdf", corpus / name)
    question = "a tribute to the misfits, rebels and troublemakers"
    store = tmp_path / "store"
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        assert not eng.ingest([corpus]).failed
        hits = eng.search(text=question, k=50)  # more than the candidates: every one that counts
        top = eng.search(text=question, k=2)  # the copy's place goes to the next result
    assert [h.item_id for h in top] == [h.item_id for h in hits[:2]]
    pdf_chunks = [h for h in hits if h.modality.value == "pdf" and h.kind == "chunk"]
    assert len(pdf_chunks) == 1, [h.citation for h in hits]
    (kept,) = pdf_chunks
    assert kept.item_id in [h.item_id for h in top]
    other = "crazy_ones (copy).pdf" if kept.source_name == "crazy_ones.pdf" else "crazy_ones.pdf"
    assert kept.copies == (f"{other} p.1",) and kept.to_dict()["copies"] == [f"{other} p.1"]
    assert all(h.copies == () for h in hits if h is not kept)
    with Engine.open(store, overrides={"models.clip": "none", "search.collapse_copies": False},
                     text=text_encoder) as eng:
        unfolded = eng.search(text=question, k=50)
    assert {h.source_name for h in unfolded if h.kind == "chunk" and h.modality.value == "pdf"} == {
        "crazy_ones.pdf", "crazy_ones (copy).pdf"}
    assert all(h.copies == () for h in unfolded)
    assert len(hits) == len(unfolded) - 1 < 50
