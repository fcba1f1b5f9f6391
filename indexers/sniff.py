"""Content-type sniffing: decide what a file is from its bytes, not only its name.

``sniff(path)`` reads the first bytes and returns a MIME type such as
``image/jpeg``, ``application/pdf``, ``audio/wav``, ``video/mp4`` or ``text/plain``,
or ``None`` when the content is not recognised. ``expected_type(path)`` is what
the extension claims. The pipeline compares the two: a ``.png`` that holds text
is refused with both facts in the reason.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["sniff", "sniff_bytes", "expected_type", "family", "EXTENSION_TYPES"]

HEAD_BYTES = 4096

EXTENSION_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".rst": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "text/html",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".ogv": "video/ogg",
}


def family(content_type: str | None) -> str | None:
    """``image``, ``pdf``, ``text``, ``audio`` or ``video`` for a MIME type."""
    if not content_type:
        return None
    if content_type == "application/pdf":
        return "pdf"
    major = content_type.split("/", 1)[0]
    return major if major in {"image", "text", "audio", "video"} else None


def expected_type(path: Path) -> str | None:
    """The MIME type the file name's extension claims, if any."""
    return EXTENSION_TYPES.get(path.suffix.lower())


def sniff(path: Path) -> str | None:
    """The MIME type of the file's content, or None when unrecognised/empty."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    return sniff_bytes(head, path.suffix.lower())


def sniff_bytes(head: bytes, suffix: str = "") -> str | None:  # noqa: C901 - a flat table of signatures
    if not head:
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124):
        return "image/bmp"  # the DIB header size must be a known one: text may start with "BM" too
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if b"%PDF-" in head[:1024]:
        return "application/pdf"
    if head[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        # UTF-16/32 byte-order marks (FF FE would otherwise pass for an MPEG audio frame sync)
        return _sniff_bom_text(head, suffix)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video/x-msvideo"
    if head[:4] == b"fLaC":
        return "audio/flac"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        # MPEG audio frame sync (0xFFE/0xFFF with a layer set); ADTS AAC has layer bits 00
        return "audio/mpeg"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "audio/aac"
    if head[:4] == b"OggS":
        return "video/ogg" if b"\x80theora" in head else "audio/ogg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P ", b"F4A "):
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        return "video/mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "video/mpeg"
    return _sniff_text(head, suffix)


def _sniff_text(head: bytes, suffix: str) -> str | None:
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the head is still text
        if exc.start < len(head) - 4:
            try:
                text = head.decode("cp1252")
            except UnicodeDecodeError:
                return None
        else:
            text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t\f" for ch in text)
    if text and printable / len(text) < 0.95:
        return None
    lowered = text.lstrip("\ufeff \t\r\n").lower()
    if lowered.startswith(("<!doctype html", "<html")) or (suffix in (".html", ".htm", ".xhtml") and "<" in lowered):
        return "text/html"
    if suffix in (".md", ".markdown"):
        return "text/markdown"
    return "text/plain"


def _sniff_bom_text(head: bytes, suffix: str) -> str | None:
    for bom, codec in ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
                       (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            body = head[len(bom):]
            unit = 4 if "32" in codec else 2
            text = body[: len(body) - len(body) % unit].decode(codec, errors="replace")
            return _sniff_text(text.encode("utf-8"), suffix)
    return None
