"""Progress a person sees during long runs, and a quiet stderr: ingest reports discovery, files,
items and failures as they happen (a bar on a terminal, periodic lines otherwise, never on
stdout); eval retrieval reports its ingest and queries; library logs and bars stay out unless
asked for with -v."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from indexers.ingest.progress import DISCOVERING, FINISHING, INGESTING, IngestProgress, ProgressTracker
from pipelines.cli.logs import LineProgress, counter_progress, setup_logging

NOISE = ("Loading weights", "DEBUG", "bm25s", "No pretrained weights", "pypdf", "it/s]", "INFO")


class _Recorder:
    """A progress callback that keeps every call and every state."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.states: list[IngestProgress] = []

    def __call__(self, label: str, done: int, total: int) -> None:
        self.calls.append((label, done, total))

    def ingest_state(self, state: IngestProgress) -> None:
        self.states.append(state)


def test_tracker_reports_discovery_then_files_items_and_failures() -> None:
    rec = _Recorder()
    tracker = ProgressTracker(rec, min_interval=0.0)
    for name in ("a", "b", "c"):
        tracker.found(name)
    assert [(s.phase, s.found, s.total) for s in rec.states] == [(DISCOVERING, n, None) for n in (1, 2, 3)]
    tracker.start(3)
    tracker.file_done("a", items=5)
    tracker.file_done("b", failed=True)
    tracker.file_done("")
    tracker.finishing()
    last = rec.states[-1]
    assert (last.phase, last.done, last.total, last.items, last.failed) == (FINISHING, 3, 3, 5, 1)
    assert rec.calls == [("a", 1, 3), ("b", 2, 3), ("", 3, 3)]  # the plain (label, done, total) contract
    assert rec.states[3].phase == INGESTING and "1/3 files" in rec.states[4].line()
    assert last.line().startswith("ingest: 3/3 files, 5 items, 1 failed") and "saving" in last.line()
    plain: list[tuple] = []
    ProgressTracker(lambda *a: plain.append(a)).file_done("x")  # a plain function still works
    assert plain == [("x", 1, 0)]


def test_engine_ingest_reports_files_as_they_are_found(tmp_path: Path, text_store) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"n{i}.md").write_text(f"# Note {i}\n\nA short note number {i} about kites and wind.\n")
    (docs / "broken.png").write_text("not an image")
    rec = _Recorder()
    text_store.ingest([docs], progress=rec)
    phases = [s.phase for s in rec.states]
    assert phases[0] == DISCOVERING and rec.states[0].found >= 1 and rec.states[0].done == 0
    assert phases.index(INGESTING) < phases.index(FINISHING) == len(phases) - 1
    final = rec.states[-1]
    assert (final.found, final.done, final.failed) == (7, 7, 1) and final.items >= 6
    assert [c[1:] for c in rec.calls] == [(i, 7) for i in range(1, 8)]


def test_line_progress_prints_at_most_every_interval(capsys) -> None:
    now = [100.0]
    lines = LineProgress(interval=5.0, clock=lambda: now[0])
    advance = counter_progress("eval queries", 300, lines)
    for _ in range(5):
        advance()  # at 0, 2, 4, 6 and 8 s: one line, at 6 s
        now[0] += 2.0
    out = capsys.readouterr()
    assert out.out == "" and out.err == "eval queries: 4/300, 6 s\n"
    assert not lines.tick()  # 4 s since the last line
    now[0] += 1.0
    assert lines.tick()  # nothing changed since: the latest line again
    assert capsys.readouterr().err == "eval queries: 5/300, 11 s\n"
    state = IngestProgress(INGESTING, found=340, done=120, items=2310, failed=3, seconds=41.2)
    now[0] += 5.0
    assert lines.update(state.line) and not lines.update(state.line)
    assert capsys.readouterr().err == "ingest: 120/340 files, 2,310 items, 3 failed, 41 s\n"


