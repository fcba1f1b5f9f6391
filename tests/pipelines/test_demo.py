"""``mmrag demo`` as a user runs it: its own store, honest messages about the CLIP model, and
image queries that show the images first."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import demo

REPO = Path(__file__).resolve().parents[2]


def _corpus(root: Path) -> Path:
    """A copy of the sample corpus (without generated pictures), so the demo writes nothing into the repo."""
    data = root / "data"
    shutil.copytree(REPO / "data", data, ignore=shutil.ignore_patterns("shapes"))
    return data


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> dict:
    """One ``mmrag demo --json`` with ``$MMRAG_STORE`` set and the tiny CLIP already in the demo's cache."""
    root = tmp_path_factory.mktemp("demo")
    cache = root / "cache"
    cache.mkdir()
    (cache / "tiny-clip").symlink_to(Path(tiny_clip_spec.split("@")[0]).parent, target_is_directory=True)
    user_store = root / "user-store"
    env = {k: v for k, v in os.environ.items() if k != "MMRAG_CLIP_MODEL"}
    env.update({"MMRAG_STORE": str(user_store), "MMRAG_CACHE": str(cache)})
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--data", str(_corpus(root)), "--json"],
        capture_output=True, text=True, env=env, check=False, timeout=900, stdin=subprocess.DEVNULL, cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    return {"result": result, "stderr": proc.stderr, "user_store": user_store, "cache": cache}


def test_demo_never_writes_to_the_users_store(demo_run: dict) -> None:
    assert not demo_run["user_store"].exists()
    store = Path(demo_run["result"]["store"])
    assert store.parent == demo_run["cache"] / "demo-stores" and (store / "manifest.json").is_file()
    assert demo_run["result"]["ingest"]["added"] == 18 and demo_run["result"]["ingest"]["failed"] == []


def test_demo_says_cached_only_when_the_cache_was_hit(demo_run: dict) -> None:
    assert demo_run["result"]["clip_source"] == "cached"
    assert "using the tiny demo CLIP cached in" in demo_run["stderr"]
    assert "training" not in demo_run["stderr"]


def test_demo_image_queries_show_the_images_first(demo_run: dict) -> None:
    image_searches = [s for s in demo_run["result"]["searches"] if s["label"] == "text -> image"]
    assert len(image_searches) == 2
    for search in image_searches:
        wanted = "shapes/" + search["query"]["text"].removeprefix("a ").replace(" ", "_") + ".png"
        hits = search["hits"]
        assert hits[0]["source_name"] == wanted, [h["citation"] for h in hits]
        assert [h["modality"] for h in hits] == ["image"] * len(hits), [h["citation"] for h in hits]


def test_demo_answers_cite_the_notes(demo_run: dict) -> None:
    chain, volcano = demo_run["result"]["answers"]
    assert chain["found"] and "replace it then" in chain["text"] and "##" not in chain["text"]
    assert volcano["found"] and "Olympus Mons" in volcano["text"]
    for answer in (chain, volcano):
        assert [c["n"] for c in answer["citations"]] == list(range(1, len(answer["citations"]) + 1))


def test_demo_trains_the_clip_with_progress_then_uses_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short training run (40 steps instead of 1,500) through the demo's own path."""
    monkeypatch.setenv("MMRAG_PROGRESS_SECONDS", "0")
    monkeypatch.delenv("MMRAG_CLIP_MODEL", raising=False)
    spec, how = demo.clip_spec({}, tmp_path, steps=40)
    err = capsys.readouterr().err
    assert how == "trained" and spec.endswith("tiny-clip.safetensors")
    assert "training a tiny demo CLIP" in err and "step 40/40" in err and "trained in" in err
    assert "using the tiny demo CLIP cached" not in err

    again, how = demo.clip_spec({}, tmp_path, steps=40)
    err = capsys.readouterr().err
    assert (again, how) == (spec, "cached")
    assert "using the tiny demo CLIP cached in" in err and "training" not in err


def test_configured_clip_is_used_as_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MMRAG_CLIP_MODEL", "none")
    assert demo.clip_spec({}, tmp_path) == ("none", "configured")
    assert demo.clip_spec({"models.clip": "ViT-B-32@/w.pt"}, tmp_path) == ("ViT-B-32@/w.pt", "configured")
    assert not (tmp_path / "tiny-clip").exists()


def test_demo_store_is_one_per_corpus_and_model(tmp_path: Path) -> None:
    a = demo.demo_store(tmp_path, tmp_path / "data", "m1")
    assert a == demo.demo_store(tmp_path, tmp_path / "x" / ".." / "data", "m1")
    other_corpus = demo.demo_store(tmp_path, tmp_path / "other", "m1")
    other_model = demo.demo_store(tmp_path, tmp_path / "data", "m2")
    assert len({a, other_corpus, other_model}) == 3


def test_demo_reads_the_sample_corpus_of_the_sources_by_default() -> None:
    """Without --data the demo ingests the repository's data/ (notes, PDF, audio), not a folder of its own."""
    assert demo._repo_data() == REPO / "data"
    assert {"notes", "pdf", "audio"} <= {p.name for p in (REPO / "data").iterdir() if p.is_dir()}


def test_demo_help_tells_where_it_writes() -> None:
    from pipelines.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    helps = {a.dest: a.help or "" for a in sub._actions}
    assert "default: $MMRAG_STORE" not in helps["store"] and "demo-stores" in helps["store"], helps["store"]
    assert "./data" not in helps["data"] and "data/" in helps["data"], helps["data"]
