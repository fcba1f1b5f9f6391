"""Plain text, Markdown and HTML files -> overlapping text ``chunk`` items.

Bytes are decoded as UTF-8 (BOM aware, UTF-16/32 by BOM), then by charset detection
(charset-normalizer), then cp1252. Newlines are normalised to ``\\n``; chunk offsets
index that decoded text (for HTML: the extracted visible text), so ``text[a:b]`` of
the same extraction gives a chunk back exactly.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from indexers.base import IngestContext
from indexers.chunking import chunk_spans
from indexers.sniff import HEAD_BYTES, sniff_bytes
from retriever.errors import IngestError, LimitExceeded
from retriever.types import Item, ItemKind, Locator, Modality

if TYPE_CHECKING:
    from bs4 import Tag

__all__ = ["TextIngestor", "TEXT_TYPES", "extract_text", "decode_bytes", "html_to_text", "markdown_title"]

TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/html"})

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_NEWLINES = re.compile(r"\r\n?")
_ATX = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.M)
_SETEXT = re.compile(r"^ {0,3}(\S[^\n]*)\n {0,3}(?:=+|-+)[ \t]*$", re.M)
_SPACES = re.compile(r"[ \t\n\r\f\v]+")

# HTML: subtrees that are never visible text, and how elements break the text flow
_DROP = frozenset("script style noscript template head svg title iframe object".split())
_PARA = frozenset(
    "p h1 h2 h3 h4 h5 h6 blockquote pre table ul ol dl figure section article header footer main aside nav "
    "form fieldset details hr".split()
)
_BLOCK = frozenset(
    "div li dt dd tr caption figcaption address summary legend option thead tbody tfoot dialog hgroup "
    "center body html".split()
)
_CELL = frozenset({"td", "th"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_BREAK_RANK = {"": 0, " ": 1, "\n": 2, "\n\n": 3}


class TextIngestor:
    """Chunks of a text/markdown/html file, each addressed by character offsets."""

    name = "text"
    modality = Modality.TEXT
    content_types = TEXT_TYPES

    def accepts(self, path: Path, content_type: str) -> bool:
        return content_type in self.content_types

    def ingest(self, path: Path, ctx: IngestContext) -> Iterator[Item]:
        path = Path(path)
        cfg = ctx.config.ingest
        text, title, content_type, encoding = extract_text(path, cfg.max_file_bytes)
        spans = chunk_spans(text, cfg.chunk_chars, cfg.chunk_overlap)  # sizes checked by IngestConfig
        ctx.source_metadata.update(
            {"content_type": content_type, "encoding": encoding, "chars": len(text), "chunks": len(spans)}
        )
        if title:
            ctx.source_metadata["title"] = title
        if not spans:
            ctx.notes.append(f"no text content: {content_type} file is blank after decoding")
            return
        uri = str(path.resolve())
        for i, (a, b) in enumerate(spans):
            yield Item(
                modality=Modality.TEXT,
                kind=ItemKind.CHUNK,
                locator=Locator(uri=uri, char_start=a, char_end=b),
                text=text[a:b],
                metadata={"chunk": i, "title": title},
            )


def extract_text(path: Path, max_bytes: int | None = None) -> tuple[str, str | None, str, str]:
    """``(text, title, content_type, encoding)``; chunk offsets index ``text``."""
    data = _read(path, max_bytes)
    content_type = _content_type(path, data)
    raw, encoding = decode_bytes(data, _charset_hint(data))
    raw = _NEWLINES.sub("\n", raw)
    if content_type == "text/html":
        try:
            text, title = html_to_text(raw)
        except Exception as exc:  # noqa: BLE001 - a parser crash is this file's problem only
            raise IngestError(f"cannot extract text from HTML: {type(exc).__name__}: {exc}") from None
        return text, title, content_type, encoding
    title = markdown_title(raw) if content_type == "text/markdown" else None
    return raw, title, content_type, encoding


def _read(path: Path, max_bytes: int | None) -> bytes:
    try:
        size = path.stat().st_size
        if size == 0:
            raise IngestError("empty file (0 bytes)")
        if max_bytes is not None and size > max_bytes:
            raise LimitExceeded(
                f"file is {size} bytes, over the limit of {max_bytes} bytes (ingest.max_file_bytes)"
            )
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"cannot read text file: {exc.strerror or exc}") from None


def _content_type(path: Path, data: bytes) -> str:
    """The sniffed text subtype; extension-only files (e.g. UTF-16 .txt) fall back to the suffix."""
    suffix = path.suffix.lower()
    wide_bom = any(data.startswith(bom) for bom, enc in _BOMS if enc != "utf-8")
    sniffed = None if wide_bom else sniff_bytes(data[:HEAD_BYTES], suffix)  # FF FE is also an MP3 sync
    if sniffed in TEXT_TYPES:
        return sniffed
    if sniffed is not None:
        raise IngestError(f"content is {sniffed}, not text")
    if not wide_bom:
        raise IngestError("content is binary (NUL or control bytes), not text")
    if suffix in (".html", ".htm", ".xhtml"):
        return "text/html"
    if suffix in (".md", ".markdown"):
        return "text/markdown"
    return "text/plain"


def _charset_hint(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:HEAD_BYTES])
    return match.group(1).decode("ascii").lower() if match else None


def decode_bytes(data: bytes, hint: str | None = None) -> tuple[str, str]:
    """``(text, encoding)``: BOM, then UTF-8, then a declared charset, then detection, then cp1252."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding), encoding
            except UnicodeDecodeError:
                break
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if hint in ("iso-8859-1", "latin1", "latin-1", "us-ascii", "ascii"):
        hint = "cp1252"  # what browsers do with these labels
    if hint and hint not in ("utf-8", "utf8"):
        try:
            return data.decode(hint), codecs.lookup(hint).name
        except (LookupError, UnicodeDecodeError):
            pass
    detected = _detect(data)
    if detected is not None:
        return detected
    return data.decode("cp1252", errors="replace"), "cp1252"


