"""Serving evidence files: a catalog source (checked to be what was ingested) or a thumbnail.

A source is served only when:

* the link's ``v`` (the source version when the link was made) is the catalog's current one;
* a source lying under an allowed ingest directory still resolves inside those directories
  (a symlink swapped in after ingest cannot lead the server elsewhere);
* the file is a regular file whose size and mtime are the catalog's, or else whose content
  hash is the catalog's (a file rewritten since ingest is refused, not served as the old
  evidence).

The checks are made on the open file descriptor that is then streamed, so the file cannot
be swapped between the check and the read. Single byte ranges are served (206); a request
for several ranges gets the whole file.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from pipelines.engine import SourceFile
from pipelines.server.errors import (
    BadRange,
    ItemNotFound,
    RangeNotSatisfiable,
    SourceChanged,
    SourceForbidden,
    SourceGone,
)
from pipelines.server.limits import shown
from pipelines.server.links import source_version
from retriever.catalog import ItemRecord, SourceRecord

__all__ = ["OpenedFile", "VerifiedFiles", "byte_range", "file_response", "open_source", "open_thumbnail"]

CHUNK_BYTES = 256 * 1024
_RANGE_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_RANGE_FORMS = "expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX"


@dataclass
class OpenedFile:
    """An open, checked evidence file and the headers to serve it with."""

    file: BinaryIO
    stat: os.stat_result
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class VerifiedFiles:
    """Files whose content hash was checked although their mtime differs from the catalog's."""

    def __init__(self, size: int = 1024) -> None:
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._size = size

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._seen

    def add(self, key: tuple[Any, ...]) -> None:
        self._seen[key] = None
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


