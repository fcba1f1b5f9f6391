"""Shared fixtures: evaluation data, tiny models (cached), and fresh stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """The public evaluation data (``MMRAG_EVAL_DATA``, default ``../shared/eval``)."""
    from retriever.config import eval_data_dir

    path = eval_data_dir()
    if not path.is_dir():
        pytest.skip(f"evaluation data not found at {path} (set MMRAG_EVAL_DATA)")
    return path


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where trained test models are cached between runs (``MMRAG_TEST_CACHE``)."""
    path = Path(os.environ.get("MMRAG_TEST_CACHE", REPO / ".mmrag-cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_clip_spec(cache_dir: Path) -> str:
    """A tiny open_clip model trained on synthetic coloured shapes (cached); its spec string."""
    from pipelines.synthetic import ensure_tiny_clip

    return ensure_tiny_clip(cache_dir / "tiny-clip")


@pytest.fixture(scope="session")
def text_encoder():
    """The packaged MiniLM text encoder, loaded once per session (``Engine(..., text=text_encoder)``)."""
    from retriever.config import ModelsConfig
    from retriever.encoders import build_text_encoder

    return build_text_encoder(ModelsConfig())


@pytest.fixture(scope="session")
def tiny_clip_encoder(tiny_clip_spec: str):
    """The tiny CLIP as an encoder, loaded once per session (``Engine(..., clip=tiny_clip_encoder)``)."""
    from retriever.config import ModelsConfig
    from retriever.encoders import build_clip_encoder

    return build_clip_encoder(ModelsConfig(clip=tiny_clip_spec))


@pytest.fixture()
def text_store(tmp_path: Path, text_encoder):
    """An engine on a fresh store without a CLIP space (text space + BM25 only)."""
    from pipelines.engine import Engine

    eng = Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder)
    yield eng
    eng.close()


@pytest.fixture()
def clip_store(tmp_path: Path, tiny_clip_spec: str, tiny_clip_encoder, text_encoder):
    """An engine on a fresh store with the tiny CLIP model."""
    from pipelines.engine import Engine

    eng = Engine.open(tmp_path / "store", overrides={"models.clip": tiny_clip_spec},
                      clip=tiny_clip_encoder, text=text_encoder)
    yield eng
    eng.close()
