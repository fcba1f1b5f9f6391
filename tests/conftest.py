"""Shared fixtures: evaluation data, tiny models (cached), and fresh stores."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
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


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    """A real Milvus 2.3.5 standalone server for the session (the ``milvus-server`` extra), on 127.0.0.1.

    Its binaries are unpacked once into the test cache and hard-linked into a fresh data directory.
    """
    pytest.importorskip("milvus", reason="the Milvus server package is not installed (pip install 'mmrag[milvus-server]')")
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'mmrag[milvus]')")
    from pipelines.testing.milvus_server import MilvusProcess, can_isolate

    why = can_isolate()
    if why:
        pytest.skip(f"cannot start Milvus on loopback only here: {why}")
    server = MilvusProcess(tmp_path_factory.mktemp("milvus"), bin_cache=cache_dir / "milvus-bin").start()
    try:
        yield server.uri
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as the 'postgres' user when we are root."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (a temp data dir, 127.0.0.1, a free port); its URL."""
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