def _open_regular(path: Path) -> tuple[BinaryIO, os.stat_result] | None:
    """``path`` opened for reading if it is a regular file (a FIFO is never waited on); else None."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), st


def _under(path: Path, dirs: Sequence[Path]) -> bool:
    return any(path == d or path.is_relative_to(d) for d in dirs)


def _content_hash(fh: BinaryIO) -> str:
    """The content hash the ingest pipeline records (``indexers.ingest.pipeline.hash_file``), of an open file."""
    h = hashlib.blake2b(digest_size=20)
    fh.seek(0)
    while block := fh.read(1 << 20):
        h.update(block)
    fh.seek(0)
    return "blake2b:" + h.hexdigest()


def _check_version(rec: ItemRecord, source: SourceRecord, version: str | None) -> None:
    current = source_version(source.content_hash)
    if version is not None and version != current:
        raise SourceChanged(
            f"the source of item {rec.id} ({rec.source_display}) changed since this citation was made "
            f"(the link has version {version}, the store has {current or 'none'}); search again for the "
            "current evidence"
        )


def _open_source_file(rec: ItemRecord) -> tuple[BinaryIO, os.stat_result]:
    path = Path(rec.source_uri)  # a source of the catalog, never a path from the request
    try:
        opened = _open_regular(path)
    except FileNotFoundError:
        opened, state = None, "was deleted or moved"
    except OSError as exc:
        opened, state = None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        state = "is no longer a regular file"
    if opened is None:
        raise SourceGone(f"the source file of item {rec.id} ({rec.source_display}) {state} since it was "
                         "ingested; restore it and re-ingest, or remove it with `mmrag remove`")
    return opened


def _check_confined(rec: ItemRecord, st: os.stat_result, allowed: Sequence[Path]) -> None:
    """A source under an allowed directory must still resolve inside them, to the file that was opened."""
    path = Path(rec.source_uri)
    if not allowed or not _under(path, allowed):
        return
    refused = SourceForbidden(f"the source file of item {rec.id} ({rec.source_display}) now leads outside "
                              "the allowed directories; it is not served")
    resolved = path.resolve()
    if not _under(resolved, allowed):
        raise refused
    try:
        target = os.stat(resolved)
    except OSError:
        raise refused from None
    if (target.st_dev, target.st_ino) != (st.st_dev, st.st_ino):
        raise refused


def _check_unchanged(rec: ItemRecord, source: SourceRecord, fh: BinaryIO, st: os.stat_result,
                     verified: VerifiedFiles) -> None:
    """The open file is the ingested content: same size and mtime, or else the same content hash."""
    if st.st_size == source.size and source.mtime is not None and abs(st.st_mtime - source.mtime) < 1e-3:
        return
    key = (source.uri, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, source.content_hash)
    if key in verified:
        return
    if source.content_hash is None or _content_hash(fh) != source.content_hash:
        raise SourceChanged(
            f"the source file of item {rec.id} ({rec.source_display}) changed since it was ingested (its "
            "content no longer matches the catalog); re-ingest it to serve and cite the new content"
        )
    verified.add(key)


def _media_type(source: SourceRecord) -> tuple[str, bool]:
    """(Content-Type to serve the source with, whether it is HTML)."""
    ctype = source.content_type or mimetypes.guess_type(source.uri)[0] or "application/octet-stream"
    if ctype.startswith("text/"):
        encoding = source.metadata.get("encoding") or "utf-8"
        return f"{ctype}; charset={encoding}", ctype == "text/html"
    return ctype, False


def _inline(name: str) -> str:
    quoted = quote(name)
    return f"inline; filename*=utf-8''{quoted}" if quoted != name else f'inline; filename="{name}"'


def open_source(found: SourceFile, *, allowed: Sequence[Path], version: str | None,
                verified: VerifiedFiles) -> OpenedFile:
    """The evidence file ``found`` (``Engine.source_file``), open and checked (see the module docstring)."""
    rec, source = found.item, found.source
    _check_version(rec, source, version)
    fh, st = _open_source_file(rec)
    try:
        _check_confined(rec, st, allowed)
        _check_unchanged(rec, source, fh, st, verified)
    except BaseException:
        fh.close()
        raise
    media_type, html = _media_type(source)
    headers = {"X-Content-Type-Options": "nosniff", "Content-Disposition": _inline(Path(rec.source_uri).name)}
    if html:  # never run an ingested page's scripts in the API's origin
        headers["Content-Security-Policy"] = "sandbox"
    return OpenedFile(fh, st, media_type, headers)


def open_thumbnail(path: Path | None, missing: str) -> OpenedFile:
    """The JPEG thumbnail at ``path`` (``Engine.thumbnail``: inside the store's thumbnail folder);
    ``ItemNotFound`` with the message ``missing`` when there is none or it is not a regular file."""
    opened = None
    if path is not None:
        try:
            opened = _open_regular(path)
        except OSError:
            opened = None
    if opened is None:
        raise ItemNotFound(missing)
    return OpenedFile(opened[0], opened[1], "image/jpeg", {"X-Content-Type-Options": "nosniff"})


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single-range request, inclusive; None to send the whole file.

    Another unit than bytes and several ranges are ignored (RFC 9110 allows it): the whole
    file is sent. A malformed range is a ``BadRange``; one outside the file a ``RangeNotSatisfiable``.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_SPEC.match(spec)
    if match is None or not (match[1] or match[2]):
        raise BadRange(f"Range header {shown(header)} is not a byte range; {_RANGE_FORMS}")
    unsatisfiable = RangeNotSatisfiable(
        f"Range header {shown(header)} asks for bytes outside the file, which has {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )
    if not match[1]:  # bytes=-SUFFIX: the last SUFFIX bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return max(size - suffix, 0), size - 1
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        raise BadRange(f"Range header {shown(header)} ends before it starts ({match[2]} < {first}); "
                       f"{_RANGE_FORMS}")
    if first >= size:
        raise unsatisfiable
    return first, min(int(match[2]) if match[2] else size - 1, size - 1)


def _validators(st: os.stat_result) -> dict[str, str]:
    identity = f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode()
    tag = hashlib.md5(identity, usedforsecurity=False).hexdigest()
    return {"ETag": f'"{tag}"', "Last-Modified": formatdate(st.st_mtime, usegmt=True)}


async def _chunks(fh: BinaryIO, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        await anyio.to_thread.run_sync(fh.seek, start)
        left = length
        while left > 0:
            block = await anyio.to_thread.run_sync(fh.read, min(CHUNK_BYTES, left))
            if not block:
                break
            left -= len(block)
            yield block
    finally:
        fh.close()


def file_response(opened: OpenedFile, request: Request) -> Response:
    """200 with the whole file, or 206 with one byte range of it; HEAD gets the headers only."""
    size = opened.stat.st_size
    headers = {**opened.headers, **_validators(opened.stat), "Accept-Ranges": "bytes"}
    try:
        if_range = request.headers.get("if-range")
        span = None
        if if_range is None or if_range in (headers["ETag"], headers["Last-Modified"]):
            span = byte_range(request.headers.get("range"), size)
    except BaseException:
        opened.file.close()
        raise
    first, last = span if span is not None else (0, size - 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    status = 206 if span is not None else 200
    if request.method == "HEAD":
        opened.file.close()
        return Response(status_code=status, headers=headers, media_type=opened.media_type)
    body = _chunks(opened.file, first, last - first + 1)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=opened.media_type)
