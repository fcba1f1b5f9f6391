"""Find the files to ingest: recursive walk with include/exclude globs.

Symlinked directories are followed only when configured, and loops are cut by
remembering (device, inode) of every directory entered. Unreadable directories
and files that vanish are reported as skipped with a reason, never raised, and so
are names that are not valid UTF-8 (the catalog stores paths as text).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["Found", "discover"]


@dataclass(frozen=True)
class Found:
    """A discovered path: a file to ingest (``reason`` None) or a skip with its reason."""

    path: Path
    root: Path
    reason: str | None = None


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat):
            return True
        if pat.startswith("**/") and fnmatch.fnmatch(rel, pat[3:]):
            return True
    return False


def _bad_name(path: str) -> str | None:
    """Why a path cannot be stored as text (None if it can)."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file to ingest it)"


def _printable(path: str) -> Path:
    """``path`` with undecodable bytes shown as U+FFFD, safe to report and store."""
    return Path(os.fsencode(path).decode("utf-8", "replace"))


def discover(
    paths: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    is_candidate: Callable[[Path], bool] | None = None,
) -> Iterator[Found]:
    """Yield files under ``paths`` (files given explicitly are always yielded)."""
    for raw in paths:
        path = Path(raw).expanduser()
        bad = _bad_name(str(path.absolute()))
        if bad is not None:
            shown = _printable(str(path.absolute()))
            yield Found(shown, shown, bad)
            continue
        if not os.path.lexists(path):
            yield Found(path.absolute(), path.absolute(), f"no such file or directory: {raw}")
            continue
        path = path.absolute()
        if path.is_dir():
            yield from _walk(path, include, exclude, follow_symlinks, is_candidate)
        elif path.is_file():
            yield Found(path, path.parent)
        else:
            yield Found(path, path.parent, "not a regular file (broken link, device or socket)")


def _walk(root, include, exclude, follow, is_candidate) -> Iterator[Found]:
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            st = directory.stat()
        except OSError as exc:
            yield Found(directory, root, f"cannot stat directory: {exc.strerror or exc}")
            continue
        if (st.st_dev, st.st_ino) in seen:
            yield Found(directory, root, "directory already visited (symlink loop)")
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield Found(directory, root, f"cannot list directory: {exc.strerror or exc}")
            continue
        subdirs = []
        for entry in entries:
            found = _entry(entry, root, include, exclude, follow, is_candidate, subdirs)
            if found is not None:
                yield found
        stack.extend(reversed(subdirs))


def _entry(entry, root, include, exclude, follow, is_candidate, subdirs) -> Found | None:
    path = Path(entry.path)
    bad = _bad_name(entry.path)
    if bad is not None:
        return Found(_printable(entry.path), root, bad)
    rel = path.relative_to(root).as_posix()
    try:
        is_link = entry.is_symlink()
        is_dir = entry.is_dir(follow_symlinks=follow)
        is_file = entry.is_file(follow_symlinks=follow)
    except OSError as exc:
        return Found(path, root, f"cannot stat: {exc.strerror or exc}")
    if is_dir:
        if not _matches(rel + "/", exclude) and not _matches(rel, exclude):
            subdirs.append(path)
        return None
    if _matches(rel, exclude) or (include and not _matches(rel, include)):
        return None
    if is_link and not follow:
        return Found(path, root, "symbolic link not followed (set ingest.follow_symlinks)")
    if not is_file:
        return Found(path, root, "not a regular file")
    if is_candidate is not None and not is_candidate(path):
        return Found(path, root, "unsupported file type")
    return Found(path, root)