def test_verbosity_levels() -> None:
    root = logging.getLogger()
    try:
        levels = ((0, logging.WARNING, logging.ERROR), (1, logging.INFO, logging.INFO),
                  (2, logging.DEBUG, logging.DEBUG))
        for verbosity, own, libraries in levels:
            setup_logging(verbosity)
            (handler,) = [h for h in root.handlers if type(h).__name__ == "_StderrHandler"]
            record = logging.LogRecord("bm25s", libraries - 10, __file__, 1, "x", None, None)
            assert not handler.filter(record) and handler.filter(logging.LogRecord(
                "bm25s", libraries, __file__, 1, "x", None, None))
            assert handler.filter(logging.LogRecord("indexers.pdf.ingestor", own, __file__, 1, "x", None, None))
    finally:
        setup_logging(0)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, stdin=subprocess.DEVNULL, check=False)


def test_cli_json_is_quiet_and_progress_goes_to_stderr(tmp_path: Path, eval_dir: Path, tiny_clip_spec: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("pdf/pypdf__crazyones.pdf", "pdf/pdfplumber__malformed-from-issue-932.pdf",
                 "images/coco/coco_val2017_000000062554.jpg", "pdf/groundtruth/pypdf__crazyones.txt"):
        shutil.copy(eval_dir / name, docs)
    env = {**os.environ, "MMRAG_STORE": str(tmp_path / "store"), "MMRAG_CLIP_MODEL": tiny_clip_spec,
           "MMRAG_PROGRESS_SECONDS": "0"}
    for args in (("ingest", str(docs), "--json"), ("search", "the crazy ones", "--json")):
        proc = _cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)  # exactly one JSON document
        assert not [n for n in NOISE if n in proc.stderr], proc.stderr
    shutil.copy(eval_dir / "pdf/groundtruth/docling__multi_page.docling.md", docs)
    proc = _cli("ingest", str(docs), env=env)  # stderr is a pipe: periodic lines there, none on stdout
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("ingest: finding files") for line in lines), proc.stderr
    assert any(line.startswith("ingest: 5/5 files, ") and "failed" in line for line in lines), proc.stderr
    assert "ingest:" not in proc.stdout and proc.stdout.startswith("added 1, updated 0, unchanged 4")
    assert not [n for n in NOISE if n in proc.stderr], proc.stderr
    verbose = _cli("search", "the crazy ones", "--json", "-v", env=env)
    assert verbose.returncode == 0 and "INFO " in verbose.stderr and json.loads(verbose.stdout)


def test_eval_retrieval_reports_ingest_and_query_progress(tmp_path: Path, capsys, monkeypatch) -> None:
    from pipelines.cli.main import main

    data = tmp_path / "beir"
    (data / "qrels").mkdir(parents=True)
    topics = ["kites", "boats", "trains"]
    docs = {f"d{i}": f"Document {i} is about {topic}." for i, topic in enumerate(topics)}
    rows = [json.dumps({"_id": k, "text": v}) for k, v in docs.items()]
    (data / "corpus.jsonl").write_text("".join(row + "\n" for row in rows))
    (data / "queries.jsonl").write_text('{"_id": "q1", "text": "kites"}\n{"_id": "q2", "text": "trains"}\n')
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td2\t1\n")
    monkeypatch.setenv("MMRAG_PROGRESS_SECONDS", "0")
    try:
        assert main(["eval", "retrieval", str(data), "--clip-model", "none"]) == 0
    finally:
        setup_logging(0)
    err = capsys.readouterr().err.splitlines()
    assert "eval ingest: 3/3, " in "\n".join(err) and "eval queries: 2/2, " in "\n".join(err), err


@pytest.mark.parametrize("value, expected", [("2.5", 2.5), ("junk", 5.0), ("-1", 0.0)])
def test_progress_interval_setting(value: str, expected: float, monkeypatch) -> None:
    from pipelines.cli.logs import progress_interval

    monkeypatch.setenv("MMRAG_PROGRESS_SECONDS", value)
    assert progress_interval() == expected
