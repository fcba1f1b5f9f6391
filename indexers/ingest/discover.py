"""Find the files to ingest: recursive walk with include/exclude globs.

Symlinked directories are followed only when configured, and loops are cut by
remembering (device, inode) of every directory entered. Unreadable directories
and files that vanish are reported as skipped with a reason, never raised, and so
are names that are not valid UTF-8 (the catalog stores paths as text).

``within`` confines a walk: every path it reaches (the given paths themselves and
whatever a followed symlink leads to) must resolve inside one of those directories,
else it is skipped. mmrag stores (``skip_dirs``, and any directory holding a store
manifest beside its catalog or indexes) are never walked into, so a store kept
inside the ingested tree does not ingest its own thumbnails.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

__all__ = ["OUTSIDE", "STORE_DIR", "Found", "discover", "is_inside", "is_store_dir", "real_dirs"]

OUTSIDE = "outside the allowed directories"
STORE_DIR = "an mmrag store (stores are never ingested)"
_STORE_PARTS = ("media", "indexes", "manifest.json", "write.lock")


@dataclass(frozen=True)
class Found:
    """A discovered path: a file to ingest (``reason`` None) or a skip with its reason."""

    path: Path
    root: Path
    reason: str | None = None


def real_dirs(dirs: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    """``dirs`` resolved (symlinks followed), as ``is_inside`` expects them."""
    return tuple(os.path.realpath(os.path.expanduser(os.fspath(d))) for d in dirs)


def is_inside(path: str | os.PathLike[str], allowed: Sequence[str]) -> bool:
    """True if ``path`` resolves (symlinks followed) inside one of the resolved ``allowed`` directories."""
    real = os.path.realpath(path)
    return any(real == a or real.startswith(a.rstrip(os.sep) + os.sep) for a in allowed)


def is_store_dir(directory: Path) -> bool:
    """True if ``directory`` is an mmrag store: a manifest with a format version, and a catalog or indexes."""
    manifest = directory / "manifest.json"
    try:
        if not manifest.is_file() or manifest.stat().st_size > 1 << 20:
            return False
        if not ((directory / "indexes").is_dir() or (directory / "catalog.sqlite").exists()):
            return False
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format_version" in data


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


def _dir_key(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


@dataclass
class _Walker:
    include: Sequence[str]
    exclude: Sequence[str]
    follow: bool
    is_candidate: Callable[[Path], bool] | None
    within: tuple[str, ...] | None
    skip: set[tuple[int, int]] = field(default_factory=set)

    def in_store(self, directory: Path) -> bool:
        return _dir_key(directory) in self.skip or is_store_dir(directory)

    def store_part(self, path: Path) -> bool:
        """True if ``path`` is a store or one of the files and folders a store manages."""
        for directory in (path, *path.parents):
            if directory.is_dir() and self.in_store(directory):
                parts = path.relative_to(directory).parts
                return not parts or parts[0] in _STORE_PARTS or parts[0].startswith("catalog.sqlite")
        return False

    def top(self, raw: str | os.PathLike[str]) -> Iterator[Found]:
        """What one path given by the caller yields."""
        path = Path(raw).expanduser()
        bad = _bad_name(str(path.absolute()))
        if bad is not None:
            shown = _printable(str(path.absolute()))
            yield Found(shown, shown, bad)
            return
        path = path.absolute()
        if self.within is not None and not is_inside(path, self.within):
            yield Found(path, path.parent, OUTSIDE)
        elif not os.path.lexists(path):
            yield Found(path, path, f"no such file or directory: {raw}")
        elif self.store_part(path):
            yield Found(path, path.parent, STORE_DIR)
        elif path.is_dir():
            yield from self.walk(path)
        elif path.is_file():
            yield Found(path, path.parent)
        else:
            yield Found(path, path.parent, "not a regular file (broken link, device or socket)")

    def walk(self, root: Path) -> Iterator[Found]:
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
            if directory != root and self.in_store(directory):
                yield Found(directory, root, STORE_DIR)
                continue
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                yield Found(directory, root, f"cannot list directory: {exc.strerror or exc}")
                continue
            subdirs: list[Path] = []
            for entry in entries:
                found = self.entry(entry, root, subdirs)
                if found is not None:
                    yield found
            stack.extend(reversed(subdirs))

    def entry(self, entry: os.DirEntry[str], root: Path, subdirs: list[Path]) -> Found | None:
        path = Path(entry.path)
        bad = _bad_name(entry.path)
        if bad is not None:
            return Found(_printable(entry.path), root, bad)
        rel = path.relative_to(root).as_posix()
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=self.follow)
            is_file = entry.is_file(follow_symlinks=self.follow)
        except OSError as exc:
            return Found(path, root, f"cannot stat: {exc.strerror or exc}")
        if is_dir:
            if _matches(rel + "/", self.exclude) or _matches(rel, self.exclude):
                return None
            if is_link and self.within is not None and not is_inside(path, self.within):
                return Found(path, root, OUTSIDE)
            subdirs.append(path)
            return None
        if _matches(rel, self.exclude) or (self.include and not _matches(rel, self.include)):
            return None
        if is_link and not self.follow:
            return Found(path, root, "symbolic link not followed (set ingest.follow_symlinks)")
        if is_link and self.within is not None and not is_inside(path, self.within):
            return Found(path, root, OUTSIDE)
        if not is_file:
            return Found(path, root, "not a regular file")
        if self.is_candidate is not None and not self.is_candidate(path):
            return Found(path, root, "unsupported file type")
        return Found(path, root)


def discover(
    paths: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    follow_symlinks: bool = False,
    is_candidate: Callable[[Path], bool] | None = None,
    *,
    within: Sequence[str | os.PathLike[str]] | None = None,
    skip_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Iterator[Found]:
    """Yield files under ``paths`` (files given explicitly are always yielded).

    ``within``: directories every reached path must resolve inside (None: anywhere).
    ``skip_dirs``: directories never walked into (the store being written), besides any mmrag store.
    """
    allowed = None if within is None else real_dirs(within)
    walker = _Walker(include, exclude, follow_symlinks, is_candidate, allowed)
    walker.skip = {key for key in map(_dir_key, skip_dirs) if key is not None}
    for raw in paths:
        yield from walker.top(raw)
