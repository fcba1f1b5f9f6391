"""Ingestor contract (every registry entry), image and text specifics, broken inputs, the registry.

Broken files are generated in tmp_path at test time; real samples come from the evaluation data (``eval_dir``).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from indexers.base import IngestContext, Ingestor
from indexers.images import ImageIngestor
from indexers.registry import DEFAULT_INGESTORS, IngestorSpec, Registry, default_registry, load_ingestor
from indexers.sniff import EXTENSION_TYPES, family
from indexers.text import TextIngestor, decode_bytes, html_to_text
from retriever.config import IngestConfig
from retriever.errors import IngestError, LimitExceeded, UnsupportedInput
from retriever.types import Item, Modality


def _save(image: Image.Image, path: Path, **kw: object) -> Path:
    image.save(path, **kw)
    return path


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- the contract, per registry entry

_TEXT_SAMPLE = "Alpha beta gamma. " * 60 + "\n\nSecond paragraph about retrieval of evidence.\n"
_EVAL_SAMPLES = {
    "pdf": "pdf/pypdf__crazyones.pdf",
    "audio": "audio/ljspeech_LJ002-0020.wav",
    "video": "video/grid_bbaf2n.mpg",
}
# formats whose header declares the length, so a 30% prefix is detectably truncated
# (a WAV also declares its data size; MPEG-PS and WebM prefixes can be valid shorter streams)
_EVAL_TRUNCATABLE = {**_EVAL_SAMPLES, "audio": "audio/jfk.flac", "video": "video/big_buck_bunny_small.mp4"}


def _sample(
    fam: str, tmp_path: Path, request: pytest.FixtureRequest, table: dict[str, str] = _EVAL_SAMPLES
) -> Path:
    """A valid file of the family, built in tmp_path or copied from the evaluation data (``eval_dir``)."""
    if fam == "image":
        return _save(_gradient(96, 64), tmp_path / "sample.jpg", quality=90)
    if fam == "text":
        path = tmp_path / "sample.txt"
        path.write_text(_TEXT_SAMPLE, encoding="utf-8")
        return path
    source = request.getfixturevalue("eval_dir") / table[fam]
    path = tmp_path / f"sample{source.suffix}"
    path.write_bytes(source.read_bytes())
    return path


def _truncated(sample: Path, fraction: float = 0.3) -> Path:
    data = sample.read_bytes()
    path = sample.with_name(f"truncated{sample.suffix}")
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    return path


def _loaded(spec: IngestorSpec) -> Ingestor:
    try:
        return load_ingestor(spec)
    except ImportError as exc:
        pytest.skip(f"{spec.family} ingestor not importable here: {exc}")


SPECS = {spec.family: spec for spec in DEFAULT_INGESTORS}


@pytest.mark.parametrize("fam", sorted(SPECS))
def test_contract_declaration(fam: str) -> None:
    ing = _loaded(SPECS[fam])
    assert isinstance(ing, Ingestor)
    assert isinstance(ing.name, str) and ing.name
    assert isinstance(ing.modality, Modality)
    assert isinstance(ing.content_types, frozenset) and ing.content_types
    assert {family(t) for t in ing.content_types} == {fam}
    for content_type in ing.content_types:
        assert ing.accepts(Path(f"x{_suffix_for(content_type)}"), content_type)
    for other in {t for t in EXTENSION_TYPES.values() if family(t) != fam}:
        assert not ing.accepts(Path("x.bin"), other), f"{ing.name} accepts {other}"


def _suffix_for(content_type: str) -> str:
    return next((s for s, t in EXTENSION_TYPES.items() if t == content_type), "")


@pytest.mark.parametrize("fam", sorted(SPECS))
def test_contract_valid_sample_yields_items_with_absolute_uri(
    fam: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, ingest_ctx
) -> None:
    ing = _loaded(SPECS[fam])
    sample = _sample(fam, tmp_path, request)
    monkeypatch.chdir(tmp_path)
    ctx = ingest_ctx()
    items = list(ing.ingest(Path(sample.name), ctx))  # a relative path in, absolute URIs out
    assert items, f"{ing.name} yielded nothing for {sample.name}"
    for item in items:
        assert isinstance(item, Item)
        assert item.modality == ing.modality
        assert item.locator.uri == str(sample.resolve())
        assert Path(item.locator.uri).is_absolute()
        json.dumps(dict(item.metadata))
    json.dumps(ctx.source_metadata)


@pytest.mark.parametrize("fam", sorted(SPECS))
def test_contract_zero_byte_file_is_an_ingest_error(fam: str, tmp_path: Path, ingest_ctx) -> None:
    ing = _loaded(SPECS[fam])
    suffix = {"image": ".jpg", "text": ".txt", "pdf": ".pdf", "audio": ".wav", "video": ".mp4"}[fam]
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(IngestError, match="empty"):
        list(ing.ingest(empty, ingest_ctx()))


@pytest.mark.parametrize("fam", sorted(SPECS))
def test_contract_truncated_sample_is_an_ingest_error(
    fam: str, tmp_path: Path, request: pytest.FixtureRequest, ingest_ctx
) -> None:
    ing = _loaded(SPECS[fam])
    truncated = _truncated(_sample(fam, tmp_path, request, _EVAL_TRUNCATABLE))
    if fam == "text":  # a prefix of a text file is a text file: it must ingest, not crash
        items = list(ing.ingest(truncated, ingest_ctx()))
        assert items and all(i.text for i in items)
        return
    with pytest.raises(IngestError) as info:
        list(ing.ingest(truncated, ingest_ctx()))
    assert str(info.value).strip(), "the reason must not be empty"


# ---------------------------------------------------------------- COCO photos


def test_all_coco_photos_ingest(coco_photos: list[Path], ingest_ctx) -> None:
    files = coco_photos
    assert len(files) == 51
    registry = default_registry()
    ctx = ingest_ctx()
    failures = []
    for path in files:
        try:
            ingestor, content_type = registry.resolve(path)
            items = list(ingestor.ingest(path, ctx))
        except IngestError as exc:
            failures.append((path.name, str(exc)))
            continue
        assert content_type == "image/jpeg" and ingestor.name == "image"
        assert len(items) == 1
        item = items[0]
        with Image.open(path) as header:
            size = header.size
        assert item.kind == "photo" and item.modality == Modality.IMAGE
        assert item.image.mode == "RGB" and item.image.size == size  # COCO is under preview_px
        assert (item.metadata["width"], item.metadata["height"]) == size
        assert item.metadata["format"] == "JPEG"
        assert 0 < np.asarray(item.image).std()  # real pixels, not a blank canvas
    assert failures == []


def test_coco_downscale_draft_matches_full_decode(coco_photos: list[Path], ingest_ctx) -> None:
    path = coco_photos[0]
    ctx = ingest_ctx(preview_px=200)
    fast = next(ImageIngestor().ingest(path, ctx))
    full = next(ImageIngestor(use_draft=False).ingest(path, ctx))
    assert max(fast.image.size) == 200 and max(full.image.size) == 200
    assert abs(fast.image.size[1] - full.image.size[1]) <= 1
    assert (fast.metadata["width"], fast.metadata["height"]) == Image.open(path).size
    a = np.asarray(fast.image.resize(full.image.size), dtype=np.float32)
    b = np.asarray(full.image, dtype=np.float32)
    assert np.abs(a - b).mean() < 6.0


def test_large_jpeg_is_decoded_small_then_bounded(tmp_path: Path, ingest_ctx) -> None:
    path = _save(_gradient(3000, 2000), tmp_path / "big.jpg", quality=85)
    item = next(ImageIngestor().ingest(path, ingest_ctx(preview_px=512)))
    assert item.image.size == (512, 341)
    assert (item.metadata["width"], item.metadata["height"]) == (3000, 2000)
    # draft mode really shrinks the decode: the JPEG loader is asked for >= 512 on the long side
    with Image.open(path) as im:
        im.draft("RGB", (512, 342))
        assert im.size == (750, 500)


# ---------------------------------------------------------------- broken inputs, through the registry


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _broken_folder(root: Path) -> dict[str, tuple[type[Exception], tuple[str, ...]]]:
    """Write the broken files; return name -> (expected exception, phrases of its reason)."""
    good = io.BytesIO()
    _gradient(320, 240).save(good, "JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not a picture, just some words\n")
    (root / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    (root / "corrupt.gif").write_bytes(b"GIF89a\x28\x00\x1e\x00\xf7\x00\x00" + bytes(range(256)) * 3)
    (root / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    (root / "archive.xyz").write_bytes(b"PK\x03\x04" + bytes(range(256)))
    return {
        "truncated.jpg": (IngestError, ("truncated or corrupt JPEG", "truncated")),
        "empty.jpg": (IngestError, ("empty file (0 bytes)",)),
        "text.png": (IngestError, ("content is text/plain but the extension .png says image/png",)),
        "bomb.png": (LimitExceeded, ("100000x100000", "10000000000 pixels", "178956970")),
        "corrupt.gif": (IngestError, ("GIF",)),
        "noise.jpg": (IngestError, ("matches no image format", ".jpg")),
        "archive.xyz": (UnsupportedInput, ("unsupported file type", ".xyz")),
    }


def _resolve_and_ingest(registry: Registry, path: Path, ctx: IngestContext) -> list[Item]:
    ingestor, _ = registry.resolve(path)
    return list(ingestor.ingest(path, ctx))


def test_broken_files_fail_with_clear_reasons(tmp_path: Path, ingest_ctx) -> None:
    expected = _broken_folder(tmp_path)
    _save(_gradient(64, 48), tmp_path / "good.png")
    registry = default_registry()
    ctx = ingest_ctx()
    seen: dict[str, Exception] = {}
    ok = []
    for path in sorted(tmp_path.iterdir()):
        try:
            ok.append((path.name, _resolve_and_ingest(registry, path, ctx)))
        except IngestError as exc:
            seen[path.name] = exc
    assert [name for name, _ in ok] == ["good.png"] and len(ok[0][1]) == 1
    assert set(seen) == set(expected)
    for name, (kind, phrases) in expected.items():
        assert isinstance(seen[name], kind), f"{name}: {type(seen[name]).__name__}: {seen[name]}"
        for phrase in phrases:
            assert phrase in str(seen[name]), f"{name}: {phrase!r} not in {str(seen[name])!r}"
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's global limit left untouched


def test_pixel_limit_is_read_from_config(tmp_path: Path, ingest_ctx) -> None:
    path = _save(_gradient(40, 30), tmp_path / "small.png")
    with pytest.raises(LimitExceeded, match=r"40x30 = 1200 pixels, over the limit of 1000"):
        list(ImageIngestor().ingest(path, ingest_ctx(max_image_pixels=1000)))
    assert len(list(ImageIngestor().ingest(path, ingest_ctx(max_image_pixels=1200)))) == 1


def test_truncated_png_and_file_size_limit(tmp_path: Path, ingest_ctx) -> None:
    png = _save(_gradient(200, 150), tmp_path / "g.png")
    cut = _truncated(png, 0.5)
    with pytest.raises(IngestError, match="truncated or corrupt PNG"):
        list(ImageIngestor().ingest(cut, ingest_ctx()))
    with pytest.raises(LimitExceeded, match="max_file_bytes"):
        list(ImageIngestor().ingest(png, ingest_ctx(max_file_bytes=100)))


# ---------------------------------------------------------------- orientation, modes, metadata


def test_exif_orientation_and_camera_metadata(tmp_path: Path, ingest_ctx) -> None:
    img = Image.new("RGB", (60, 40), (255, 0, 0))
    img.paste((0, 0, 255), (30, 0, 60, 40))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2021:05:01 12:34:56"
    path = _save(img, tmp_path / "rotated.jpg", exif=exif, quality=95)
    item = next(ImageIngestor().ingest(path, ingest_ctx()))
    assert item.image.size == (40, 60)
    top, bottom = item.image.getpixel((20, 5)), item.image.getpixel((20, 55))
    assert top[0] > 200 and top[2] < 60, top  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    meta = item.metadata
    assert (meta["width"], meta["height"], meta["orientation"]) == (40, 60, 6)
    assert meta["camera_make"] == "Canon" and meta["camera_model"] == "Canon EOS 5D"
    assert meta["datetime"] == "2021:05:01 12:34:56"


def _modes(tmp_path: Path) -> Iterator[tuple[str, Path, tuple[int, int, int]]]:
    """(label, file, expected RGB at pixel (2, 2))."""
    frames = [Image.new("P", (40, 30), i) for i in range(3)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    yield "gif first frame", tmp_path / "anim.gif", (255, 0, 0)
    wide = np.full((30, 40), 40000, dtype=np.uint16)
    yield "16-bit png", _save(Image.fromarray(wide), tmp_path / "g16.png"), (156, 156, 156)
    rgba = Image.new("RGBA", (40, 30), (0, 0, 255, 0))
    yield "rgba png", _save(rgba, tmp_path / "rgba.png"), (255, 255, 255)
    half = Image.new("RGBA", (40, 30), (0, 0, 0, 128))
    yield "half alpha png", _save(half, tmp_path / "half.png"), (127, 127, 127)
    pal = Image.new("P", (40, 30), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    yield "palette png with transparency", _save(pal, tmp_path / "pal.png", transparency=1), (255, 255, 255)
    yield (
        "cmyk jpeg",
        _save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), tmp_path / "cmyk.jpg"),
        (255, 0, 0),
    )
    yield "grey jpeg", _save(Image.new("L", (40, 30), 90), tmp_path / "grey.jpg"), (90, 90, 90)
    yield "tiff", _save(Image.new("RGB", (40, 30), (10, 120, 200)), tmp_path / "x.tiff"), (10, 120, 200)
    yield (
        "lzw tiff",
        _save(Image.new("RGB", (40, 30), (10, 120, 200)), tmp_path / "l.tif", compression="tiff_lzw"),
        (10, 120, 200),
    )
    yield "bmp", _save(Image.new("RGB", (40, 30), (10, 120, 200)), tmp_path / "x.bmp"), (10, 120, 200)
    yield (
        "webp",
        _save(Image.new("RGB", (40, 30), (10, 120, 200)), tmp_path / "x.webp", quality=95),
        (10, 120, 200),
    )
    yield "1-bit png", _save(Image.new("1", (40, 30), 1), tmp_path / "bw.png"), (255, 255, 255)


def test_every_mode_becomes_rgb(tmp_path: Path, ingest_ctx) -> None:
    registry = default_registry()
    for label, path, rgb in _modes(tmp_path):
        items = _resolve_and_ingest(registry, path, ingest_ctx())
        assert len(items) == 1, label
        image = items[0].image
        assert image.mode == "RGB" and image.size == (40, 30), label
        got = image.getpixel((2, 2))
        assert max(abs(a - b) for a, b in zip(got, rgb, strict=True)) <= 6, f"{label}: {got} != {rgb}"


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path, ingest_ctx) -> None:
    ramp = (np.arange(40, dtype=np.uint16) * 1600)[None, :].repeat(30, 0)
    item = next(ImageIngestor().ingest(_save(Image.fromarray(ramp), tmp_path / "ramp.png"), ingest_ctx()))
    row = np.asarray(item.image)[0, :, 0].astype(int)
    assert row[0] == 0 and 240 <= row[-1] <= 245  # 62400 / 257
    assert np.all(np.diff(row) >= 0) and len(set(row.tolist())) > 30


def test_large_png_is_bounded(tmp_path: Path, ingest_ctx) -> None:
    path = _save(_gradient(2048, 1024), tmp_path / "wide.png")
    item = next(ImageIngestor().ingest(path, ingest_ctx(preview_px=1024)))
    assert item.image.size == (1024, 512)
    assert (item.metadata["width"], item.metadata["height"]) == (2048, 1024)


# ---------------------------------------------------------------- text, markdown, html


@pytest.fixture()
def text_items(ingest_ctx) -> Callable[..., tuple[list[Item], IngestContext]]:
    """``text_items(path, **ingest_settings)``: the text ingestor's items for a file, and its context."""

    def ingest(path: Path, **cfg: object) -> tuple[list[Item], IngestContext]:
        ctx = ingest_ctx(**cfg)
        return list(TextIngestor().ingest(path, ctx)), ctx

    return ingest


