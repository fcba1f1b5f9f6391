"""Evaluation harness: shared pieces of ``mmrag eval`` (results files, progress, tables).

Each task lives in its own module and returns an ``EvalResult``:

* ``pipelines.eval.retrieval``: BEIR folders -> nDCG@10 / Recall@100 / MRR@10 per space and fused
* ``pipelines.eval.media``: ASR word error rate; image-caption Recall@K with the CLIP model
* ``pipelines.eval.answers``: answers citing the expected evidence, citation validity

A results file (``--out``) holds the task, the dataset fingerprint, the settings and
model ids that produced the numbers, and the metrics, so two runs can be compared
(``compare_results``).
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retriever.errors import MmragError

__all__ = [
    "RESULTS_FORMAT",
    "EvalDataError",
    "EvalResult",
    "compare_results",
    "dataset_fingerprint",
    "format_table",
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


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for progress on stderr: a bar on a terminal, else a line every few seconds."""
    if not enabled or total <= 0:
        yield lambda n=1: None
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
        yield lambda n=1: bar.advance(task, n)


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


# ---- the CLI entry (``mmrag eval TASK``) -----------------------------------------------


def run_eval(args: Any, overrides: dict[str, Any], emit: Callable[[Any, Any, str], None]) -> int:
    """Run ``args.eval_task``, print a table (or one JSON document) and write ``--out``."""
    task = args.eval_task
    with progress_scope(not args.json) as progress:
        if task == "retrieval":
            result = _eval_retrieval(args, overrides, progress)
        elif task == "asr":
            result = _eval_asr(args, overrides, progress)
        elif task == "captions":
            result = _eval_captions(args, overrides, progress)
        elif task == "answers":
            result = _eval_answers(args, overrides, progress)
        else:  # pragma: no cover - argparse restricts the choices
            raise MmragError(f"unknown eval task {task!r}")
    data = result.to_dict()
    human = result.table
    if args.compare:
        lines = compare_results(read_results(args.compare), data)
        data["comparison"] = {"baseline": str(args.compare), "lines": lines}
        human += f"\ncompared with {args.compare}:\n" + "\n".join(f"  {line}" for line in lines)
    if args.out:
        write_results(args.out, data)
        human += f"\nresults written to {args.out}"
    emit(args, data, human)
    return 0


@contextlib.contextmanager
def progress_scope(enabled: bool) -> Iterator[Callable[[str, int], Any]]:
    """A factory of progress bars (``progress(label, total)`` -> context of ``advance``)."""
    yield lambda label, total: progress_bar(label, total, enabled)


@contextlib.contextmanager
def _store(args: Any, overrides: dict[str, Any]) -> Iterator[tuple[Any, Path]]:
    """The engine on ``--store`` (kept) or on a temporary store (deleted), and a work folder."""
    from pipelines.engine import Engine

    if args.store:
        root = Path(args.store).expanduser().resolve()
        with Engine.open(root, overrides=overrides) as eng:
            yield eng, root / "eval-corpus"
        return
    with tempfile.TemporaryDirectory(prefix="mmrag-eval-") as tmp, Engine.open(
        Path(tmp) / "store", overrides=overrides
    ) as eng:
        yield eng, Path(tmp) / "corpus"


def _eval_retrieval(args: Any, overrides: dict[str, Any], progress: Any) -> EvalResult:
    from pipelines.eval.retrieval import evaluate_retrieval, load_beir

    ds = load_beir(args.dir, args.split)
    with _store(args, overrides) as (eng, work):
        return evaluate_retrieval(eng, ds, work / ds.name, sweep=args.sweep, progress=progress)


def _eval_asr(args: Any, overrides: dict[str, Any], progress: Any) -> EvalResult:
    from pipelines.eval.media import evaluate_asr, load_transcripts
    from retriever.config import Config

    directory = Path(args.dir).expanduser().resolve()
    transcripts = Path(args.transcripts).resolve() if args.transcripts else directory / "transcripts.json"
    config = Config.load(args.store, overrides)
    try:
        with progress("transcribe", len(load_transcripts(transcripts))) as advance:
            return evaluate_asr(directory, transcripts, config, advance)
    except ImportError as exc:
        raise MmragError(f"ASR evaluation needs the media extra (pip install 'mmrag[media]'): {exc}") from exc


def _eval_captions(args: Any, overrides: dict[str, Any], progress: Any) -> EvalResult:
    from pipelines.eval.media import evaluate_captions, load_captions
    from retriever.config import Config

    directory = Path(args.dir).expanduser().resolve()
    captions = Path(args.captions).resolve() if args.captions else directory / "captions.json"
    config = Config.load(args.store, overrides)
    with progress("images", len(load_captions(captions))) as advance:
        return evaluate_captions(directory, captions, config, advance)


def _eval_answers(args: Any, overrides: dict[str, Any], progress: Any) -> EvalResult:
    from pipelines.eval.answers import evaluate_answers, load_answer_cases

    path = Path(args.file).expanduser().resolve()
    cases, corpus = load_answer_cases(path)
    if not corpus and not args.store:
        raise EvalDataError(f"{path.name} names no 'corpus' to ingest; give --store with the evidence ingested")
    with _store(args, overrides) as (eng, _work):
        if corpus:
            report = eng.ingest(corpus)
            if report.failed:
                raise EvalDataError(f"corpus files failed to ingest: {report.failed[:3]}")
        with progress("questions", len(cases)) as advance:
            return evaluate_answers(eng, cases, path, k=args.k, advance=advance)
