"""What every ``mmrag eval`` task shares: the results type and files, progress, tables.

A results file (``--out``) holds the task, the dataset fingerprint, the settings and
model ids that produced the numbers, and the metrics, so two runs can be compared
(``compare_results``). The evaluators (``retrieval``, ``media``, ``answers``) build on this
module; ``harness`` runs them for the command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retriever.errors import MmragError

__all__ = [
    "RESULTS_FORMAT",
    "Advance",
    "EvalDataError",
    "EvalResult",
    "ProgressFactory",
    "compare_results",
    "dataset_fingerprint",
    "format_table",
    "no_advance",
    "no_progress",
    "progress_bar",
    "read_results",
    "write_results",
]

RESULTS_FORMAT = "mmrag-eval/1"


class EvalDataError(MmragError):
    """An evaluation dataset is missing, malformed or does not match its files."""


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation run measured, and with what.

    ``metrics`` holds the headline numbers (``{configuration: {metric: value}}`` or
    ``{metric: value}``); ``rows`` the per-query / per-file detail.
    """

    task: str
    dataset: Mapping[str, Any]
    settings: Mapping[str, Any]
    models: Mapping[str, Any]
    metrics: Mapping[str, Any]
    rows: Sequence[Mapping[str, Any]] = ()
    notes: Sequence[str] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
    table: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "task": self.task,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
            "dataset": dict(self.dataset),
            "settings": dict(self.settings),
            "models": dict(self.models),
            "metrics": _rounded(self.metrics),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": list(self.notes),
            "rows": [_rounded(r) for r in self.rows],
        }


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def dataset_fingerprint(files: Iterable[Path], root: Path) -> str:
    """blake2b over the relative paths and bytes of ``files``: equal data -> equal fingerprint."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted({Path(f) for f in files}, key=lambda p: p.as_posix()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return "blake2b:" + h.hexdigest()


Advance = Callable[[int], None]
"""``advance(n)``: ``n`` more units of work are done."""
ProgressFactory = Callable[[str, int], AbstractContextManager[Advance]]
"""``progress(label, total)``: a context whose value is the ``Advance`` of that piece of work."""


def no_advance(n: int = 1) -> None:
    """An ``Advance`` that shows nothing."""


def no_progress(label: str, total: int) -> AbstractContextManager[Advance]:
    """A ``ProgressFactory`` whose progress shows nothing."""
    return contextlib.nullcontext(no_advance)


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Advance]:
    """``advance(n)`` for progress on stderr: a bar on a terminal, else a line every few seconds."""
    if not enabled or total <= 0:
        yield no_advance
        return
    if not sys.stderr.isatty():
        from pipelines.cli.logs import counter_lines

        with counter_lines(f"eval {label}", total) as advance:
            yield advance
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)

        def advance_bar(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance_bar


def write_results(path: str | os.PathLike[str], result: EvalResult | Mapping[str, Any]) -> Path:
    """Write the results JSON atomically (temp file + rename)."""
    data = result.to_dict() if isinstance(result, EvalResult) else dict(result)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False, default=str)
            fh.write("\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalDataError(f"cannot read results file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise EvalDataError(f"{path} is not an mmrag eval results file (expected format {RESULTS_FORMAT!r})")
    return data


def _flat(data: Mapping[str, Any], numeric: bool, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, numeric, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
        elif not numeric:
            out[f"{prefix}{key}"] = json.dumps(value, default=str)
    return out


def compare_results(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Lines describing metric changes between two results (and why they may not compare)."""
    if old.get("task") != new.get("task"):
        return [f"different tasks: {old.get('task')} vs {new.get('task')}"]
    lines: list[str] = []
    if old.get("dataset", {}).get("fingerprint") != new.get("dataset", {}).get("fingerprint"):
        lines.append("warning: the datasets differ (fingerprints do not match)")
    for part in ("models", "settings"):
        a, b = _flat(old.get(part, {}), False), _flat(new.get(part, {}), False)
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            lines.append(f"{part} changed: {', '.join(changed)}")
    a, b = _flat(old.get("metrics", {}), True), _flat(new.get("metrics", {}), True)
    for key in sorted(set(a) & set(b)):
        lines.append(f"{key:<32} {a[key]:.4f} -> {b[key]:.4f}  ({b[key] - a[key]:+.4f})")
    return lines


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left/right aligned text table (numbers with 4 decimals)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


