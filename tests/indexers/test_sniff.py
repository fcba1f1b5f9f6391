"""Content sniffing: every signature, text vs binary, HTML detection, real files."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from indexers.sniff import EXTENSION_TYPES, HEAD_BYTES, expected_type, family, sniff, sniff_bytes


def _pil_bytes(fmt: str, mode: str = "RGB", **save: object) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (16, 12), (10, 200, 30) if mode == "RGB" else 0).save(buf, fmt, **save)
    return buf.getvalue()


def _riff(kind: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 1000) + kind + b"fmt " + bytes(32)


def _ftyp(brand: bytes) -> bytes:
    return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x02\x00" + brand + b"isom" + bytes(64)


def _ebml(doctype: bytes) -> bytes:
    # EBML header: magic, size, then DocType element (0x4282) with its length
    return (
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82" + bytes([0x80 | len(doctype)]) + doctype + bytes(32)
    )


SIGNATURES = {
    "jpeg": (_pil_bytes("JPEG"), "image/jpeg"),
    "png": (_pil_bytes("PNG"), "image/png"),
    "gif87": (b"GIF87a" + bytes(20), "image/gif"),
    "gif": (_pil_bytes("GIF", "P"), "image/gif"),
    "webp": (_pil_bytes("WEBP"), "image/webp"),
    "bmp": (_pil_bytes("BMP"), "image/bmp"),
    "tiff-le": (_pil_bytes("TIFF"), "image/tiff"),
    "tiff-be": (b"MM\x00*" + bytes(40), "image/tiff"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf"),
    "pdf-after-junk": (b"\x00" * 200 + b"%PDF-1.4\n", "application/pdf"),
    "wav": (_riff(b"WAVE"), "audio/wav"),
    "avi": (_riff(b"AVI "), "video/x-msvideo"),
    "flac": (b"fLaC\x00\x00\x00\x22" + bytes(40), "audio/flac"),
    "mp3-id3": (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(40), "audio/mpeg"),
    "mp3-frame": (b"\xff\xfb\x90\x64" + bytes(40), "audio/mpeg"),
    "aac-adts": (b"\xff\xf1\x50\x80" + bytes(40), "audio/aac"),
    "ogg-vorbis": (b"OggS\x00\x02" + bytes(22) + b"\x01vorbis" + bytes(30), "audio/ogg"),
    "ogg-theora": (b"OggS\x00\x02" + bytes(22) + b"\x80theora" + bytes(30), "video/ogg"),
    "mp4": (_ftyp(b"isom"), "video/mp4"),
    "mp4-mp42": (_ftyp(b"mp42"), "video/mp4"),
    "m4a": (_ftyp(b"M4A "), "audio/mp4"),
    "mov": (_ftyp(b"qt  "), "video/quicktime"),
    "webm": (_ebml(b"webm"), "video/webm"),
    "mkv": (_ebml(b"matroska"), "video/x-matroska"),
    "mpg-ps": (b"\x00\x00\x01\xba\x44\x00\x04\x00" + bytes(40), "video/mpeg"),
    "mpg-es": (b"\x00\x00\x01\xb3\x14\x00\xf0" + bytes(40), "video/mpeg"),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name: str, tmp_path: Path) -> None:
    data, expected = SIGNATURES[name]
    assert sniff_bytes(data) == expected
    # the same through a file, under a misleading name: content decides, not the extension
    path = tmp_path / "blob.txt"
    path.write_bytes(data)
    assert sniff(path) == expected


def test_empty_and_binary_are_unrecognised(tmp_path: Path) -> None:
    assert sniff_bytes(b"") is None
    assert sniff_bytes(bytes(range(256)) * 4) is None  # NULs
    assert sniff_bytes(b"\x01\x02\x03\x04\x05\x06\x07\x08" * 64) is None  # control bytes, no NUL
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert sniff(empty) is None


def test_text_detection() -> None:
    assert sniff_bytes(b"Hello, world.\nSecond line.\n") == "text/plain"
    assert sniff_bytes("Caf\u00e9 na\u00efve \u2013 \u20ac5".encode("utf-8")) == "text/plain"
    assert sniff_bytes("Caf\u00e9 na\u00efve \u2013 \u20ac5 ".encode("cp1252") * 10) == "text/plain"
    # a multi-byte character cut by the head boundary is still text
    head = ("x" * (HEAD_BYTES - 1) + "\u00e9").encode("utf-8")[:HEAD_BYTES]
    assert head.endswith(b"\xc3")
    assert sniff_bytes(head) == "text/plain"
    assert sniff_bytes(b"# Title\n\nbody", ".md") == "text/markdown"
    assert sniff_bytes(b"# Title\n\nbody", ".markdown") == "text/markdown"
    assert sniff_bytes(b"# Title\n\nbody", ".txt") == "text/plain"


@pytest.mark.parametrize(
    "data,suffix,expected",
    [
        (b"<!DOCTYPE html><html><body>x</body></html>", "", "text/html"),
        (b"\n  <html lang='en'><p>x</p></html>", ".txt", "text/html"),
        (b"\xef\xbb\xbf<!doctype html>\n<title>t</title>", "", "text/html"),
        (b"<div>fragment</div>", ".html", "text/html"),
        (b"<p>fragment</p>", ".htm", "text/html"),
        (b"<p>a paragraph tag in a text file</p>", ".txt", "text/plain"),
        (b"plain words, no markup", ".html", "text/plain"),
    ],
)
def test_html_detection(data: bytes, suffix: str, expected: str) -> None:
    assert sniff_bytes(data, suffix) == expected


def test_extension_types_and_families() -> None:
    assert expected_type(Path("a/B.JPG")) == "image/jpeg"
    assert expected_type(Path("talk.m4a")) == "audio/mp4"
    assert expected_type(Path("clip.webm")) == "video/webm"
    assert expected_type(Path("notes")) is None
    assert expected_type(Path("script.py")) is None
    assert family("application/pdf") == "pdf"
    assert family("image/tiff") == "image"
    assert family("text/html") == "text"
    assert family("audio/ogg") == "audio"
    assert family("video/mpeg") == "video"
    assert family("application/zip") is None
    assert family(None) is None
    assert {family(t) for t in EXTENSION_TYPES.values()} == {"image", "pdf", "text", "audio", "video"}


@pytest.mark.parametrize(
    "pattern,expected",
    [
        ("images/coco/*.jpg", "image/jpeg"),
        ("pdf/*.pdf", "application/pdf"),
        ("audio/*.wav", "audio/wav"),
        ("audio/*.flac", "audio/flac"),
        ("video/*.mp4", "video/mp4"),
        ("video/*.webm", "video/webm"),
        ("video/*.mpg", "video/mpeg"),
        ("pdf/groundtruth/*.md", "text/markdown"),
        ("pdf/groundtruth/*.txt", "text/plain"),
        ("audio/*.txt", "text/plain"),
    ],
)
def test_real_files(pattern: str, expected: str, eval_dir: Path) -> None:
    files = sorted(eval_dir.glob(pattern))
    assert files, f"no {pattern} under the evaluation data"
    wrong = {f.name: sniff(f) for f in files if sniff(f) != expected}
    assert not wrong, f"expected {expected}: {wrong}"
    assert all(family(expected_type(f)) == family(expected) for f in files)


def _tone(encode_audio, path: Path, fmt: str, codec: str) -> Path:
    """A 0.1 s tone encoded at 48 kHz (skipped where the wheel's ffmpeg lacks the encoder or muxer)."""
    import numpy as np

    samples = (np.sin(np.arange(1600) / 10.0) * 0.3).astype(np.float32)
    try:
        return encode_audio(samples, path, fmt, codec, rate=48_000)
    except Exception as exc:  # noqa: BLE001 - the wheel's ffmpeg may lack this encoder/muxer
        pytest.skip(f"PyAV cannot write {fmt}/{codec}: {exc}")


def test_generated_m4a_and_ogg(tmp_path: Path, encode_audio) -> None:
    m4a = _tone(encode_audio, tmp_path / "tone.m4a", "ipod", "aac")
    assert sniff(m4a) == "audio/mp4"
    ogg = _tone(encode_audio, tmp_path / "tone.ogg", "ogg", "libopus")
    assert sniff(ogg) == "audio/ogg"


def test_utf16_text_is_not_audio() -> None:
    assert sniff_bytes("\ufeffplain words in UTF-16".encode("utf-16-le")) in (None, "text/plain")
    assert sniff_bytes("\ufeffplain words in UTF-16".encode("utf-16-be")) in (None, "text/plain")


def test_text_starting_with_bm_is_not_a_bitmap() -> None:
    assert sniff_bytes(b"BMI and obesity in a cohort of 2,000 adults.", ".txt") == "text/plain"
