"""API keys, scopes and rate limits of the HTTP service, and ``mmrag keys`` / ``mmrag serve --host``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import create_app
from pipelines.server.auth import AccessMiddleware
from pipelines.server.limits import ServerLimits
from pipelines.synthetic import generate
from retriever.catalog.api_keys import key_digest
from retriever.config import Config, eval_data_dir
from retriever.store import Store

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("auth")
    docs, inbox = root / "docs", root / "inbox"
    docs.mkdir()
    inbox.mkdir()
    shutil.copy(DATA / "notes" / "bicycle_maintenance.md", docs / "bicycle_maintenance.md")
    sample = generate(5, seed=11, size=96, balanced=True)[0]
    sample.image.save(docs / "shape.png")
    return {"root": root, "docs": docs, "inbox": inbox, "image": docs / "shape.png"}


@pytest.fixture(scope="module")
def engine(corpus: dict[str, Path], tiny_clip_spec: str, tiny_clip_encoder, text_encoder):
    eng = Engine.open(corpus["root"] / "store", overrides={"models.clip": tiny_clip_spec},
                      clip=tiny_clip_encoder, text=text_encoder)
    report = eng.ingest([corpus["docs"]])
    assert report.failed == [], report.to_dict()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def keys(engine: Engine) -> dict[str, str]:
    """One key per scope (created after the no-key test of this module has run)."""
    catalog = engine.store.catalog
    return {scope: catalog.create_api_key(f"test-{scope}", scope).key for scope in ("read", "ingest", "admin")}


@pytest.fixture(scope="module")
def app_client(engine: Engine, corpus: dict[str, Path]):
    with TestClient(create_app(engine, allow_ingest_under=[corpus["inbox"]])) as c:
        yield c


def _requests(engine: Engine, corpus: dict[str, Path]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, url, request arguments, least scope) for every endpoint but /healthz."""
    items = engine.items().values()
    text_id = next(r.id for r in items if not r.thumbnail)
    visual_id = next(r.id for r in items if r.thumbnail)
    image = corpus["image"].read_bytes()
    speech = (eval_data_dir() / "audio" / "jfk.flac").read_bytes()
    return [
        ("GET", "/stats", {}, "read"),
        ("GET", "/openapi.json", {}, "read"),
        ("GET", "/search?q=chain", {}, "read"),
        ("POST", "/search", {"json": {"text": "chain"}}, "read"),
        ("POST", "/search/image", {"files": {"image": ("s.png", io.BytesIO(image), "image/png")}}, "read"),
        ("POST", "/ask", {"json": {"question": "how do I oil a chain?"}}, "read"),
        ("POST", "/ask/stream", {"json": {"question": "how do I oil a chain?"}}, "read"),
        ("POST", "/search/audio", {"files": {"audio": ("jfk.flac", io.BytesIO(speech), "audio/flac")}}, "read"),
        ("GET", f"/items/{text_id}/open", {}, "read"),
        ("GET", f"/items/{visual_id}/thumbnail", {}, "read"),
        ("POST", "/links", {"json": {"urls": [f"/items/{visual_id}/thumbnail"]}}, "read"),
        ("POST", "/ingest", {"json": {"paths": [str(corpus["inbox"])]}}, "ingest"),
        ("GET", "/jobs", {}, "ingest"),
    ]


def _assert_served(client: TestClient, method: str, url: str, resp: httpx.Response, key: str | None,
                   finished_job) -> None:
    """A successful answer: 200, or 202 for POST /ingest, whose job is then waited for."""
    if (method, url) != ("POST", "/ingest"):
        assert resp.status_code == 200, (method, url, resp.text)
        return
    job = finished_job(client, resp, {"Authorization": f"Bearer {key}"} if key else None)
    assert job["status"] == "done", job


def _call(client: TestClient, method: str, url: str, kwargs: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kwargs = {k: ({n: (f[0], io.BytesIO(f[1].getvalue()), f[2]) for n, f in v.items()} if k == "files" else v)
              for k, v in kwargs.items()}
    return client.request(method, url, headers=headers, **kwargs)


def _assert_refused(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "type"}, body
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), resp.headers


