"""The mmrag command line, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, store: Path, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMRAG_STORE": str(store), "MMRAG_CLIP_MODEL": "none"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=600,
        stdin=subprocess.DEVNULL, check=False,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


@pytest.fixture()
def docs(tmp_path: Path, eval_dir: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    shutil.copy(eval_dir / "pdf/groundtruth/docling__multi_page.docling.md", root / "history.md")
    shutil.copy(eval_dir / "pdf/groundtruth/pypdf__crazyones.txt", root / "crazy.txt")
    (root / "broken.png").write_text("not an image")
    return root


def test_ingest_search_stats_remove_json(tmp_path: Path, docs: Path) -> None:
    store = tmp_path / "store"
    out = _run("ingest", str(docs), "--json", store=store)
    report = json.loads(out.stdout)  # stdout is exactly one JSON document
    assert report["added"] == 2 and [Path(f["path"]).name for f in report["failed"]] == ["broken.png"]

    strict = _run("ingest", str(docs), "--json", "--strict", store=store, check_rc=3)
    assert json.loads(strict.stdout)["unchanged"] == 2

    found = json.loads(_run("search", "first widely used word processing program", "--k", "3", "--json", store=store).stdout)
    short = json.loads(_run("search", "first widely used word processing program", "-k", "1", "--json", store=store).stdout)
    assert len(found["hits"]) == 3 and [h["item_id"] for h in short["hits"]] == [found["hits"][0]["item_id"]]
    top = found["hits"][0]
    assert top["source_name"] == "history.md" and "WordStar" in top["text"]
    assert set(top) >= {"item_id", "score", "scores", "modality", "source", "locator", "text", "thumbnail", "citation"}

    stats = json.loads(_run("stats", "--json", store=store).stdout)
    assert stats["sources_by_status"] == {"ok": 2, "failed": 1}

    removed = json.loads(_run("remove", str(docs / "crazy.txt"), "--json", store=store).stdout)
    assert removed == {"removed": 1}
    human = _run("search", "misfits rebels troublemakers", store=store).stdout
    assert "crazy.txt" not in human

    # a reader that stops early (`mmrag stats | head -1`): exit 141 quietly, no traceback
    env = {**os.environ, "MMRAG_STORE": str(store), "MMRAG_CLIP_MODEL": "none"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stats"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    assert proc.wait(timeout=600) == 141
    assert proc.stderr.read() == b""


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _run("frobnicate", store=tmp_path / "s", check_rc=2).returncode == 2
    proc = _run("search", "--json", store=tmp_path / "s", check_rc=2)
    assert "search needs" in proc.stderr and proc.stdout == ""
    proc = _run("search", "x", "--modality", "smell", store=tmp_path / "s", check_rc=2)
    assert "smell" in proc.stderr
