"""The HTTP service on a real small store: notes, a PDF and shape pictures, with the tiny CLIP."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import create_app, open_fragment
from pipelines.synthetic import generate
from pipelines.testing.serve import start_serve, stop
from retriever.types import Locator

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Copies of two notes, the PDF and the speech clip, five shape pictures, and a note the tests delete."""
    root = tmp_path_factory.mktemp("server")
    docs = root / "docs"
    (docs / "notes").mkdir(parents=True)
    (docs / "pdf").mkdir()
    (docs / "shapes").mkdir()
    (docs / "doomed").mkdir()
    (docs / "audio").mkdir()
    for name in ("bicycle_maintenance.md", "coffee_brewing.md"):
        shutil.copy(DATA / "notes" / name, docs / "notes" / name)
    shutil.copy(DATA / "pdf" / "crazyones.pdf", docs / "pdf" / "crazyones.pdf")
    shutil.copy(DATA / "audio" / "jfk.flac", docs / "audio" / "jfk.flac")
    shutil.copy(DATA / "notes" / "solar_system.md", docs / "doomed" / "solar_system.md")
    # five pictures with five different colours and five different shapes
    shapes = {}
    for sample in generate(25, seed=4242, size=128, balanced=True)[::6]:
        path = docs / "shapes" / f"{sample.colour}_{sample.shape}.png"
        sample.image.save(path)
        shapes[sample.label] = path
    inbox = root / "inbox"
    inbox.mkdir()
    (root / "outside.md").write_text("# Secret\n\nThe launch code of the outside note is zebra-42.\n")
    return {"root": root, "docs": docs, "shapes": shapes, "inbox": inbox, "store": root / "store"}


@pytest.fixture(scope="module")
def engine(corpus: dict, tiny_clip_spec: str, tiny_clip_encoder, text_encoder):
    eng = Engine.open(corpus["store"], overrides={"models.clip": tiny_clip_spec},
                      clip=tiny_clip_encoder, text=text_encoder)
    report = eng.ingest([corpus["docs"]])
    assert report.failed == [] and report.added == 10, report.to_dict()
    yield eng
    eng.close()


def _path(url: str) -> str:
    """The part of an open_url a client requests (the fragment stays in the viewer)."""
    return url.split("#", 1)[0]


def _assert_error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"error", "type"}, body
    for word in words:
        assert word.lower() in body["error"].lower(), body
    return body


# ---- health, stats, search ---------------------------------------------------------------


def test_healthz_and_stats(client: TestClient, engine: Engine) -> None:
    health = client.get("/healthz").json()
    stats = client.get("/stats").json()
    assert health == {"ok": True, "items": stats["items"]} and stats["items"] > 10
    assert stats["sources"] == 10 and set(stats["items_by_modality"]) == {"text", "pdf", "image", "audio"}
    assert client.get("/readyz").json() == {"ready": True, "status": "ready", "models": {}}  # no warming asked


def test_readyz_waits_for_warm_models(engine: Engine) -> None:
    with TestClient(create_app(engine, warm=True)) as c:
        assert c.get("/healthz").status_code == 200
        for _ in range(600):
            ready = c.get("/readyz")
            if ready.json()["status"] != "warming":
                break
            assert ready.status_code == 503
            time.sleep(0.1)
        assert ready.status_code == 200 and set(ready.json()["models"]) == {"clip", "text"}, ready.json()


