"""Fixtures for the tests of indexers/: the evaluation data by kind, ingest contexts, the shared
speech model, engines on the session's models, and SciFact text corpora."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from indexers.base import IngestContext
from retriever.config import Config


def _data_dir(eval_dir: Path, kind: str, marker: str) -> Path:
    path = eval_dir / kind
    if not (path / marker).is_file():
        pytest.skip(f"evaluation {kind} data not found at {path} (set MMRAG_EVAL_DATA)")
    return path


@pytest.fixture(scope="session")
def audio_dir(eval_dir: Path) -> Path:
    """The shared audio clips (with ``transcripts.json``)."""
    return _data_dir(eval_dir, "audio", "transcripts.json")


@pytest.fixture(scope="session")
def video_dir(eval_dir: Path) -> Path:
    """The shared video clips (with ``video_annotations.json``)."""
    return _data_dir(eval_dir, "video", "video_annotations.json")


@pytest.fixture(scope="session")
def pdf_dir(eval_dir: Path) -> Path:
    """The shared PDFs (with ``pdf_notes.json``)."""
    return _data_dir(eval_dir, "pdf", "pdf_notes.json")


@pytest.fixture(scope="session")
def coco_photos(eval_dir: Path) -> list[Path]:
    """The shared COCO photos, sorted by name."""
    files = sorted((eval_dir / "images" / "coco").glob("*.jpg"))
    if not files:
        pytest.skip(f"no COCO photos under {eval_dir / 'images' / 'coco'}")
    return files


@pytest.fixture(scope="session")
def ingest_ctx() -> Callable[..., IngestContext]:
    """``ingest_ctx("audio", max_seconds=5.0)``: a fresh ``IngestContext`` whose config has those
    settings of one section (``ingest`` by default) on top of the defaults."""

    def make(section: str = "ingest", /, **values: Any) -> IngestContext:
        return IngestContext(config=Config().with_overrides({f"{section}.{k}": v for k, v in values.items()}))

    return make


def _encode_audio(samples: Any, path: Path, fmt: str, codec: str, rate: int = 16_000) -> Path:
    """Write 16 kHz mono float samples with a PyAV encoder (it resamples to ``rate``); the path."""
    import av
    import numpy as np

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)[None, :]
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = 16_000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def encode_audio() -> Callable[..., Path]:
    """``encode_audio(samples, path, fmt, codec, rate=16000)``: 16 kHz mono float samples written with
    a PyAV encoder (resampled to ``rate``), e.g. ``("mp3", "libmp3lame")``; returns the path."""
    pytest.importorskip("av")
    return _encode_audio


@pytest.fixture(scope="session")
def transcriber() -> Any:
    """The default speech model, loaded once per session; the one ingestors use by default."""
    from indexers.av.transcribe import shared_transcriber
    from retriever.config import AudioConfig

    return shared_transcriber(AudioConfig())


@pytest.fixture()
def open_engine(request: pytest.FixtureRequest, text_encoder: Any) -> Iterator[Callable[..., Any]]:
    """``open_engine(store, overrides, tiny_clip=False, transcriber=None)``: ``Engine.open`` on the
    session's text model; without CLIP unless the overrides name one, or ``tiny_clip`` asks for the
    session's tiny CLIP. Engines opened here are closed after the test."""
    from pipelines.engine import Engine

    opened: list[Any] = []

    def open_(store: Path, overrides: Mapping[str, Any] | None = None, *, tiny_clip: bool = False,
              transcriber: Any = None) -> Any:
        settings = {"models.clip": "none", **(overrides or {})}
        clip = None
        if tiny_clip:
            settings["models.clip"] = request.getfixturevalue("tiny_clip_spec")
            clip = request.getfixturevalue("tiny_clip_encoder")
        eng = Engine.open(store, overrides=settings, text=text_encoder, clip=clip, transcriber=transcriber)
        opened.append(eng)
        return eng

    yield open_
    for eng in opened:
        if not eng.closed:
            eng.close()


@pytest.fixture()
def scifact_store(tmp_path: Path, open_engine: Callable[..., Any], scifact_texts: Callable[..., list[str]],
               text_files: Callable[..., list[Path]]) -> Callable[..., tuple[Any, list[Path]]]:
    """``scifact_store(n, seed=)``: ``n`` SciFact texts written under ``tmp_path / "c"`` and ingested
    into a store at ``tmp_path / "s"``; the open engine and the written paths."""

    def make(n: int, seed: int | None = None) -> tuple[Any, list[Path]]:
        corpus = tmp_path / "c"
        paths = text_files(corpus, scifact_texts(n, seed=seed))
        eng = open_engine(tmp_path / "s")
        eng.ingest([corpus])
        return eng, paths

    return make


@pytest.fixture(scope="session")
def scifact_texts(eval_dir: Path) -> Callable[..., list[str]]:
    """``scifact_texts(n, seed=None, mark="")``: ``n`` SciFact abstracts as text files hold them (the
    first ``n``, or a random sample with ``seed``); with ``mark``, every sentence carries that word
    (so every chunk matches it)."""
    import re

    from pipelines.testing.crash import doc_text, scifact_docs

    docs = scifact_docs(eval_dir)

    def texts(n: int, seed: int | None = None, mark: str = "") -> list[str]:
        picked = docs[:n] if seed is None else random.Random(seed).sample(docs, n)
        out = []
        for doc in picked:
            text = doc_text(doc)
            if mark:
                text = re.sub(r"([.!?])(\s|$)", rf" {mark}\1\2", text[:-1]) + "\n"
            out.append(text)
        return out

    return texts


def _write_texts(root: Path, texts: list[str], prefix: str = "doc") -> list[Path]:
    """Write ``texts`` as ``root/<prefix>000.txt``, ...; returns the paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        path = root / f"{prefix}{i:03d}.txt"
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def text_files() -> Callable[..., list[Path]]:
    """``text_files(root, texts, prefix="doc")``: write ``texts`` as ``root/doc000.txt``, ...; the paths."""
    return _write_texts
