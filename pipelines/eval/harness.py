"""``mmrag eval TASK``: run one evaluation, print its table (or one JSON document), write and
compare results files.

Each task lives in its own module and returns an ``EvalResult`` (``pipelines.eval.results``):

* ``pipelines.eval.retrieval``: BEIR folders -> nDCG@10 / Recall@100 / MRR@10 per run and fused
* ``pipelines.eval.media``: ASR word error rate; image-caption Recall@K with the CLIP model
* ``pipelines.eval.answers``: answers citing the expected evidence, citation validity
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.engine import Engine
from pipelines.eval.answers import evaluate_answers, load_answer_cases
from pipelines.eval.media import evaluate_asr, evaluate_captions, load_captions, load_transcripts
from pipelines.eval.results import (
    Advance,
    EvalDataError,
    EvalResult,
    ProgressFactory,
    compare_results,
    progress_bar,
    read_results,
    write_results,
)
from pipelines.eval.retrieval import evaluate_retrieval, load_beir
from retriever.config import Config
from retriever.errors import MmragError

__all__ = ["progress_scope", "run_eval"]

Emit = Callable[[argparse.Namespace, Any, str], None]


def run_eval(args: argparse.Namespace, overrides: dict[str, Any], emit: Emit) -> int:
    """Run ``args.eval_task``, print a table (or one JSON document) and write ``--out``."""
    task = _TASKS.get(args.eval_task)
    if task is None:  # pragma: no cover - argparse restricts the choices
        raise MmragError(f"unknown eval task {args.eval_task!r}; expected one of {', '.join(_TASKS)}")
    with progress_scope(not args.json) as progress:
        result = task(args, overrides, progress)
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
def progress_scope(enabled: bool) -> Iterator[ProgressFactory]:
    """A factory of progress bars (``progress(label, total)`` -> context of ``advance``)."""

    def progress(label: str, total: int) -> contextlib.AbstractContextManager[Advance]:
        return progress_bar(label, total, enabled)

    yield progress


@contextlib.contextmanager
def _store(args: argparse.Namespace, overrides: dict[str, Any]) -> Iterator[tuple[Engine, Path]]:
    """The engine on ``--store`` (kept) or on a temporary store (deleted), and a work folder."""
    if args.store:
        root = Path(args.store).expanduser().resolve()
        with Engine.open(root, overrides=overrides) as eng:
            yield eng, root / "eval-corpus"
        return
    with tempfile.TemporaryDirectory(prefix="mmrag-eval-") as tmp, Engine.open(
        Path(tmp) / "store", overrides=overrides
    ) as eng:
        yield eng, Path(tmp) / "corpus"


def _eval_retrieval(args: argparse.Namespace, overrides: dict[str, Any], progress: ProgressFactory) -> EvalResult:
    ds = load_beir(args.dir, args.split)
    with _store(args, overrides) as (eng, work):
        return evaluate_retrieval(eng, ds, work / ds.name, sweep=args.sweep, progress=progress)


def _eval_asr(args: argparse.Namespace, overrides: dict[str, Any], progress: ProgressFactory) -> EvalResult:
    directory = Path(args.dir).expanduser().resolve()
    transcripts = Path(args.transcripts).resolve() if args.transcripts else directory / "transcripts.json"
    config = Config.load(args.store, overrides)
    try:
        with progress("transcribe", len(load_transcripts(transcripts))) as advance:
            return evaluate_asr(directory, transcripts, config, advance)
    except ImportError as exc:
        raise MmragError(f"ASR evaluation needs the media extra (pip install 'mmrag[media]'): {exc}") from exc


def _eval_captions(args: argparse.Namespace, overrides: dict[str, Any], progress: ProgressFactory) -> EvalResult:
    directory = Path(args.dir).expanduser().resolve()
    captions = Path(args.captions).resolve() if args.captions else directory / "captions.json"
    config = Config.load(args.store, overrides)
    with progress("images", len(load_captions(captions))) as advance:
        return evaluate_captions(directory, captions, config, advance)


def _eval_answers(args: argparse.Namespace, overrides: dict[str, Any], progress: ProgressFactory) -> EvalResult:
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


_TASKS: dict[str, Callable[[argparse.Namespace, dict[str, Any], ProgressFactory], EvalResult]] = {
    "retrieval": _eval_retrieval,
    "asr": _eval_asr,
    "captions": _eval_captions,
    "answers": _eval_answers,
}