def _assert_chunks_slice_back(items: list[Item], text: str, max_chars: int) -> None:
    assert [i.metadata["chunk"] for i in items] == list(range(len(items)))
    for item in items:
        a, b = item.locator.char_start, item.locator.char_end
        assert item.text == text[a:b] and 0 < b - a <= max_chars
    covered = np.zeros(len(text), dtype=bool)
    for item in items:
        covered[item.locator.char_start : item.locator.char_end] = True
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))


def test_plain_text_chunks_slice_back(tmp_path: Path, text_items) -> None:
    body = "\r\n\r\n".join(f"Paragraph {i}. " + "Evidence sentence number %d. " % i * 12 for i in range(12))
    path = tmp_path / "notes.txt"
    path.write_bytes(body.encode("utf-8"))
    items, ctx = text_items(path, chunk_chars=400, chunk_overlap=60)
    text = body.replace("\r\n", "\n")
    assert len(items) > 5
    _assert_chunks_slice_back(items, text, 400)
    assert all(i.locator.uri == str(path.resolve()) and i.kind == "chunk" for i in items)
    assert ctx.source_metadata["encoding"] == "utf-8" and ctx.source_metadata["chars"] == len(text)


def test_real_markdown_and_text(tmp_path: Path, eval_dir: Path, text_items) -> None:
    root = eval_dir / "pdf" / "groundtruth"
    md = root / "docling__multi_page.docling.md"
    items, ctx = text_items(md)
    assert ctx.source_metadata["title"] == "The Evolution of the Word Processor"
    assert all(i.metadata["title"] == "The Evolution of the Word Processor" for i in items)
    _assert_chunks_slice_back(items, md.read_text(encoding="utf-8").replace("\r\n", "\n"), IngestConfig().chunk_chars)
    txt = root / "pypdf__crazyones.txt"
    items, _ = text_items(txt)
    assert len(items) == 1 and "crazy" in items[0].text.lower()


