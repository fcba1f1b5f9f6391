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