def test_without_keys_every_endpoint_is_open(app_client: TestClient, engine: Engine, corpus,
                                             finished_job) -> None:
    assert not engine.store.catalog.has_active_api_keys()
    for method, url, kwargs, _scope in _requests(engine, corpus):
        resp = _call(app_client, method, url, kwargs, key=None)
        _assert_served(app_client, method, url, resp, None, finished_job)


def test_every_endpoint_needs_a_key_of_the_right_scope(app_client: TestClient, engine: Engine, corpus,
                                                       keys: dict[str, str], finished_job) -> None:
    texts = []
    assert app_client.get("/healthz").status_code == 200  # never needs a key
    for method, url, kwargs, needed in _requests(engine, corpus):
        _assert_refused(_call(app_client, method, url, kwargs, key=None), 401)
        _assert_refused(_call(app_client, method, url, kwargs, key="mmrag_" + "x" * 43), 401)
        _assert_refused(_call(app_client, method, url, kwargs, key=keys["read"][:-1]), 401)
        for scope in ("read", "ingest", "admin"):
            resp = _call(app_client, method, url, kwargs, key=keys[scope])
            allowed = {"read": 0, "ingest": 1, "admin": 2}[scope] >= {"read": 0, "ingest": 1}[needed]
            if allowed:
                _assert_served(app_client, method, url, resp, keys[scope], finished_job)
            else:
                _assert_refused(resp, 403)
                assert needed in resp.json()["error"]
            texts.append(resp.text + json.dumps(dict(resp.headers)))
    for key in keys.values():
        assert not any(key in t or key_digest(key) in t for t in texts)


def test_jobs_need_the_ingest_scope(app_client: TestClient, corpus, keys: dict[str, str], finished_job) -> None:
    def auth(scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[scope]}"}

    started = app_client.post("/ingest", json={"paths": [str(corpus["inbox"])]}, headers=auth("ingest"))
    job = finished_job(app_client, started, auth("ingest"))
    for url in ("/jobs", job["url"], "/jobs/0123456789abcdef"):
        _assert_refused(app_client.get(url), 401)
        refused = app_client.get(url, headers=auth("read"))
        _assert_refused(refused, 403)
        assert "'ingest'" in refused.json()["error"] and str(corpus["inbox"]) not in refused.text
    assert app_client.get(job["url"], headers=auth("admin")).json() == job
    assert job in app_client.get("/jobs", headers=auth("ingest")).json()["jobs"]
    _assert_refused(app_client.get("/jobs/0123456789abcdef", headers=auth("ingest")), 404)


def test_revoking_a_key_takes_effect_at_once(app_client: TestClient, engine: Engine) -> None:
    catalog = engine.store.catalog
    key = catalog.create_api_key("short-lived", "read").key
    headers = {"Authorization": f"Bearer {key}"}
    assert app_client.get("/stats", headers=headers).status_code == 200
    record = catalog.revoke_api_key("short-lived")
    assert record.revoked
    _assert_refused(app_client.get("/stats", headers=headers), 401)