def test_html_visible_text_only(tmp_path: Path, text_items) -> None:
    html = """<!DOCTYPE html><html><head><title>  Field   Notes </title>
    <meta charset="utf-8"><style>.x { color: red }</style><script>var SECRET_TOKEN = 1;</script></head>
    <body><h1>Heading</h1><p>First <b>bold</b> paragraph.</p><!-- hidden comment -->
    <noscript>NOSCRIPT_TEXT</noscript><template>TEMPLATE_TEXT</template><svg><text>SVG_TEXT</text></svg>
    <ul><li>one</li><li>two</li></ul><table><tr><td>cell a</td><td>cell b</td></tr></table>
    <script type="application/ld+json">{"JSONLD": true}</script><p>Last.</p></body></html>"""
    path = tmp_path / "page.html"
    path.write_text(html, encoding="utf-8")
    items, ctx = text_items(path)
    text, title = html_to_text(html)
    assert title == "Field Notes" and ctx.source_metadata["title"] == "Field Notes"
    joined = "\n".join(i.text for i in items)
    for hidden in (
        "SECRET_TOKEN",
        "color",
        "hidden comment",
        "NOSCRIPT_TEXT",
        "TEMPLATE_TEXT",
        "SVG_TEXT",
        "JSONLD",
    ):
        assert hidden not in joined
    assert text == "Heading\n\nFirst bold paragraph.\n\none\ntwo\n\ncell a cell b\n\nLast."
    _assert_chunks_slice_back(items, text, IngestConfig().chunk_chars)


