"""Opening PDFs: passwords, pdfium first and pypdf as fallback, metadata, limits.

``PDFIUM_LOCK`` serialises every pdfium call in the process (pdfium is not
thread-safe, even across documents); the functions here that touch pdfium
expect the caller to hold it.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever.config import PdfConfig
from retriever.errors import IngestError, LimitExceeded

__all__ = [
    "PASSWORD_REQUIRED",
    "PDFIUM_LOCK",
    "Budget",
    "NoteLog",
    "PdfOpenError",
    "candidate_passwords",
    "open_pdfium",
    "open_pypdf",
    "pdfium_metadata",
    "pypdf_metadata",
]

_log = logging.getLogger(__name__)
PDFIUM_LOCK = threading.RLock()
PASSWORD_REQUIRED = "encrypted: password required"
_META_KEYS = {
    "Title": "title",
    "Author": "author",
    "Producer": "producer",
    "Creator": "creator",
    "Subject": "subject",
}


class PdfOpenError(Exception):
    """pdfium could not open the file for a reason other than a password."""


def candidate_passwords(path: Path, cfg: PdfConfig) -> list[str]:
    """Passwords to try, in order: empty, per-file (``GLOB=PASSWORD``) matches, the global list."""
    out = [""]
    for entry in cfg.file_passwords:
        pattern, sep, password = str(entry).partition("=")
        if not sep:
            continue
        pattern = pattern.strip()
        if fnmatch.fnmatch(str(path), pattern) or fnmatch.fnmatch(path.name, pattern):
            out.append(password)
    out.extend(str(p) for p in cfg.passwords)
    return list(dict.fromkeys(out))  # first occurrence of each, in order


def _password_error(passwords: list[str]) -> IngestError:
    tried = len(passwords) - 1
    if tried == 0:
        return IngestError(
            f"{PASSWORD_REQUIRED} (no password configured: set pdf.passwords or pdf.file_passwords)"
        )
    return IngestError(f"{PASSWORD_REQUIRED} (tried {tried} configured password(s); none opens it)")


def open_pdfium(path: Path, passwords: list[str]) -> Any:
    """A ``pypdfium2.PdfDocument``; raises IngestError (password) or PdfOpenError. Hold the lock."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    for password in passwords:
        try:
            return pdfium.PdfDocument(str(path), password=password or None)
        except pdfium.PdfiumError as exc:
            if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
                continue
            raise PdfOpenError(_pdfium_reason(exc)) from exc
        except (OSError, ValueError) as exc:
            raise PdfOpenError(f"{type(exc).__name__}: {exc}") from exc
    raise _password_error(passwords)


def _pdfium_reason(exc: Exception) -> str:
    import pypdfium2.raw as pdfium_c

    reasons = {
        pdfium_c.FPDF_ERR_FILE: "file not found or unreadable",
        pdfium_c.FPDF_ERR_FORMAT: "not a PDF or corrupted beyond repair",
        pdfium_c.FPDF_ERR_SECURITY: "unsupported security handler",
        pdfium_c.FPDF_ERR_PAGE: "page not found or content error",
    }
    return reasons.get(getattr(exc, "err_code", None), str(exc))


def open_pypdf(path: Path, passwords: list[str]) -> Any:
    """A lenient ``pypdf.PdfReader``, decrypted; raises IngestError on failure."""
    import pypdf
    from pypdf.errors import DependencyError, PyPdfError

    try:
        reader = pypdf.PdfReader(str(path), strict=False)
        if reader.is_encrypted:
            for password in passwords:
                if reader.decrypt(password) != pypdf.PasswordType.NOT_DECRYPTED:
                    break
            else:
                raise _password_error(passwords)
        len(reader.pages)
        return reader
    except IngestError:
        raise
    except DependencyError as exc:
        raise IngestError(f"encrypted PDF needs a crypto backend for pypdf: {exc}") from exc
    except (
        PyPdfError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        RecursionError,
    ) as exc:
        raise IngestError(f"pypdf: {type(exc).__name__}: {exc}") from exc


def _clean_meta(value: Any) -> str | None:
    text = str(value).replace("\x00", "").strip() if value is not None else ""
    return text[:500] or None


def pdfium_metadata(doc: Any) -> dict[str, Any]:
    """title/author/producer/... plus pages and encrypted, from an open pdfium document."""
    import pypdfium2.raw as pdfium_c

    meta: dict[str, Any] = {"pages": len(doc)}
    try:
        raw = doc.get_metadata_dict(skip_empty=True)
    except Exception:  # noqa: BLE001 - a broken /Info dictionary only loses metadata
        raw = {}
    for key, name in _META_KEYS.items():
        value = _clean_meta(raw.get(key))
        if value:
            meta[name] = value
    meta["encrypted"] = pdfium_c.FPDF_GetSecurityHandlerRevision(doc.raw) != -1
    return meta


def pypdf_metadata(reader: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"pages": len(reader.pages), "encrypted": bool(reader.is_encrypted)}
    try:
        info = reader.metadata or {}
        for key, name in _META_KEYS.items():
            value = _clean_meta(info.get("/" + key))
            if value:
                meta[name] = value
    except Exception as exc:  # noqa: BLE001 - broken /Info: metadata only
        _log.debug("pypdf metadata unreadable: %s", exc)
    return meta


@dataclass
class Budget:
    """Wall-clock budget for one file: ``pdf.max_seconds`` and the run's deadline."""

    max_seconds: float
    deadline: float | None = None
    start: float = field(default_factory=time.monotonic)

    def check(self, where: str) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        if self.max_seconds > 0 and elapsed > self.max_seconds:
            raise LimitExceeded(
                f"time limit: {elapsed:.1f}s spent, more than pdf.max_seconds={self.max_seconds:g} ({where})"
            )
        if self.deadline is not None and now > self.deadline:
            raise LimitExceeded(
                f"time limit: the run's deadline passed after {elapsed:.1f}s on this file ({where})"
            )


@dataclass
class NoteLog:
    """Appends notes to the context's list, at most ``cap`` of them (then one summary line)."""

    notes: list[str]
    cap: int = 100
    dropped: int = 0

    def add(self, note: str) -> None:
        if self.cap <= 0 or len(self.notes) < self.cap:
            self.notes.append(note)
        else:
            self.dropped += 1

    def close(self) -> None:
        if self.dropped:
            self.notes.append(f"... and {self.dropped} more notes")
            self.dropped = 0
