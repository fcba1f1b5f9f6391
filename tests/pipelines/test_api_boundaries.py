"""The Python API and CLI at their boundary: a str is one path, bad arguments get clear errors,
stores remember their models, reading never creates a store, and nothing is lost by a bad call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.commands import format_hits, printable
from pipelines.engine import Engine
from retriever.config import Config
from retriever.errors import (
    ArgumentError,
    InputNotFound,
    MmragError,
    QueryError,
    StoreError,
    StoreLockedError,
)


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "nuts.md").write_text("Self-locking nuts are used on aircraft where vibration would loosen a plain nut.\n")
    (root / "coffee.txt").write_text("Brew filter coffee with water just off the boil, about 93 degrees Celsius.\n")
    return root


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MMRAG_CLIP_MODEL", "MMRAG_TEXT_MODEL", "MMRAG_STORE", "MMRAG_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def _sources(eng: Engine) -> list[str]:
    return sorted(Path(s.uri).name for s in eng.store.catalog.sources())


def test_ingest_of_a_str_is_one_path(text_store: Engine, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(docs.parent)
    report = text_store.ingest("docs")  # relative: used to be read as the paths 'd', 'o', 'c', 's'
    assert report.added == 2 and not report.skipped
    assert text_store.ingest(str(docs / "nuts.md")).unchanged == 1
    assert text_store.ingest(docs / "coffee.txt").unchanged == 1  # a PathLike alone is one path too


def test_remove_of_a_str_removes_only_that_source(text_store: Engine, docs: Path) -> None:
    text_store.ingest([docs])
    assert text_store.remove(str(docs / "nuts.md")) == 1  # used to remove every source ('/' matched all)
    assert _sources(text_store) == ["coffee.txt"]


def test_remove_takes_globs_only_when_asked(text_store: Engine, docs: Path) -> None:
    text_store.ingest([docs])
    assert text_store.remove(str(docs / "*.md")) == 0
    assert _sources(text_store) == ["coffee.txt", "nuts.md"]
    assert text_store.remove(str(docs / "*.md"), glob=True) == 1
    assert _sources(text_store) == ["coffee.txt"]
    assert text_store.remove(docs) == 1  # a directory names everything under it


def test_missing_input_path_is_an_error_before_anything_is_written(text_store: Engine, docs: Path) -> None:
    text_store.ingest([docs])
    with pytest.raises(InputNotFound, match="no-such-dir"):
        text_store.ingest([docs, docs.parent / "no-such-dir"])
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        text_store.ingest(docs.parent / "no-such-dir")
    assert _sources(text_store) == ["coffee.txt", "nuts.md"]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda e: e.search(text=123), QueryError, "query text must be a str, got int"),
        (lambda e: e.search(text="nuts", where="source"), QueryError, "where must be a mapping"),
        (lambda e: e.search(text="nuts", modalities=[3]), QueryError, "modalities must be names"),
        (lambda e: e.search(text="nuts\udc80"), QueryError, "lone surrogate"),
        (lambda e: e.search(text="nuts", image=42), QueryError, "image must be a file path or a PIL image"),
        (lambda e: e.remove([None]), ArgumentError, "got NoneType"),
        (lambda e: e.remove([]), ArgumentError, "at least one path"),
        (lambda e: e.ingest(b"docs"), ArgumentError, "a path or a list of paths"),
        (lambda e: e.ingest(42), ArgumentError, "a path or a list of paths"),
        (lambda e: e.ask(7), QueryError, "question must be a str"),
    ],
)
def test_bad_arguments_say_what_came_and_what_was_expected(
    text_store: Engine, docs: Path, call, error: type, message: str
) -> None:
    text_store.ingest([docs])
    with pytest.raises(error, match=message):
        call(text_store)
    assert _sources(text_store) == ["coffee.txt", "nuts.md"]


def test_a_single_modality_name_is_one_modality(text_store: Engine, docs: Path) -> None:
    text_store.ingest([docs])
    assert text_store.search(text="self-locking nuts", modalities="text")[0].source_name == "nuts.md"
    assert text_store.search(text="self-locking nuts", modalities="pdf") == []


def test_engine_open_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError, match="got int 123"):
        Engine.open(123)  # type: ignore[arg-type]
    assert not (tmp_path / "123").exists()
    with pytest.raises(ArgumentError, match="expects a mapping"):
        Engine.open(tmp_path / "s", overrides="x")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="no store at"):
        Engine.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "s").exists()


def test_use_after_close_raises(tmp_path: Path, docs: Path, text_encoder) -> None:
    eng = Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder)
    eng.ingest([docs])
    eng.close()
    for call in (lambda: eng.search(text="nuts"), lambda: eng.ingest([docs]), eng.stats, lambda: eng.ask("nuts?"),
                 lambda: eng.remove([docs])):
        with pytest.raises(StoreError, match="was closed"):
            call()


def test_second_engine_in_one_process_is_told_who_holds_the_lock(tmp_path: Path, docs: Path, text_encoder) -> None:
    with Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder) as first:
        first.ingest([docs])
        with (Engine.open(tmp_path / "store", text=text_encoder) as second, first.store.write_lock(),
              pytest.raises(StoreLockedError, match=f"same process \\(pid {os.getpid()}\\)")):
            second.remove([docs / "nuts.md"])


def test_store_remembers_its_models_for_reading(
    tmp_path: Path, docs: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder
) -> None:
    store = tmp_path / "store"
    overrides = {"models.clip": tiny_clip_spec, "models.clip_texts": False}
    with Engine.open(store, overrides=overrides, clip=tiny_clip_encoder, text=text_encoder) as eng:
        eng.ingest([docs])
        before = [(h.item_id, round(h.score, 6)) for h in eng.search(text="filter coffee temperature", k=3)]
    with Engine.open(store, text=text_encoder) as eng:  # no CLIP settings: the store's own, loaded from them
        assert eng.config.models.clip_texts is False
        assert eng.config.models.clip == eng.store.recorded_models()["models.clip"]
        assert set(eng.stats()["spaces"]) == {"clip", "text"}
        assert [(h.item_id, round(h.score, 6)) for h in eng.search(text="filter coffee temperature", k=3)] == before
        eng.ingest([docs])  # writing with the recorded models is fine
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "stats", "--json", "--store", str(store)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["items"] >= 2


def test_a_first_ingest_whose_clip_never_loaded_does_not_pin_the_store(
    tmp_path: Path, docs: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder
) -> None:
    store = tmp_path / "store"
    bad = f"ViT-B-32@{tmp_path / 'missing-weights.safetensors'}"
    (tmp_path / "missing-weights.safetensors").write_bytes(b"not weights")
    # CLIP text-tower vectors of the texts make this ingest load the (broken) CLIP
    clip_texts = {"models.clip_texts": True}
    with Engine.open(store, overrides={"models.clip": bad, **clip_texts}, text=text_encoder) as eng, \
            pytest.raises(MmragError):
        eng.ingest([docs])
    with Engine.open(store, overrides={"models.clip": tiny_clip_spec, **clip_texts},  # was StoreMismatchError
                     clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert eng.ingest([docs]).added == 2
    with Engine.open(store, clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert eng.search(text="self-locking nuts", k=1)[0].source_name == "nuts.md"


def test_config_knows_what_was_set_on_purpose() -> None:
    cfg = Config.load("s", env={"MMRAG_TEXT_MODEL": "all-MiniLM-L6-v2"}, overrides={"search.k": 5})
    assert cfg.is_explicit("models.text") and cfg.is_explicit("search.k") and not cfg.is_explicit("models.clip")
    with pytest.raises(MmragError, match="unknown setting 'explicit'"):
        cfg.with_overrides({"explicit": "x"})


def test_human_output_escapes_control_characters(text_store: Engine, docs: Path) -> None:
    (docs / "two\nlines.txt").write_text("A file whose name has a newline talks about sprockets and chains.\n")
    text_store.ingest([docs])
    hits = text_store.search(text="sprockets and chains", k=1)
    lines = format_hits(hits).splitlines()
    assert lines[0].startswith(" 1. two\\nlines.txt") and len(lines) == 2
    assert printable("tab\there") == "tab\\there"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}, "MMRAG_CLIP_MODEL": "none"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=False)


def test_cli_reading_commands_never_create_a_store(tmp_path: Path) -> None:
    for args in (["search", "nuts"], ["stats"], ["ask", "why?"], ["remove", "x"]):
        proc = _cli(*args, "--store", str(tmp_path / "typo"), cwd=tmp_path)
        assert proc.returncode == 2 and "no store at" in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "typo").exists()


def test_cli_missing_input_is_a_usage_error_before_anything_is_created(tmp_path: Path) -> None:
    proc = _cli("ingest", str(tmp_path / "nope"), "--strict", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr and "nope" in proc.stderr
    assert not (tmp_path / "store").exists()


def test_cli_remove_says_when_nothing_matched(tmp_path: Path, docs: Path) -> None:
    store = str(tmp_path / "store")
    assert _cli("ingest", str(docs), "--store", store, cwd=tmp_path).returncode == 0
    proc = _cli("remove", "/not/in/store", "--store", store, cwd=tmp_path)
    assert proc.returncode == 0 and "nothing matched" in proc.stdout
    assert _cli("remove", "/not/in/store", "--strict", "--store", store, cwd=tmp_path).returncode == 3
    proc = _cli("remove", str(docs / "*.md"), "--store", store, cwd=tmp_path)
    assert "--glob" in proc.stdout
    proc = _cli("remove", str(docs / "*.md"), "--glob", "--json", "--store", store, cwd=tmp_path)
    assert json.loads(proc.stdout) == {"removed": 1}