def test_cp1252_and_bom_files_decode(tmp_path: Path, text_items) -> None:
    sentence = "Caf\u00e9 na\u00efve \u2013 \u201cquoted\u201d \u20ac100, d\u00e9j\u00e0 vu, se\u00f1or."
    cp = tmp_path / "latin.txt"
    cp.write_bytes(sentence.encode("cp1252"))
    items, ctx = text_items(cp)
    assert items[0].text == sentence and ctx.source_metadata["encoding"] == "cp1252"
    for name, data in (
        ("bom8.txt", b"\xef\xbb\xbf" + sentence.encode("utf-8")),
        ("bom16.txt", sentence.encode("utf-16")),  # BOM + UTF-16: sniffed as binary, read by extension
    ):
        (tmp_path / name).write_bytes(data)
        assert text_items(tmp_path / name)[0][0].text == sentence, name
    russian = "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430? "
    russian += "\u042d\u0442\u043e \u0442\u0435\u043a\u0441\u0442."
    assert decode_bytes(russian.encode("cp1251")) == (russian, "cp1251")


def test_blank_binary_and_oversized_text(tmp_path: Path, text_items) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n\t  \n")
    items, ctx = text_items(blank)
    assert items == [] and ctx.notes
    only_script = tmp_path / "s.html"
    only_script.write_text("<html><script>x=1</script></html>")
    assert text_items(only_script)[0] == []
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(IngestError, match="binary"):
        text_items(binary)
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)
    with pytest.raises(LimitExceeded, match="500 bytes, over the limit of 100"):
        text_items(big, max_file_bytes=100)