def test_revoking_the_last_key_keeps_a_required_key_api_shut(engine: Engine, corpus) -> None:
    with TestClient(create_app(engine, require_keys=True)) as c:
        key = engine.store.catalog.create_api_key("only", "admin").key
        assert c.get("/stats", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        engine.store.catalog.revoke_api_key("only")
        _assert_refused(c.get("/stats"), 401)


def test_the_rate_limit_answers_429_with_retry_after(engine: Engine, keys: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {keys['read']}"}
    with TestClient(create_app(engine, limits=ServerLimits(requests_per_minute=2))) as c:
        assert [c.get("/stats", headers=headers).status_code for _ in range(2)] == [200, 200]
        resp = c.get("/stats", headers=headers)
        _assert_refused(resp, 429)
        assert int(resp.headers["Retry-After"]) >= 1
        assert c.get("/stats", headers={"Authorization": f"Bearer {keys['admin']}"}).status_code == 200  # per key


class _NoKeys:
    def has_active_api_keys(self) -> bool:
        return False


def test_concurrent_asks_over_the_limit_get_503_with_retry_after() -> None:
    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def slow_app(scope, receive, send) -> None:
        await release.wait()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        middleware = AccessMiddleware(slow_app, _NoKeys, ServerLimits(max_concurrent_asks=1))  # type: ignore[arg-type]
        scope = {"type": "http", "method": "POST", "path": "/ask", "headers": [], "client": ("1.2.3.4", 1)}
        first = asyncio.create_task(middleware(scope, None, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        await middleware(scope, None, send)  # type: ignore[arg-type]
        release.set()
        await first

    asyncio.run(scenario())
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]


# ---- the command line ------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture()
def empty_store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    Store(root, Config.load(root, {}), create=True).close()
    return root


def test_keys_create_list_revoke(empty_store: Path) -> None:
    store = str(empty_store)
    created = _cli("keys", "create", "--name", "ci", "--scope", "ingest", "--store", store, "--json")
    assert created.returncode == 0, created.stderr
    new = json.loads(created.stdout)
    key = new["key"]
    assert key.startswith("mmrag_") and len(key) >= 40 and new["scope"] == "ingest"
    plain = _cli("keys", "create", "--name", "other", "--scope", "read", "--store", store)
    assert plain.returncode == 0 and plain.stdout.strip().startswith("mmrag_"), plain.stderr
    listed = _cli("keys", "list", "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["scope"], r["revoked"]) for r in rows] == [("ci", "ingest", False), ("other", "read", False)]
    assert rows[0]["id"] == key[: len(rows[0]["id"])] and rows[0]["created_at"]
    assert key not in listed.stdout and key_digest(key) not in listed.stdout and "digest" not in listed.stdout
    revoked = _cli("keys", "revoke", "ci", "--store", store)
    assert revoked.returncode == 0, revoked.stderr
    again = _cli("keys", "revoke", rows[0]["id"], "--store", store)
    assert again.returncode == 2 and "no key named" in again.stderr
    rows = json.loads(_cli("keys", "list", "--store", store, "--json").stdout)
    assert [r["revoked"] for r in rows] == [True, False]


def test_keys_create_refuses_a_bad_scope(empty_store: Path) -> None:
    proc = _cli("keys", "create", "--name", "x", "--scope", "root", "--store", str(empty_store))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_serve_on_a_public_address_without_a_key_exits_2(empty_store: Path) -> None:
    # port 0 would bind and serve (and time out here) if the check ran after binding
    proc = _cli("serve", "--store", str(empty_store), "--host", "0.0.0.0", "--port", "0", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "mmrag keys create" in proc.stderr and "--insecure-no-auth" in proc.stderr


def test_cross_origin_calls_only_from_the_configured_origins(engine: Engine, keys: dict[str, str]) -> None:
    allowed, other = "https://intranet.example:8443", "https://elsewhere.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(engine)) as plain:  # off by default
        resp = plain.options("/search", headers={"Origin": allowed, **preflight})
        assert "access-control-allow-origin" not in resp.headers
    with TestClient(create_app(engine, cors_origins=[allowed])) as c:
        resp = c.options("/search", headers={"Origin": allowed, **preflight})  # a preflight needs no key
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == allowed
        resp = c.get("/search?q=chain", headers={"Origin": allowed, "Authorization": f"Bearer {keys['read']}"})
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == allowed
        resp = c.get("/search?q=chain", headers={"Origin": other, "Authorization": f"Bearer {keys['read']}"})
        assert "access-control-allow-origin" not in resp.headers
        assert c.get("/search?q=chain", headers={"Origin": allowed}).status_code == 401  # still needs its key
    from retriever.errors import ConfigError

    with pytest.raises(ConfigError, match="no path"):
        create_app(engine, cors_origins=["https://intranet.example/app"])
