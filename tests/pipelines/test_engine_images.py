"""Core engine on images: COCO photos, broken files, cross-modal search with the tiny CLIP."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from pipelines.engine import Engine
from pipelines.synthetic import generate


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A well-formed PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def test_coco_photos_ingest_without_failures(clip_store: Engine, eval_dir: Path) -> None:
    coco = eval_dir / "images" / "coco"
    report = clip_store.ingest([coco])
    n = len(list(coco.glob("*.jpg")))
    assert n == 51 and report.added == n and report.failed == [] and report.items == n
    stats = clip_store.stats()
    assert stats["spaces"]["clip"]["vectors"] == n and stats["items_by_modality"] == {"image": n}
    hit = clip_store.search(image=next(coco.glob("*.jpg")), k=1)[0]
    assert hit.kind == "photo" and Path(hit.thumbnail_path).is_file() and hit.image_path == hit.source_uri
    with Image.open(hit.thumbnail_path) as thumb:
        assert max(thumb.size) <= 256


def test_broken_files_fail_one_by_one_and_the_rest_is_ingested(clip_store: Engine, eval_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:2]
    for p in good:
        shutil.copy(p, folder / p.name)
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is text, not a picture\n" * 20)
    _png_header_only(folder / "huge.png", 100_000, 100_000)
    report = clip_store.ingest([folder])
    assert report.added == 2
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"truncated.jpg", "empty.jpg", "notes.png", "huge.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "text/plain" in reasons["notes.png"] and ".png" in reasons["notes.png"]
    assert "100000" in reasons["huge.png"] or "pixels" in reasons["huge.png"]
    assert "truncat" in reasons["truncated.jpg"].lower() or "corrupt" in reasons["truncated.jpg"].lower()
    failed = {Path(f["uri"]).name for f in clip_store.stats()["failed"]}
    assert failed == set(reasons)
    # a failed file that is fixed is ingested on the next run
    shutil.copy(good[0], folder / "truncated.jpg")
    again = clip_store.ingest([folder])
    assert again.added == 1 and len(again.failed) == 3


@pytest.fixture()
def shapes(tmp_path: Path) -> list:
    folder = tmp_path / "shapes"
    folder.mkdir()
    samples = generate(30, seed=4242, size=128, balanced=True)  # held out: training uses other seeds
    for i, s in enumerate(samples):
        s.image.save(folder / f"img{i:02d}.png")
    return [(folder / f"img{i:02d}.png", s) for i, s in enumerate(samples)]


def test_text_to_image_search_finds_the_described_shape(clip_store: Engine, shapes: list) -> None:
    report = clip_store.ingest([shapes[0][0].parent])
    assert report.added == len(shapes)
    right = 0
    for path, sample in shapes:
        top = clip_store.search(text=sample.label, k=1)[0]
        shown = next(s for p, s in shapes if str(p) == top.source_uri)
        right += (shown.colour, shown.shape) == (sample.colour, sample.shape)
    rate = right / len(shapes)
    assert rate >= 0.6, f"text->image top-1 rate {rate:.2f} (chance is about {1 / len(shapes):.2f})"


def test_image_to_image_finds_near_duplicates(clip_store: Engine, shapes: list, tmp_path: Path) -> None:
    clip_store.ingest([shapes[0][0].parent])
    found = 0
    for path, _ in shapes[:10]:
        with Image.open(path) as img:
            variant = ImageEnhance.Brightness(img.convert("RGB")).enhance(1.15).rotate(3, fillcolor=(128, 128, 128))
        top = clip_store.search(image=variant, k=1)[0]
        found += top.source_uri == str(path)
    assert found >= 8


def test_a_photo_saved_twice_is_one_result_and_its_pdf_pages_too(clip_store: Engine, eval_dir: Path,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "library"
    (folder / "backup").mkdir(parents=True)
    photos = sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:6]
    for p in photos:
        shutil.copy(p, folder / p.name)
    shutil.copy(photos[0], folder / "backup" / photos[0].name)
    for name in ("report.pdf", "backup/report.pdf"):
        shutil.copy(eval_dir / "pdf" / "docling__multi_page.pdf", folder / name)
    assert not clip_store.ingest([folder]).failed
    hits = clip_store.search(image=photos[0], k=5, modalities=["image"])
    assert Path(hits[0].source_uri).name == photos[0].name and len(hits) == 5
    assert [Path(h.source_uri).name for h in hits].count(photos[0].name) == 1
    other = "backup/" if "backup" not in hits[0].source_uri else ""
    assert [c.split("library/")[-1] for c in hits[0].copies] == [f"{other}{photos[0].name}"]
    pages = clip_store.search(text="word processing", k=50, modalities=["pdf"], where={"kind": "page"})
    assert len(pages) == 5 and all(len(h.copies) == 1 and "report.pdf" in h.copies[0] for h in pages)
    assert {h.locator.page for h in pages} == {1, 2, 3, 4, 5}


SHAPE_WORDS = ("circle", "square", "triangle", "star", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple")


@pytest.fixture()
def mixed_store(tiny_clip_spec: str, tiny_clip_encoder, text_encoder, shapes: list, tmp_path: Path):
    """30 shape images beside 600 one-sentence text chunks that talk about the same shapes."""
    eng = Engine.open(tmp_path / "mixed", overrides={"models.clip": tiny_clip_spec, "ingest.chunk_chars": 100,
                                                     "ingest.chunk_overlap": 0, "models.clip_texts": True},
                      clip=tiny_clip_encoder, text=text_encoder)
    notes = tmp_path / "notes"
    notes.mkdir()
    for f in range(20):
        lines = [f"The {COLOURS[(f + i) % 5]} {SHAPE_WORDS[(f * 3 + i) % 5]} number {f * 30 + i} was drawn on the "
                 f"page and described at length." for i in range(30)]
        (notes / f"note{f:02d}.txt").write_text("\n\n".join(lines) + "\n")
    eng.ingest([shapes[0][0].parent])
    report = eng.ingest([notes])
    assert report.items >= 600 and not report.failed
    yield eng
    eng.close()


def test_text_chunks_do_not_hide_images_from_the_clip_run(mixed_store: Engine, shapes: list) -> None:
    """The CLIP text run reaches every image however much text the store holds (own index)."""
    stats = mixed_store.stats()["spaces"]
    assert stats["clip"]["vectors"] == len(shapes) and stats["clip_texts"]["vectors"] >= 600
    from retriever.search import Query

    runs = mixed_store.retriever().candidates(Query(text="a red circle", k=10), depth=100)
    images = {str(p) for p, _ in shapes}
    recs = mixed_store.store.catalog.items(runs["clip_text"].ids)
    assert len(recs) == len(shapes) and {r.source_uri for r in recs.values()} == images
    # an image query reaches both CLIP spaces: its own near-duplicate first, text chunks too
    with Image.open(shapes[0][0]) as img:
        hits = mixed_store.search(image=img.copy(), k=40, runs=["clip_image"])
    assert hits[0].source_uri == str(shapes[0][0])
    assert {h.modality.value for h in hits} == {"image", "text"}


def test_fused_list_brings_images_in_beside_text(
    mixed_store: Engine, shapes: list, tiny_clip_encoder, text_encoder
) -> None:
    """One list across modalities: a shape query gets the images and the chunks that talk about it."""
    right = 0
    for _, sample in shapes[:10]:
        kinds = [h.modality.value for h in mixed_store.search(text=sample.label, k=10)]
        assert "image" in kinds and kinds.count("text") >= 5, kinds
        best_image = next(h for h in mixed_store.search(text=sample.label, k=10) if h.modality.value == "image")
        shown = next(s for p, s in shapes if str(p) == best_image.source_uri)
        right += (shown.colour, shown.shape) == (sample.colour, sample.shape)
    assert right >= 6
    # plain RRF (balance 0) buries them under the chunks two runs agree on
    overrides = {"models.clip": mixed_store.config.models.clip, "search.modality_balance": 0.0}
    with Engine.open(mixed_store.root, overrides=overrides, clip=tiny_clip_encoder, text=text_encoder) as plain_rrf:
        plain = [[h.modality.value for h in plain_rrf.search(text=s.label, k=10)] for _, s in shapes[:10]]
    assert sum("image" in kinds for kinds in plain) <= 2


def test_version_1_store_is_upgraded_in_place(mixed_store: Engine, shapes: list, tiny_clip_encoder,
                                               text_encoder) -> None:
    """A version-1 store (text items' CLIP vectors in 'clip') opens upgraded, nothing re-encoded."""
    import json

    from sqlalchemy import update

    from retriever.catalog.models import VectorRow

    root = mixed_store.store.root
    before = [(h.item_id, round(h.score, 6)) for h in mixed_store.search(text="a green star", k=10)]
    counts = mixed_store.stats()["spaces"]
    with mixed_store.store.catalog.transaction() as s:  # back to the version-1 layout
        s.execute(update(VectorRow).where(VectorRow.space == "clip_texts").values(space="clip"))
    mixed_store.store.close()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["spaces"]["clip_texts"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "indexes" / "clip_texts.json").unlink()
    eng = Engine.open(root, overrides={"models.clip": mixed_store.config.models.clip},
                      clip=tiny_clip_encoder, text=text_encoder)
    try:
        assert json.loads((root / "manifest.json").read_text())["format_version"] == 2
        assert eng.stats()["spaces"] == counts
        assert [(h.item_id, round(h.score, 6)) for h in eng.search(text="a green star", k=10)] == before
        assert eng.verify().clean
    finally:
        eng.close()


def test_store_without_clip_text_vectors(
    tiny_clip_spec: str, tiny_clip_encoder, text_encoder, shapes: list, tmp_path: Path
) -> None:
    """models.clip_texts=false: text items get no CLIP vectors; text->image still works; the setting is fixed."""
    from retriever.errors import StoreMismatchError

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("A red circle was drawn on the first page.\n\nA blue star on the second.\n")
    overrides = {"models.clip": tiny_clip_spec, "models.clip_texts": False}
    models = {"clip": tiny_clip_encoder, "text": text_encoder}
    with Engine.open(tmp_path / "s", overrides=overrides, **models) as eng:
        eng.ingest([shapes[0][0].parent, notes])
        spaces = eng.stats()["spaces"]
        assert "clip_texts" not in spaces and spaces["clip"]["vectors"] == len(shapes)
        hits = eng.search(text="a red circle", k=40)
        assert {h.modality.value for h in hits} == {"image", "text"}
        with Image.open(shapes[0][0]) as img:
            assert {h.modality.value for h in eng.search(image=img.copy(), k=40)} == {"image"}
        assert eng.verify().clean
    with Engine.open(tmp_path / "s", overrides={"models.clip": tiny_clip_spec}, **models) as eng:  # the store's own setting
        assert eng.config.models.clip_texts is False and eng.search(text="a red circle")
    with pytest.raises(StoreMismatchError, match=r"clip_texts.*models.clip_texts was false"):
        Engine.open(tmp_path / "s", overrides={"models.clip": tiny_clip_spec, "models.clip_texts": True}, **models)