# ---------------------------------------------------------------- the registry


class _Fake:
    def __init__(self, name: str, modality: Modality, types: set[str]) -> None:
        self.name, self.modality, self.content_types = name, modality, frozenset(types)

    def accepts(self, path: Path, content_type: str) -> bool:
        return content_type in self.content_types

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        return iter(())


def test_default_registry_families() -> None:
    registry = default_registry()
    status = {s.family: s for s in registry.families()}
    assert set(status) >= {"image", "text", "pdf", "audio", "video"}
    assert status["image"].available and status["image"].ingestor == "image"
    assert status["text"].available and status["text"].ingestor == "text"
    for fam, reason in registry.unavailable().items():
        assert not status[fam].available and status[fam].reason == reason
        assert "pip install 'mmrag[" in reason


def test_missing_module_or_dependency_becomes_an_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mmrag_fake_pdf_ingestor.py").write_text("import mmrag_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = (
        IngestorSpec("image", "indexers.images:ImageIngestor"),
        IngestorSpec("pdf", "mmrag_fake_pdf_ingestor:PdfIngestor", "pdf"),
        IngestorSpec("audio", "indexers.no_such_module:AudioIngestor", "media"),
    )
    registry = default_registry(specs)
    sys.modules.pop("mmrag_fake_pdf_ingestor", None)
    reasons = registry.unavailable()
    assert reasons["pdf"].startswith("PDF support needs the 'pdf' extra: pip install 'mmrag[pdf]'")
    assert "mmrag_no_such_dependency" in reasons["pdf"]
    assert reasons["audio"].startswith("Audio support needs the 'media' extra: pip install 'mmrag[media]'")
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(UnsupportedInput, match=r"application/pdf: PDF support needs the 'pdf' extra"):
        registry.resolve(pdf)


