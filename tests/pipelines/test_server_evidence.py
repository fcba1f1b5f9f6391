"""Evidence files are served only while they are what was ingested and cited, and only inside
the allowed directories: symlinks, replaced sources, huge ids and bad ranges."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import create_app

SECRET = "The launch code of the outside note is zebra-42."


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evidence")
    (root / "inbox").mkdir()
    (root / "outside" / "folder").mkdir(parents=True)
    (root / "outside" / "secret.md").write_text(f"# Secret\n\n{SECRET}\n")
    hidden = root / "outside" / "folder" / "hidden.md"
    hidden.write_text("# Hidden\n\nThe vault opens with the word marmalade.\n")
    return {"root": root, "inbox": root / "inbox", "outside": root / "outside"}


@pytest.fixture(scope="module")
def engine(place: dict[str, Path], text_encoder):
    overrides = {"models.clip": "none", "ingest.follow_symlinks": "true"}
    eng = Engine.open(place["root"] / "store", overrides=overrides, text=text_encoder)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine: Engine, place: dict[str, Path]):
    with TestClient(create_app(engine, allow_ingest_under=[place["inbox"]])) as c:
        yield c


def _error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json", resp.headers
    body = resp.json()
    assert set(body) >= {"error", "type"}, body
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return body


def _note(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def _job_done(client: TestClient, started: httpx.Response) -> dict:
    """The ingest job that ``started`` (POST /ingest's 202) began, polled until it ends (60 s at most)."""
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while (job := client.get(started.json()["url"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def _ingest(client: TestClient, *paths: Path) -> dict:
    """The report of an ingest job over ``paths``, once it is done."""
    job = _job_done(client, client.post("/ingest", json={"paths": [str(p) for p in paths]}))
    assert job["status"] == "done", job
    return job["report"]


def _hit(client: TestClient, query: str, source: Path) -> dict:
    hits = client.get("/search", params={"q": query, "k": 5}).json()["hits"]
    return next(h for h in hits if h["source"] == str(source))


# ---- ingest through symlinks -------------------------------------------------------------------


def test_symlinks_inside_the_allowed_directory_ingest_nothing_outside(client, engine, place) -> None:
    folder = place["inbox"] / "links"
    _note(folder, "plain.md", "# Plain\n\nThe plain note talks about tulips in spring.\n")
    (folder / "secret_link.md").symlink_to(place["outside"] / "secret.md")
    (folder / "folder_link").symlink_to(place["outside"] / "folder", target_is_directory=True)
    resp = client.post("/ingest", json={"paths": [str(folder)]})
    job = _job_done(client, resp)
    report = job["report"]
    assert report["added"] == 1 and report["failed"] == [], report
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert str(folder / "secret_link.md") in skipped, skipped
    assert any(path.startswith(str(folder / "folder_link")) for path in skipped), skipped
    assert all("outside the allowed" in reason for reason in skipped.values()), skipped
    assert str(place["outside"]) not in resp.text + str(job)  # the targets are not revealed
    uris = [s.uri for s in engine.store.catalog.sources()]
    assert uris and all(Path(u).is_relative_to(place["inbox"]) for u in uris), uris
    for query in ("launch code zebra-42", "vault marmalade"):
        hits = client.get("/search", params={"q": query}).json()["hits"]
        assert "zebra" not in str(hits) and "marmalade" not in str(hits)


def test_ingest_refusals_do_not_reveal_server_paths(client, place) -> None:
    folder = place["inbox"] / "escape"
    folder.mkdir()
    (folder / "up").symlink_to(place["root"], target_is_directory=True)
    secret = place["outside"] / "secret.md"
    for raw in [str(folder / "up" / "outside" / "secret.md"), str(folder / "up"),
                str(place["inbox"] / ".." / "outside" / "secret.md")]:
        body = _error(client.post("/ingest", json={"paths": [raw]}), 403)
        assert body["error"] == f"ingest path {raw!r} is outside the allowed directories", body
        assert str(secret) not in body["error"] and str(place["root"]) + "," not in body["error"]
    missing = str(place["inbox"] / "no_such.md")
    _error(client.post("/ingest", json={"paths": [missing]}), 400, "does not exist")


# ---- serving: confinement and change ------------------------------------------------------------


def test_a_symlink_swapped_in_after_ingest_is_not_served(client, place) -> None:
    note = _note(place["inbox"] / "swap", "rivers.md", "# Rivers\n\nThe Danube flows through ten countries.")
    _ingest(client, note)
    url = _hit(client, "which river flows through ten countries", note)["open_url"]
    assert client.get(url).text == note.read_text()
    # the same bytes and mtime outside: only where the file lies differs
    twin = place["outside"] / "rivers_twin.md"
    shutil.copy2(note, twin)
    original = place["outside"] / "rivers_original.md"
    shutil.copy2(note, original)
    for target in (twin, place["outside"] / "secret.md"):
        note.unlink()
        note.symlink_to(target)
        resp = client.get(url)
        body = _error(resp, 403, "outside the allowed directories", "not served")
        assert body["type"] == "SourceForbidden" and "zebra" not in resp.text and str(target) not in resp.text
        assert client.head(url).status_code == 403
    # a symlink to the same content inside the allowed directories is served
    inside = place["inbox"] / "swap" / "elsewhere.md"
    shutil.copy2(original, inside)
    note.unlink()
    note.symlink_to(inside)
    assert client.get(url).text == original.read_text()
    note.unlink()
    shutil.copy2(original, note)
    assert client.get(url).status_code == 200


def test_a_replaced_source_answers_old_links_with_410(client, place) -> None:
    note = _note(place["inbox"] / "replace", "kites.md",
                 "# Kites\n\nA box kite flies best in a steady wind of fifteen to twenty-five km/h.\n")
    _ingest(client, note)
    old = _hit(client, "which wind suits a box kite", note)
    assert old["open_url"] == f"/items/{old['item_id']}/open?v={old['source_version']}"
    answer = client.post("/ask", json={"question": "Which wind speed suits a box kite?", "k": 3}).json()
    cited = answer["citations"][0]
    assert cited["open_url"] == old["open_url"] and cited["source_version"] == old["source_version"]
    assert client.get(old["open_url"]).status_code == 200

    note.write_text("# Kites\n\nA delta kite needs only a light breeze of eight km/h to climb.\n")
    os.utime(note, (note.stat().st_atime, note.stat().st_mtime + 5))
    body = _error(client.get(old["open_url"]), 410, "changed since it was ingested", "re-ingest")
    assert body["type"] == "SourceChanged" and "delta" not in body["error"]

    assert _ingest(client, note)["updated"] == 1
    body = _error(client.get(old["open_url"]), 410, "changed", "search again")
    assert body["type"] == "ItemRemoved"
    new = _hit(client, "how light a breeze does a delta kite need", note)
    assert new["item_id"] != old["item_id"] and new["source_version"] != old["source_version"]
    opened = client.get(new["open_url"])
    assert opened.status_code == 200 and "delta kite" in opened.text
    # the new item with the old version: the citation was made for other content
    stale = f"/items/{new['item_id']}/open?v={old['source_version']}"
    body = _error(client.get(stale), 410, "changed since this citation was made", old["source_version"])
    assert body["type"] == "SourceChanged"


def test_a_touched_but_unchanged_source_is_still_served(client, place) -> None:
    note = _note(place["inbox"] / "touch", "tea.md", "# Tea\n\nGreen tea brews best at seventy degrees.")
    _ingest(client, note)
    url = _hit(client, "green tea brewing temperature", note)["open_url"]
    os.utime(note, (note.stat().st_atime, note.stat().st_mtime + 100))  # mtime differs, content is the same
    for _ in range(2):
        resp = client.get(url)
        assert resp.status_code == 200 and resp.text == note.read_text()


# ---- ids and ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("item_id", [2**63, 2**64, 10**30, -1, 0, -(2**63) - 1])
@pytest.mark.parametrize("what", ["open", "thumbnail"])
def test_out_of_range_item_ids_are_json_422(client, item_id: int, what: str) -> None:
    body = _error(client.get(f"/items/{item_id}/{what}"), 422, "'item_id'")
    assert body["type"] == "RequestValidationError"
    assert client.head(f"/items/{item_id}/{what}").status_code == 422


def test_the_largest_item_id_is_a_json_404(client) -> None:
    _error(client.get(f"/items/{2**63 - 1}/open"), 404, f"no item {2**63 - 1}")
    _error(client.get(f"/items/{2**63 - 1}/thumbnail"), 404, "no item")


def test_range_errors_are_json(client, place) -> None:
    note = _note(place["inbox"] / "ranges", "bees.md", "# Bees\n\nA honey bee visits hundreds of flowers.")
    _ingest(client, note)
    url = _hit(client, "how many flowers does a honey bee visit", note)["open_url"]
    data, size = note.read_bytes(), note.stat().st_size
    for header, words in [("bytes=5-1", ["ends before it starts"]), ("bytes=abc", ["not a byte range"]),
                          ("bytes=-", ["not a byte range"])]:
        body = _error(client.get(url, headers={"Range": header}), 400, *words, "expected bytes=")
        assert body["type"] == "BadRange"
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        resp = client.get(url, headers={"Range": header})
        body = _error(resp, 416, f"has {size} bytes")
        assert body["type"] == "RangeNotSatisfiable" and resp.headers["content-range"] == f"bytes */{size}"
    part = client.get(url, headers={"Range": "bytes=2-6"})
    assert part.status_code == 206 and part.content == data[2:7]
    assert part.headers["content-range"] == f"bytes 2-6/{size}" and part.headers["content-length"] == "5"
    assert client.get(url, headers={"Range": f"bytes=-{size + 50}"}).content == data
    assert client.get(url, headers={"Range": f"bytes=10-{size * 2}"}).content == data[10:]
    whole = client.get(url, headers={"Range": "bytes=0-1,4-5"})  # several ranges: the whole file
    assert whole.status_code == 200 and whole.content == data
    stale = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"not-the-etag"'})
    assert stale.status_code == 200 and stale.content == data
    fresh = client.get(url, headers={"Range": "bytes=0-1", "If-Range": part.headers["etag"]})
    assert fresh.status_code == 206 and fresh.content == data[:2]
    head = client.head(url, headers={"Range": "bytes=0-3"})
    assert head.status_code == 206 and head.content == b"" and head.headers["content-length"] == "4"
