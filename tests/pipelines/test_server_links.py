"""Signed file links (``POST /links``): what a browser loads in an ``<img>``, ``<video>`` or a new
tab, which cannot send the API key. A link opens one file, until it expires or its key is revoked."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from pipelines.engine import Engine
from pipelines.server.app import create_app
from pipelines.server.limits import ServerLimits
from pipelines.server.signed_links import LinkError, check_link, sign_url
from pipelines.synthetic import generate
from retriever.catalog.models import ApiKeyRow, utcnow

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str, tiny_clip_encoder, text_encoder):
    root = tmp_path_factory.mktemp("links")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(DATA / "notes" / "bicycle_maintenance.md", docs / "bicycle_maintenance.md")
    generate(2, seed=5, size=96, balanced=True)[0].image.save(docs / "shape.png")
    eng = Engine.open(root / "store", overrides={"models.clip": tiny_clip_spec}, clip=tiny_clip_encoder,
                      text=text_encoder)
    assert not eng.ingest([docs]).failed
    yield eng
    eng.close()


@pytest.fixture()
def key(engine: Engine):
    made = engine.store.catalog.create_api_key("links", "read")
    yield made
    if engine.store.catalog.link_secret(made.record.id) is not None:
        engine.store.catalog.revoke_api_key("links")


@pytest.fixture(scope="module")
def urls(engine: Engine) -> tuple[str, str]:
    """The open_url of the note and the thumbnail_url of the picture, as a search returns them
    (asked before any key exists)."""
    with TestClient(create_app(engine)) as c:
        hits = c.post("/search", json={"text": "oil the bicycle chain", "k": 20}).json()["hits"]
    note = next(h for h in hits if h["source_name"].endswith("bicycle_maintenance.md"))
    picture = next(h for h in hits if h.get("thumbnail_url"))
    return note["open_url"].split("#")[0], picture["thumbnail_url"]


def test_without_keys_links_come_back_as_they_are(engine: Engine, urls) -> None:
    note, thumb = urls
    with TestClient(create_app(engine)) as c:
        body = c.post("/links", json={"urls": [note, thumb]}).json()
    assert body == {"urls": [note, thumb], "expires_at": None}


def test_a_signed_link_opens_its_file_without_the_key_and_streams_ranges(engine: Engine, urls, key) -> None:
    note, thumb = urls
    auth = {"Authorization": f"Bearer {key.key}"}
    with TestClient(create_app(engine)) as c:
        assert c.get(thumb).status_code == 401  # the plain URL needs the key now
        body = c.post("/links", json={"urls": [note, thumb]}, headers=auth).json()
        signed_note, signed_thumb = body["urls"]
        assert body["expires_at"] and key.key not in signed_note  # the key never appears in a link
        assert parse_qs(urlsplit(signed_note).query)["kid"] == [key.record.id]
        assert parse_qs(urlsplit(signed_note).query)["v"] == parse_qs(urlsplit(note).query)["v"]
        whole = c.get(signed_note)
        assert whole.status_code == 200 and b"chain" in whole.content
        part = c.get(signed_note, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == whole.content[:10]
        assert c.head(signed_thumb).status_code == 200
        assert c.get(signed_thumb).headers["content-type"] == "image/jpeg"


def test_a_signed_link_opens_nothing_else(engine: Engine, urls, key) -> None:
    note, thumb = urls
    with TestClient(create_app(engine, require_keys=True)) as c:  # stays shut when the key is revoked
        signed_note, signed_thumb = c.post("/links", json={"urls": [note, thumb]},
                                           headers={"Authorization": f"Bearer {key.key}"}).json()["urls"]
        other_item = signed_thumb.replace(thumb.split("?")[0], note.split("?")[0])  # sig of another file
        forged = signed_note[:-3] + ("AAA" if not signed_note.endswith("AAA") else "BBB")
        later = signed_note.replace("exp=", "exp=1")  # a later expiry than the one signed
        for url in (other_item, forged, later, signed_note.replace("/open?", "/thumbnail?")):
            resp = c.get(url)
            assert resp.status_code == 401, (url, resp.text)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert c.get("/stats?" + urlsplit(signed_note).query).status_code == 401  # only item files
        engine.store.catalog.revoke_api_key("links")
        resp = c.get(signed_note)
        assert resp.status_code == 401 and "revoked" in resp.json()["error"]


def test_expired_and_far_future_links_are_refused(engine: Engine, key) -> None:
    secret = engine.store.catalog.link_secret(key.record.id)
    assert secret is not None
    url = sign_url("/items/1/thumbnail", key.record.id, secret, expires=1_000)
    path, query = url.split("?")
    assert check_link(path, query.encode(), engine.store.catalog, 3600, now=lambda: 999.0) == key.record.id
    with pytest.raises(LinkError, match="expired"):
        check_link(path, query.encode(), engine.store.catalog, 3600, now=lambda: 1_001.0)
    with pytest.raises(LinkError, match="further away"):
        check_link(path, query.encode(), engine.store.catalog, 60, now=lambda: 0.0)


def test_links_take_only_item_files_and_the_ttl_is_a_setting(engine: Engine, key) -> None:
    auth = {"Authorization": f"Bearer {key.key}"}
    with TestClient(create_app(engine, limits=ServerLimits(link_ttl_s=120))) as c:
        for bad in (["/stats"], ["/items/1/open?v=zz"], ["/items/1/open?x=1"], ["https://x/items/1/open"],
                    ["/items/0/open"], ["/a/../items/1/open"], []):
            resp = c.post("/links", json={"urls": bad}, headers=auth)
            assert resp.status_code == 422, (bad, resp.text)
        signed, rooted = c.post("/links", json={"urls": ["/items/1/thumbnail", "/mmrag/items/1/thumbnail"]},
                                headers=auth).json()["urls"]
    assert rooted.startswith("/mmrag/items/1/thumbnail?") and rooted.split("?")[1] == signed.split("?")[1]
    exp = int(parse_qs(urlsplit(signed).query)["exp"][0])
    assert 100 <= exp - time.time() <= 121


def test_following_a_signed_link_is_a_use_of_its_key(engine: Engine, urls, key) -> None:
    note, _ = urls
    with TestClient(create_app(engine)) as c:
        signed = c.post("/links", json={"urls": [note]}, headers={"Authorization": f"Bearer {key.key}"}).json()
        long_ago = utcnow() - timedelta(days=3)
        with engine.store.catalog.transaction() as s:
            s.execute(update(ApiKeyRow).where(ApiKeyRow.prefix == key.record.id).values(last_used_at=long_ago))
        assert c.get(signed["urls"][0]).status_code == 200
    used = next(k for k in engine.store.catalog.api_keys() if k.id == key.record.id).last_used_at
    assert used is not None and used > long_ago + timedelta(days=2)  # `mmrag keys list` shows the link's use