def test_text_search_finds_the_pdf_page_and_opens_the_pdf(client: TestClient) -> None:
    resp = client.get("/search", params={"q": "the misfits, the rebels, the troublemakers", "k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"]["text"] == "the misfits, the rebels, the troublemakers" and body["query"]["k"] == 5
    top = body["hits"][0]
    # the hit JSON of `mmrag search --json`, plus the URL of its evidence
    assert set(top) >= {"item_id", "score", "scores", "modality", "source", "locator", "text", "thumbnail",
                        "citation", "open_url"}
    assert top["modality"] == "pdf" and top["source_name"].endswith("crazyones.pdf")
    page, version = top["locator"]["page"], top["source_version"]
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert top["open_url"] == f"/items/{top['item_id']}/open?v={version}#page={page}"
    pdf = client.get(_path(top["open_url"]))
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content == (Path(top["source"])).read_bytes()


def test_audio_hit_opens_the_clip_at_its_span_with_range_requests(client: TestClient, corpus: dict) -> None:
    hits = client.get("/search", params={"q": "ask what you can do for your country", "modality": "audio"}).json()
    top = hits["hits"][0]
    loc = top["locator"]
    assert top["modality"] == "audio" and loc["t_end"] > loc["t_start"] >= 0
    url, fragment = top["open_url"].split("#")
    assert fragment == f"t={loc['t_start']:g},{loc['t_end']:g}"
    clip = (corpus["docs"] / "audio" / "jfk.flac").read_bytes()
    part = client.get(url, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"fLaC" and part.headers["content-type"] == "audio/flac"
    assert part.headers["content-range"] == f"bytes 0-3/{len(clip)}"
    tail = client.get(url, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == clip[-100:]
    head = client.head(url)
    assert head.status_code == 200 and head.headers["accept-ranges"] == "bytes" and head.content == b""
    assert int(head.headers["content-length"]) == len(clip)


def test_post_search_with_filters(client: TestClient) -> None:
    body = {"text": "the misfits, the rebels", "k": 3, "modalities": ["pdf"], "where": {"source": "*.pdf"}}
    hits = client.post("/search", json=body).json()["hits"]
    assert hits and all(h["modality"] == "pdf" for h in hits)
    hits = client.get("/search", params={"q": "chain lubricant", "source": "*bicycle*"}).json()["hits"]
    assert hits and all(h["source_name"].endswith("bicycle_maintenance.md") for h in hits)
    assert all("thumbnail_url" not in h for h in hits)  # text chunks have no thumbnail


def test_shape_label_finds_the_image_and_its_thumbnail(client: TestClient, corpus: dict) -> None:
    label, path = "a red circle", corpus["shapes"]["a red circle"]
    resp = client.get("/search", params=[("q", label), ("k", "3"), ("modality", "image")])
    top = resp.json()["hits"][0]
    assert top["modality"] == "image" and top["source"] == str(path)
    assert top["open_url"] == f"/items/{top['item_id']}/open?v={top['source_version']}"
    thumb = client.get(top["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"
    picture = client.get(top["open_url"])
    assert picture.headers["content-type"] == "image/png" and picture.content == path.read_bytes()


def test_image_upload_finds_the_same_image_first(client: TestClient, corpus: dict) -> None:
    for label, path in list(corpus["shapes"].items())[:3]:
        resp = client.post("/search/image", files={"image": (path.name, path.read_bytes(), "image/png")},
                           data={"k": "3"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["query"]["image"] == path.name and body["hits"][0]["source"] == str(path), label


def test_non_image_upload_says_what_came(client: TestClient) -> None:
    resp = client.post("/search/image", files={"image": ("notes.png", b"just some text\n" * 20, "image/png")})
    body = _assert_error(resp, 400, "notes.png", "text/plain", "not an image", "expected")
    assert body["type"] == "BadUpload"
    _assert_error(client.post("/search/image", files={"image": ("e.jpg", b"", "image/jpeg")}), 400, "empty")
    truncated = io.BytesIO()
    generate(1, seed=1)[0].image.save(truncated, "PNG")
    resp = client.post("/search/image", files={"image": ("cut.png", truncated.getvalue()[:200], "image/png")})
    _assert_error(resp, 400, "cut.png", "not a usable image")
    assert client.post("/search/image", data={"text": "x"}).status_code == 422  # no file at all


# ---- ask -------------------------------------------------------------------------------------


def test_ask_answers_with_citations_that_open(client: TestClient) -> None:
    resp = client.post("/ask", json={"question": "When should a bicycle chain be replaced?", "k": 5})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    # the JSON of `mmrag ask --json`
    assert set(answer) >= {"question", "text", "found", "model", "citations", "evidence", "unsupported"}
    assert answer["found"] and answer["extractive"] and answer["citations"]
    cited = answer["citations"][0]
    assert "bicycle_maintenance.md" in cited["citation"] and cited["open_url"].startswith("/items/")
    opened = client.get(_path(cited["open_url"]))
    assert opened.status_code == 200 and b"chain checker" in opened.content
    assert opened.headers["content-type"] == "text/markdown; charset=utf-8"
    assert all("open_url" in e for e in answer["evidence"])


def test_ask_off_topic_is_not_found(client: TestClient) -> None:
    answer = client.post("/ask", json={"question": "What is the capital of Mongolia?"}).json()
    assert answer["found"] is False and answer["citations"] == []


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "status", "words"),
    [
        ("get", "/search", {"params": {"q": "   "}}, 422, ["'q'", "not only whitespace", "got '   '"]),
        ("get", "/search", {}, 422, ["'q' is required"]),
        ("get", "/search", {"params": {"q": "x", "k": 0}}, 422, ["'k'", "greater than or equal to 1", "got '0'"]),
        ("get", "/search", {"params": {"q": "x", "k": 1001}}, 422, ["'k'", "1000"]),
        ("get", "/search", {"params": {"q": "x", "k": "ten"}}, 422, ["'k'", "integer", "'ten'"]),
        ("get", "/search", {"params": {"q": "x", "modality": "smell"}}, 422, ["smell", "'pdf'", "'video'"]),
        ("post", "/search", {"json": {"text": ""}}, 422, ["'text'", "at least 1 character"]),
        ("post", "/search", {"json": {"text": "x", "k": 5000}}, 422, ["'k'", "1000", "5000"]),
        ("post", "/search", {"json": {"text": "x", "modalities": ["pdf", "smell"]}}, 422, ["'modalities.1'", "smell"]),
        ("post", "/search", {"json": {"text": "x", "where": {"source": 3}}}, 422, ["'where.source'", "string"]),
        ("post", "/search", {"json": {"text": "x", "where": {"modality": "smell"}}}, 422, ["'where.modality'"]),
        ("post", "/search", {"json": {"txt": "x"}}, 422, ["'text' is required", "'txt' is not accepted"]),
        ("post", "/search", {"content": b'{"text": "x",', "headers": {"content-type": "application/json"}},
         422, ["not valid JSON", "expected a JSON object"]),
        ("post", "/search", {"json": ["x"]}, 422, ["request body", "got ['x']"]),
        ("post", "/ask", {"json": {"question": " "}}, 422, ["'question'", "not only whitespace"]),
        ("post", "/ask", {"json": {"question": "why?", "k": 0}}, 422, ["'k'"]),
        ("post", "/ask", {}, 422, ["JSON object body is required"]),
    ],
)
def test_bad_input_is_rejected_with_a_message(client, method, url, kwargs, status, words) -> None:
    _assert_error(getattr(client, method)(url, **kwargs), status, *words)


# ---- evidence files: only catalog sources ---------------------------------------------------


def test_unknown_item_and_missing_thumbnail_are_404(client: TestClient) -> None:
    body = _assert_error(client.get("/items/999999/open"), 404, "no item 999999")
    assert body["type"] == "ItemNotFound"
    _assert_error(client.get("/items/999999/thumbnail"), 404, "no item")
    chunk = client.get("/search", params={"q": "chain lubricant", "modality": "text"}).json()["hits"][0]
    _assert_error(client.get(f"/items/{chunk['item_id']}/thumbnail"), 404, "has no thumbnail")
    _assert_error(client.get("/no/such/route"), 404)


def test_deleted_source_file_is_410(client: TestClient, corpus: dict) -> None:
    hits = client.get("/search", params={"q": "largest volcano Olympus Mons"}).json()["hits"]
    hit = next(h for h in hits if h["source_name"].endswith("solar_system.md"))
    assert client.get(hit["open_url"]).status_code == 200
    (corpus["docs"] / "doomed" / "solar_system.md").unlink()
    body = _assert_error(client.get(hit["open_url"]), 410, "deleted", "solar_system.md")
    assert body["type"] == "SourceGone"


def test_path_traversal_reads_nothing_outside_the_catalog(client: TestClient, engine: Engine) -> None:
    secret = b"root:"
    for url in [
        "/items/..%2F..%2F..%2Fetc%2Fpasswd/open",
        "/items/%2e%2e/open",
        "/items/1/open/../../../../etc/passwd",
        "/items/1%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/items/-1/open",
        "/items/1.5/open",
        "/items/open?path=/etc/passwd",
        "/items/%2Fetc%2Fpasswd/open",
    ]:
        resp = client.get(url)
        assert resp.status_code in (404, 422), (url, resp.status_code)
        assert secret not in resp.content and resp.json()["type"], url
    # a catalog row tampered to point outside the store's media is refused too
    photo = client.get("/search", params={"q": "a blue triangle", "modality": "image"}).json()["hits"][0]
    from sqlalchemy import update

    from retriever.catalog.models import ItemRow

    original = engine.store.catalog.items([photo["item_id"]])[photo["item_id"]].thumbnail
    for tampered in ("../../../../etc/passwd", "/etc/passwd", "catalog.sqlite", "media/thumbs/../../catalog.sqlite"):
        with engine.store.catalog.transaction() as s:
            s.execute(update(ItemRow).where(ItemRow.id == photo["item_id"]).values(thumbnail=tampered))
        try:
            resp = client.get(photo["thumbnail_url"])
            _assert_error(resp, 404, "missing from the store")
            assert secret not in resp.content and b"SQLite" not in resp.content
        finally:
            with engine.store.catalog.transaction() as s:
                s.execute(update(ItemRow).where(ItemRow.id == photo["item_id"]).values(thumbnail=original))
    assert client.get(photo["thumbnail_url"]).status_code == 200


def test_open_url_fragments() -> None:
    assert open_fragment(Locator("/a.pdf", page=3)) == "#page=3"
    assert open_fragment(Locator("/a.flac", t_start=1.5, t_end=11.0)) == "#t=1.5,11"
    assert open_fragment(Locator("/a.mp4", t=62.25)) == "#t=62.25"
    assert open_fragment(Locator("/a.md", char_start=0, char_end=10)) == ""


# ---- concurrency -----------------------------------------------------------------------------


def test_concurrent_searches_and_asks_agree_with_sequential_ones(client: TestClient) -> None:
    queries = ["the misfits, the rebels", "chain lubricant", "a green square", "coffee water temperature"]

    def search(q: str) -> list[int]:
        resp = client.get("/search", params={"q": q, "k": 5})
        assert resp.status_code == 200, resp.text
        return [h["item_id"] for h in resp.json()["hits"]]

    def ask(q: str) -> str:
        resp = client.post("/ask", json={"question": q})
        assert resp.status_code == 200, resp.text
        return resp.json()["text"]

    expected = [search(q) for q in queries] + [ask("When should a bicycle chain be replaced?")]
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(search, q) for q in queries * 3]
        futures.append(pool.submit(ask, "When should a bicycle chain be replaced?"))
        got = [f.result() for f in futures]
    assert got[: len(queries)] == expected[: len(queries)] and got[-1] == expected[-1]
    assert got[len(queries) : 3 * len(queries)] == expected[: len(queries)] * 2


# ---- ingest ------------------------------------------------------------------------------------


def test_ingest_is_forbidden_without_allowed_directories(client: TestClient, corpus: dict) -> None:
    note = corpus["inbox"] / "never.md"
    note.write_text("# Never\n\nThis note must not be ingested.\n")
    body = _assert_error(client.post("/ingest", json={"paths": [str(note)]}), 403, "disabled", "--allow-ingest")
    assert body["type"] == "IngestForbidden"


def test_ingest_under_an_allowed_directory(engine: Engine, corpus: dict, finished_job) -> None:
    inbox, root = corpus["inbox"], corpus["root"]
    with TestClient(create_app(engine, allow_ingest_under=[inbox])) as c:
        for bad in [str(root / "outside.md"), str(inbox / ".." / "outside.md"), "outside.md", "/etc/passwd"]:
            _assert_error(c.post("/ingest", json={"paths": [bad]}), 403, bad)
        (inbox / "sneaky.md").symlink_to(root / "outside.md")
        resp = c.post("/ingest", json={"paths": [str(inbox / "sneaky.md")]})
        _assert_error(resp, 403, "outside the allowed directories")
        assert str(root / "outside.md") not in resp.text  # the symlink's target is not revealed
        (inbox / "sneaky.md").unlink()
        assert "zebra" not in str(c.get("/search", params={"q": "launch code zebra-42"}).json()["hits"])
        _assert_error(c.post("/ingest", json={"paths": []}), 422, "'paths'")

        note = inbox / "kites.md"
        note.write_text("# Kites\n\nA box kite flies best in a steady wind of fifteen to twenty-five km/h.\n")
        with engine.store.write_lock():  # another writer holds the store: single writer, the job fails
            job = finished_job(c, c.post("/ingest", json={"paths": [str(note)]}))
        assert job["status"] == "failed" and job["error_type"] == "StoreLockedError", job
        assert "being written" in job["error"] and job["report"] is None and job["finished_at"], job
        job = finished_job(c, c.post("/ingest", json={"paths": [str(note)]}))
        assert job["status"] == "done" and job["paths"] == [str(note)] and job["error"] is None, job
        report = job["report"]
        assert report["added"] == 1 and report["failed"] == [] and report["items"] >= 1
        assert job["progress"]["files_done"] == 1 and job["progress"]["items_added"] == report["items"], job
        top = c.get("/search", params={"q": "which wind speed suits a box kite", "k": 3}).json()["hits"][0]
        assert top["source"] == str(note) and "steady wind" in top["text"]


def test_an_ingest_job_reports_progress_and_its_report(engine: Engine, corpus: dict, finished_job) -> None:
    folder = corpus["inbox"] / "batch"
    folder.mkdir()
    for i in range(6):
        (folder / f"note_{i}.md").write_text(f"# Note {i}\n\nThe batch note number {i} is about kite {i}.\n")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF at all")
    with TestClient(create_app(engine, allow_ingest_under=[corpus["inbox"]])) as c:
        resp = c.post("/ingest", json={"paths": [str(folder)]})
        assert resp.status_code == 202, resp.text
        started = resp.json()
        assert started["status"] in ("queued", "running") and started["url"] == f"/jobs/{started['job']}"
        seen = []
        while (job := c.get(started["url"]).json())["status"] in ("queued", "running"):
            seen.append(job["progress"]["files_done"])
            time.sleep(0.01)
        assert seen == sorted(seen), seen  # progress only moves forward
        assert job["status"] == "done" and job["started_at"] <= job["finished_at"], job
        report = job["report"]
        assert report["added"] == 6 and [f["path"] for f in report["failed"]] == [str(folder / "broken.pdf")]
        assert job["progress"] == {"files_seen": 7, "files_done": 7, "files_failed": 1,
                                   "items_added": report["items"]}, job
        listed = c.get("/jobs").json()["jobs"]
        assert listed[0] == job
        assert finished_job(c, c.post("/ingest", json={"paths": [str(folder)]}))["report"]["unchanged"] == 6


def test_one_ingest_job_at_a_time(engine: Engine, corpus: dict, finished_job,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    note = corpus["inbox"] / "lanterns.md"
    note.write_text("# Lanterns\n\nPaper lanterns glow best with a warm white light.\n")
    release = threading.Event()
    ingest = engine.ingest

    def held_ingest(*args, **kwargs):
        assert release.wait(30)
        return ingest(*args, **kwargs)

    monkeypatch.setattr(engine, "ingest", held_ingest)
    with TestClient(create_app(engine, allow_ingest_under=[corpus["inbox"]])) as c:
        first = c.post("/ingest", json={"paths": [str(note)]})
        assert first.status_code == 202, first.text
        body = _assert_error(c.post("/ingest", json={"paths": [str(note)]}), 409, "one ingest runs at a time")
        assert body["type"] == "IngestBusy" and first.json()["job"] in body["error"]
        assert c.get(first.json()["url"]).json()["status"] in ("queued", "running")
        release.set()
        assert finished_job(c, first)["report"]["added"] == 1
        assert finished_job(c, c.post("/ingest", json={"paths": [str(note)]}))["report"]["unchanged"] == 1


def test_an_unknown_job_is_404(client: TestClient) -> None:
    body = _assert_error(client.get("/jobs/0123456789abcdef"), 404, "no ingest job")
    assert body["type"] == "JobNotFound"
    assert client.get("/jobs").json() == {"jobs": []}


# ---- mmrag serve -------------------------------------------------------------------------------


def test_mmrag_serve_runs_uvicorn(tmp_path: Path) -> None:
    env = {**os.environ, "MMRAG_CLIP_MODEL": "none"}
    (tmp_path / "inbox").mkdir()
    log = tmp_path / "serve.log"
    proc, base = start_serve(tmp_path / "store", log, env=env, timeout_s=60,
                             args=["--allow-ingest", str(tmp_path / "inbox")])
    try:
        health = httpx.get(f"{base}/healthz", timeout=5)
        assert health.status_code == 200 and health.json() == {"ok": True, "items": 0}
        # alive at once; ready once the text model is loaded and warm (it loads in the background)
        deadline, ready = time.monotonic() + 120, httpx.get(f"{base}/readyz", timeout=5)
        assert ready.json()["status"] in ("warming", "ready")
        while ready.status_code == 503 and ready.json()["status"] == "warming" and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["ready"] and set(ready.json()["models"]) == {"text"}
    finally:
        stop(proc)
    out = log.read_text()
    assert "serving" in out and base.removeprefix("http://") in out, out


def test_mmrag_serve_on_a_busy_port_exits_2_before_opening_the_store(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    env = {**os.environ, "MMRAG_CLIP_MODEL": "none"}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "serve", "--store", str(tmp_path / "store"), "--port", str(port),
             "--allow-ingest", str(tmp_path / "inbox")],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {port} is in use" in proc.stderr and "--port" in proc.stderr
    assert not (tmp_path / "store").exists()  # refused before the store was opened (it would be created)
