"""The catalog on a real PostgreSQL server (started on a temp dir and a loopback port)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.engine import Engine
from retriever.config import Config
from retriever.errors import StoreLockedError
from retriever.store import Store

REPO = Path(__file__).resolve().parents[2]


def test_engine_on_postgres(pg_url: str, tmp_path: Path, eval_dir: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(eval_dir / "pdf/groundtruth/docling__multi_page.docling.md", docs / "history.md")
    shutil.copy(eval_dir / "pdf/groundtruth/docling__amt_handbook_sample.docling.md", docs / "nuts.md")
    overrides = {"models.clip": "none", "catalog_url": pg_url}
    with Engine.open(tmp_path / "store", overrides=overrides) as eng:
        report = eng.ingest([docs])
        assert report.added == 2 and not report.failed
        assert not (tmp_path / "store" / "catalog.sqlite").exists()
        before = [(h.item_id, round(h.score, 9)) for h in eng.search(text="spring inside a self-locking nut", k=5)]
        assert eng.search(text="spring inside a self-locking nut", k=1)[0].source_name == "nuts.md"
        assert eng.ingest([docs]).unchanged == 2
        (docs / "nuts.md").write_text("Completely different content about tomatoes growing in a greenhouse.\n")
        assert eng.ingest([docs]).updated == 1
    with Engine.open(tmp_path / "store", overrides=overrides) as eng:
        hit = eng.search(text="tomatoes in a greenhouse", k=1)[0]
        assert hit.source_name == "nuts.md" and "tomatoes" in hit.text
        assert eng.stats()["items"] == eng.stats()["spaces"]["text"]["vectors"]
    assert before


# ---- one writer across machines: two store directories on one PostgreSQL catalog ------------------
_HOLDER = (
    "import sys\n"
    "from retriever.config import Config; from retriever.store import Store\n"
    "s = Store(sys.argv[1], Config.load(sys.argv[1], {'catalog_url': sys.argv[2]}))\n"
    "with s.write_lock():\n"
    "    print('locked', flush=True); sys.stdin.read()\n"  # holds until its stdin closes
)


def _holder(store_dir: Path, url: str) -> subprocess.Popen[str]:
    """Another machine's writer: a process holding the write lock of its own store directory."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store_dir), url], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _store(store_dir: Path, url: str) -> Store:
    return Store(store_dir, Config.load(store_dir, {"catalog_url": url}))


def test_one_writer_per_postgres_catalog_across_store_directories(pg_url: str, tmp_path: Path) -> None:
    b, c = _store(tmp_path / "machine-b", pg_url), _store(tmp_path / "machine-c", pg_url)
    try:
        holder = _holder(tmp_path / "machine-a", pg_url)
        try:
            held = rf"another writer holds the write lock of catalog .*\(pid {holder.pid} on "
            with pytest.raises(StoreLockedError, match=held), b.write_lock():
                pass
            assert holder.stdin is not None
            holder.stdin.close()  # A finishes while B waits for it
            with b.write_lock(wait_s=30):
                assert holder.wait(timeout=30) == 0
                # a second store directory of this same process is refused by the catalog lock too
                same = f"same process \\(pid {os.getpid()}\\)"
                with pytest.raises(StoreLockedError, match=same), c.write_lock():
                    pass
        finally:
            holder.kill()
            holder.wait(timeout=30)
        with c.write_lock():  # released on leaving
            pass

        # a writer killed while it holds the lock loses it with its session
        holder = _holder(tmp_path / "machine-a", pg_url)
        try:
            with pytest.raises(StoreLockedError), b.write_lock():
                pass
        finally:
            holder.kill()
            holder.wait(timeout=30)
        with b.write_lock(wait_s=10):
            pass
    finally:
        b.close()
        c.close()