def test_resolve_rules(tmp_path: Path) -> None:
    audio = _Fake("audio", Modality.AUDIO, {"audio/mp4", "audio/wav", "audio/ogg"})
    video = _Fake("video", Modality.VIDEO, {"video/mp4", "video/ogg"})
    registry = Registry([ImageIngestor(), TextIngestor(), audio, video])
    ftyp = struct.pack(">I", 24) + b"ftypmp42" + bytes(12) + bytes(64)
    (tmp_path / "voice.m4a").write_bytes(ftyp)  # an mp42 brand is common in .m4a files
    assert registry.resolve(tmp_path / "voice.m4a") == (audio, "audio/mp4")
    (tmp_path / "clip.mp4").write_bytes(ftyp)
    assert registry.resolve(tmp_path / "clip.mp4") == (video, "video/mp4")
    _save(Image.new("RGB", (8, 8)), tmp_path / "actually_png.jpg", format="PNG")
    assert registry.resolve(tmp_path / "actually_png.jpg")[1] == "image/png"  # content wins in a family
    (tmp_path / "README").write_text("no extension, plain words\n")
    assert registry.resolve(tmp_path / "README")[1] == "text/plain"
    (tmp_path / "song.wav").write_text("lyrics only")
    with pytest.raises(IngestError, match=r"content is text/plain but the extension \.wav says audio/wav"):
        registry.resolve(tmp_path / "song.wav")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n")
    with pytest.raises(UnsupportedInput, match="no pdf ingestor is registered|no ingestor handles"):
        registry.resolve(tmp_path / "doc.pdf")
    with pytest.raises(UnsupportedInput, match="not a regular file"):
        registry.resolve(tmp_path)
    with pytest.raises(IngestError, match="file not found"):
        registry.resolve(tmp_path / "missing.jpg")


def test_is_candidate(tmp_path: Path) -> None:
    registry = default_registry()
    names = {
        "photo.JPG": b"\xff\xd8\xff\xe0",
        "report.pdf": b"%PDF-1.4",
        "talk.mp3": b"ID3",
        "notes.md": b"# x",
        "script.py": b"print('hi')\n",
        "data.json": b"{}",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "archive.zip": b"PK\x03\x04",
        "README": b"plain text without an extension\n",
        "blob": bytes(range(256)),
        "picture": _png_header_only(4, 4),
    }
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
    chosen = {name for name in names if registry.is_candidate(tmp_path / name)}
    assert chosen == {"photo.JPG", "report.pdf", "talk.mp3", "notes.md", "README", "picture"}


def test_engine_records_each_broken_file_with_its_reason(tmp_path: Path, open_engine) -> None:
    src = tmp_path / "in"
    src.mkdir()
    expected = _broken_folder(src)
    expected.pop("archive.xyz")  # unknown extension: skipped by discovery, not a failure
    (src / "notes.txt").write_text("The cat sat on the mat next to the retrieval engine.\n")
    (src / "tool.py").write_text("print('not a document')\n")
    with open_engine(tmp_path / "store") as eng:
        report = eng.ingest([src])
    failed = {Path(uri).name: reason for uri, reason in report.failed}
    assert set(failed) == set(expected)
    for name, (_, phrases) in expected.items():
        assert all(p in failed[name] for p in phrases), f"{name}: {failed[name]}"
    assert report.added >= 1
