"""Every request is bounded and every error is JSON: body size, query length, filters, echoes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import ServerLimits, create_app
from retriever.config import Config
from retriever.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, text_encoder):
    docs = tmp_path_factory.mktemp("limits") / "docs"
    docs.mkdir()
    shutil.copy(DATA / "notes" / "bicycle_maintenance.md", docs / "bicycle_maintenance.md")
    eng = Engine.open(docs.parent / "store", overrides={"models.clip": "none"}, text=text_encoder)
    assert eng.ingest([docs]).added == 1
    yield eng
    eng.close()


def _json_error(resp: Any, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) >= {"error", "type"}, body
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return body


class Upload:
    """A raw ASGI call of ``app``: a body sent in chunks, and how many of them the app read."""

    def __init__(self, headers: list[tuple[bytes, bytes]], chunks: int, chunk: bytes) -> None:
        self.headers, self.chunks, self.chunk, self.read = headers, chunks, chunk, 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        self.read += 1
        more = self.read < self.chunks
        return {"type": "http.request", "body": self.chunk, "more_body": more}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def call(self, app: Any, path: str = "/search") -> tuple[int, dict]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "",
                 "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *self.headers],
                 "client": ("127.0.0.1", 1), "server": ("test", 80)}
        anyio.run(app, scope, self.receive, self.send)
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], json.loads(body)


def test_a_declared_oversized_body_is_refused_before_it_is_read(engine: Engine) -> None:
    app = create_app(engine)
    upload = Upload([(b"content-length", str(50 * 2**20).encode())], chunks=800, chunk=b"x" * 65536)
    status, body = upload.call(app)
    assert status == 413 and upload.read == 0, (status, upload.read)
    assert body["type"] == "BodyTooLarge" and f"over the limit of {2**20} bytes" in body["error"]
    assert str(50 * 2**20) in body["error"] and "POST /search" in body["error"]


def test_a_chunked_body_is_cut_off_at_the_limit(engine: Engine) -> None:
    app = create_app(engine, limits=ServerLimits(max_body_bytes=256 * 1024))
    upload = Upload([], chunks=800, chunk=b"x" * 65536)  # 50 MB without a Content-Length
    status, body = upload.call(app)
    assert status == 413 and body["type"] == "BodyTooLarge", body
    assert upload.read <= 5, f"read {upload.read} chunks of 64 KiB for a limit of 256 KiB"
    assert "over the limit of 262144 bytes" in body["error"]


def test_bodies_under_the_limit_and_streamed_ones_work(client: TestClient) -> None:
    body = json.dumps({"text": "chain lubricant", "k": 2}).encode()
    streamed = iter([body[:10], body[10:]])  # no Content-Length: sent chunked
    resp = client.post("/search", content=streamed, headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.json()["hits"], resp.text
    big = client.post("/search", content=json.dumps({"text": "x" * (2**20)}).encode(),
                      headers={"content-type": "application/json"})
    _json_error(big, 413, "over the limit")
    assert len(big.content) < 300


def test_a_5_mb_query_is_refused_without_echo(client: TestClient) -> None:
    resp = client.post("/search", json={"text": "a" * 5_000_000})
    _json_error(resp, 413, "over the limit")
    assert len(resp.content) < 300


@pytest.mark.parametrize("method", ["get", "post_search", "post_ask"])
def test_query_text_over_2000_characters_is_refused_without_echo(client: TestClient, method: str) -> None:
    text = "spoke " * 400  # 2,400 characters
    if method == "get":
        resp = client.get("/search", params={"q": text})
    elif method == "post_search":
        resp = client.post("/search", json={"text": text})
    else:
        resp = client.post("/ask", json={"question": text})
    body = _json_error(resp, 422, "at most 2000 characters", f"str of {len(text)} characters")
    assert len(resp.content) < 600 and text not in body["error"]
    ok = client.get("/search", params={"q": ("spoke " * 400)[:2000]})
    assert ok.status_code == 200 and len(ok.json()["query"]["text"]) == 2000


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ({f"key{i}": i for i in range(17)}, ["at most 16 filters", "got 17"]),
        ({"source": "*" * 1025}, ["'where.source'", "at most 1024 characters"]),
        ({"author": "x" * 1025}, ["'where.author'", "at most 1024 characters"]),
        ({"k" * 1025: "x"}, ["where key", "1 to 1024 characters"]),
        ({"author": ["a", "b"]}, ["'where.author'", "string, number or boolean"]),
        ({"author": {"nested": 1}}, ["'where.author'", "string, number or boolean"]),
    ],
)
def test_where_filters_are_bounded(client: TestClient, where: dict, words: list[str]) -> None:
    resp = client.post("/search", json={"text": "chain", "where": where})
    _json_error(resp, 422, *words)
    assert len(resp.content) < 1500


def test_where_filters_within_the_limits_are_applied(client: TestClient) -> None:
    where = {"source": "*bicycle*", "modality": "text"}
    resp = client.post("/search", json={"text": "chain", "where": where})
    assert resp.status_code == 200 and resp.json()["hits"], resp.text
    assert resp.json()["query"]["where"] == where
    where = {**where, **{f"key{i}": i for i in range(14)}}  # 16 filters: the most accepted
    resp = client.post("/search", json={"text": "chain", "where": where})
    assert resp.status_code == 200 and resp.json()["hits"] == []  # no item has metadata key0/key1


def test_limits_are_settings_and_the_schema_states_them(engine: Engine) -> None:
    limits = ServerLimits(max_query_chars=50, max_k=20, max_where_keys=2)
    with TestClient(create_app(engine, limits=limits)) as c:
        parameters = c.get("/openapi.json").json()["paths"]["/search"]["get"]["parameters"]
        q = next(p for p in parameters if p["name"] == "q")
        assert q["schema"]["maxLength"] == 50 and q["schema"]["minLength"] == 1
        _json_error(c.get("/search", params={"q": "x" * 51}), 422, "at most 50 characters")
        _json_error(c.post("/search", json={"text": "chain", "k": 21}), 422, "'k'", "20")
        three = {"text": "chain", "where": {"a": 1, "b": 2, "c": 3}}
        _json_error(c.post("/search", json=three), 422, "at most 2 filters")
        assert c.get("/search", params={"q": "x" * 50}).status_code == 200
    with pytest.raises(ConfigError, match=r"server.max_body_bytes must be an integer >= 1, got 0"):
        ServerLimits(max_body_bytes=0)


def test_limits_come_from_the_store_config_and_overrides(tmp_path: Path, text_encoder) -> None:
    """``[server]`` in mmrag.toml, and ``--set server.KEY=VALUE`` (string overrides), reach the app."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "mmrag.toml").write_text("[server]\nmax_query_chars = 50\nmax_k = 30\n")
    overrides = {"models.clip": "none", "server.max_k": "20"}
    with Engine.open(store, overrides=overrides, text=text_encoder) as eng:
        assert (eng.config.server.max_query_chars, eng.config.server.max_k) == (50, 20)
        with TestClient(create_app(eng)) as c:
            _json_error(c.get("/search", params={"q": "x" * 51}), 422, "at most 50 characters")
            _json_error(c.post("/search", json={"text": "chain", "k": 21}), 422, "'k'", "20")
            assert c.post("/search", json={"text": "chain", "k": 20}).status_code == 200
    with pytest.raises(ConfigError, match=r"server.requests_per_minute must be an integer >= 1, got 0"):
        Config.load(store, {"server.requests_per_minute": "0"}, env={})
    with pytest.raises(ConfigError, match=r"unknown setting 'server.max_kk'"):
        Config.load(store, {"server.max_kk": "1"}, env={})


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"text": "caf\xe9"}', ["not UTF-8", "expected a JSON object"]),
        (b"\xff\xfe\x00\x00garbage", ["not UTF-8"]),
        (b'{"text": "x",', ["not valid JSON"]),
    ],
)
def test_undecodable_bodies_are_json_errors(client: TestClient, content: bytes, words: list[str]) -> None:
    resp = client.post("/search", content=content, headers={"content-type": "application/json"})
    assert resp.status_code in (400, 422)
    _json_error(resp, resp.status_code, *words)


def test_bad_content_length_and_wrong_methods_are_json_errors(engine: Engine, client: TestClient) -> None:
    upload = Upload([(b"content-length", b"12abc")], chunks=1, chunk=b"{}")
    status, body = upload.call(create_app(engine))
    assert status == 400 and "Content-Length" in body["error"] and upload.read == 0
    resp = client.delete("/search")
    _json_error(resp, 405)
    assert resp.headers["allow"] == "GET, POST"  # every method of the path


def test_an_unexpected_failure_is_a_json_500() -> None:
    broken = SimpleNamespace(store=None, config=Config())  # no store: every engine call fails
    with TestClient(create_app(broken), raise_server_exceptions=False) as c:
        resp = c.get("/stats")
        health = c.get("/healthz")
    body = _json_error(resp, 500, "internal error", "AttributeError", "server log")
    assert body["type"] == "InternalError"
    assert health.status_code == 503 and health.json()["ok"] is False