def _detect(data: bytes) -> tuple[str, str] | None:
    """charset-normalizer's guess, with a Western prior: cp1252 wins when it fits about as well.

    Short Western texts are ambiguous between the single-byte code pages (cp1252 vs cp1257
    differ only in which accented letters appear), and cp1252 is by far the likelier one.
    """
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # optional at runtime: cp1252 is the last resort anyway
        return None
    matches = list(from_bytes(data))
    if not matches:
        return None
    best = matches[0]
    for match in matches:
        names = {match.encoding, *match.could_be_from_charset}
        if "cp1252" in names and match.chaos <= best.chaos + 0.15 and match.coherence >= best.coherence - 0.1:
            return None  # the caller falls back to cp1252
    try:
        return data.decode(best.encoding), best.encoding
    except (LookupError, UnicodeDecodeError):
        return None


def markdown_title(text: str) -> str | None:
    """Front-matter ``title:``, else the first ATX (``# T``) or setext heading."""
    body_start = 0
    if text.startswith("---\n"):
        end = text.find("\n---", 3, 8192)
        for line in text[4:end].splitlines() if end > 0 else ():
            if line.lower().startswith("title:"):
                title = line[6:].strip().strip("\"'").strip()
                if title:
                    return title
        body_start = text.find("\n", end + 1) + 1 if end > 0 else 0
    text = text[body_start:]
    candidates = [m for m in (_ATX.search(text), _SETEXT.search(text)) if m]
    if not candidates:
        return None
    first = min(candidates, key=lambda m: m.start())
    title = first.group(1).strip()
    return title or None


def html_to_text(html: str) -> tuple[str, str | None]:
    """``(visible text, title)``: scripts, styles, head etc. dropped; blocks become line breaks."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    title = _html_title(soup)
    return _join(_walk(soup)), title


def _html_title(soup: object) -> str | None:
    for name in ("title", "h1"):
        node = soup.find(name)  # type: ignore[attr-defined]
        if node is not None:
            text = _SPACES.sub(" ", node.get_text()).strip()
            if text:
                return text
    return None


class _Break(str):
    """A layout token between text runs: " " (cell), "\\n" (block) or "\\n\\n" (paragraph)."""


def _walk(root: object) -> Iterator[str]:
    """Text runs and breaks in document order; iterative, so deep nesting cannot overflow."""
    from bs4 import NavigableString, Tag

    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, in_pre = stack.pop()
        if isinstance(node, _Break):
            yield node
        elif isinstance(node, NavigableString):
            if type(node) is NavigableString:  # not a Comment, Doctype, CData, ProcessingInstruction
                yield str(node) if in_pre else _SPACES.sub(" ", str(node))
        elif isinstance(node, Tag):
            name = (node.name or "").lower()
            if name in _DROP or node.has_attr("hidden") or _HIDDEN_STYLE.search(_attribute(node, "style")):
                continue
            if name == "br":
                yield _Break("\n")
                continue
            brk = "\n\n" if name in _PARA else "\n" if name in _BLOCK else " " if name in _CELL else ""
            if brk:
                yield _Break(brk)
                stack.append((_Break(brk), in_pre))
            child_pre = in_pre or name in ("pre", "textarea")
            stack.extend((child, child_pre) for child in reversed(node.contents))


def _attribute(tag: Tag, name: str) -> str:
    """A tag's attribute as one string ("" when absent); multi-valued ones (class) are space-joined."""
    value = tag.get(name)
    if value is None:
        return ""
    return value if isinstance(value, str) else " ".join(value)


def _join(tokens: Iterator[str]) -> str:
    """Resolve runs of breaks to the strongest one and trim spaces at line edges."""
    parts: list[str] = []
    pending = ""
    for tok in tokens:
        if isinstance(tok, _Break):
            if _BREAK_RANK[tok] > _BREAK_RANK[pending]:
                pending = str(tok)
            continue
        if not tok:
            continue
        at_edge = not parts or parts[-1].endswith((" ", "\n"))
        if pending and parts:
            if pending == " ":
                at_edge = True
                if not parts[-1].endswith((" ", "\n")) and not tok.startswith(" "):
                    parts.append(" ")
            else:
                parts[-1] = parts[-1].rstrip(" ")
                parts.append(pending)
        pending = ""
        if at_edge or parts and parts[-1].endswith(("\n", " ")):
            tok = tok.lstrip(" ")
        if tok:
            parts.append(tok)
    text = "".join(parts)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
