"""The catalog on a real PostgreSQL server (started on a temp dir and a loopback port)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from pipelines.engine import Engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as the 'postgres' user when we are root."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="module")
def pg_url():
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg2")
    # a directory of its own outside pytest's 0700 tree, so the 'postgres' user can enter it
    base = Path(tempfile.mkdtemp(prefix="mmrag-pg-"))
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_postgres(["initdb", "-D", str(data), "-U", "mmrag", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)
    log = base / "server.log"
    subprocess.run(
        _as_postgres(["pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60",
                      "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {base}", "start"]),
        check=True, capture_output=True, timeout=120,
    )
    try:
        subprocess.run(_as_postgres(["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mmrag", "mmrag"]),
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://mmrag@127.0.0.1:{port}/mmrag"
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


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
