"""Ctrl-C during an ingest: the run stops within a couple of seconds, exits 130, leaves a
consistent store, and the next run ingests the rest."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexers.ingest.interrupt import Interrupt
from indexers.registry import Registry, default_registry
from pipelines.engine import Engine
from retriever.config import Config
from retriever.store import Store


def test_a_first_ctrl_c_lets_a_critical_section_finish_then_raises() -> None:
    steps: list[str] = []
    intr = Interrupt()
    with intr.installed(), pytest.raises(KeyboardInterrupt), intr.critical():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs in here and does not raise
        steps.append("committed")
    assert steps == ["committed"] and intr.stop.is_set() and intr.requested
    intr = Interrupt()
    with intr.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(2)
        steps.append("not reached")  # outside a critical section it raises at once
    assert steps == ["committed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def _start(store: Path, corpus: Path) -> subprocess.Popen:
    env = {**os.environ, "MMRAG_STORE": str(store), "MMRAG_CLIP_MODEL": "none"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "ingest", str(corpus)], env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 (as from a terminal)
    )


def _collect(proc: subprocess.Popen, lines: list[str]) -> None:
    """Read the process's stderr into ``lines`` in a thread."""
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()


def _wait_for_items(catalog: Path, proc: subprocess.Popen, timeout: float) -> int:
    """Wait until the ingest has committed items (read from its catalog); their count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(sqlite3.Error):
            con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=0.1)
            try:
                n = con.execute("SELECT count(*) FROM items").fetchone()[0]
            finally:
                con.close()
            if n:
                return n
        time.sleep(0.05)
    raise AssertionError(f"no item was committed within {timeout} s (exit code {proc.poll()})")


class _StuckText:
    """The text ingestor, except that files named ``stuck*`` take ``seconds`` before their first item
    (a worker deep in one slow file)."""

    name, seconds = "stuck-text", 12.0

    def __init__(self) -> None:
        from indexers.text import TextIngestor

        self.inner = TextIngestor()
        self.modality, self.content_types = self.inner.modality, self.inner.content_types

    def accepts(self, path: Path, content_type: str) -> bool:
        return path.name.startswith("stuck") and self.inner.accepts(path, content_type)

    def ingest(self, path: Path, ctx):
        time.sleep(self.seconds)
        yield from self.inner.ingest(path, ctx)


@pytest.fixture()
def stuck_engine(tmp_path: Path, text_encoder) -> Iterator[Engine]:
    """An engine on a fresh text-only store whose registry puts ``_StuckText`` first, with two workers."""
    store_dir = tmp_path / "store"
    config = Config.load(store_dir, {"models.clip": "none", "ingest.workers": 2, "models.batch_size": 8})
    config = config.with_overrides({"store": str(store_dir)})
    registry = Registry([_StuckText(), *default_registry().ingestors])
    with Engine(Store(store_dir, config), config, registry, text=text_encoder) as eng:
        yield eng


def test_sigint_does_not_wait_for_a_worker_stuck_in_one_file(
    tmp_path: Path, stuck_engine: Engine, scifact_texts, text_files
) -> None:
    from retriever.catalog.models import RunRow

    eng = stuck_engine
    corpus = tmp_path / "corpus"
    text_files(corpus, scifact_texts(60))
    stuck = tmp_path / "stuck.txt"
    stuck.write_text("a file that takes long to decode\n")
    sent: list[float] = []

    def interrupt_once_items_landed() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not eng.store.catalog.counts()["items"]:
            time.sleep(0.05)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_items_landed, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        eng.ingest([stuck, corpus])  # given first: taken first
    elapsed = time.monotonic() - sent[0]
    assert elapsed < 2.5, f"ingest returned {elapsed:.1f} s after SIGINT"
    with eng.store.catalog.session() as s:
        assert [r.status for r in s.query(RunRow)] == ["interrupted"]
    assert eng.verify(check_files=False).ok
    assert 0 < eng.store.catalog.counts()["sources"] < 60


def test_sigint_stops_the_cli_ingest_promptly_and_the_store_stays_consistent(
    tmp_path: Path, scifact_texts, text_files
) -> None:
    from retriever.catalog.models import RunRow
    from retriever.maintenance.verify import verify

    files = text_files(tmp_path / "corpus", scifact_texts(200))
    store_dir = tmp_path / "store"
    proc = _start(store_dir, tmp_path / "corpus")
    lines: list[str] = []
    _collect(proc, lines)
    try:
        _wait_for_items(store_dir / "catalog.sqlite", proc, timeout=300)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    time.sleep(0.2)  # let the reader thread take the last lines
    assert rc == 130, "".join(lines)
    assert elapsed < 3.0, f"exited {elapsed:.1f} s after SIGINT"
    assert "mmrag: interrupted" in "".join(lines)

    store = Store(store_dir, Config.load(store_dir), create=False)
    try:
        report = verify(store, check_files=False)
        assert report.ok, report.to_dict()
        committed = store.catalog.counts()["sources"]
        assert 0 < committed < len(files)
        with store.catalog.session() as s:
            assert [r.status for r in s.query(RunRow)] == ["interrupted"]
    finally:
        store.close()

    again = _start(store_dir, tmp_path / "corpus")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert re.match(rf"added {len(files) - committed}, updated 0, unchanged {committed}, failed 0", out), out
    store = Store(store_dir, Config.load(store_dir), create=False)
    try:
        final = verify(store, check_files=False)
        assert final.clean, final.to_dict()
        assert store.catalog.counts()["sources"] == len(files)
    finally:
        store.close()
