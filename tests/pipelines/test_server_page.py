"""The web page's shell and what it calls besides search and ask: its headers, what it may load,
its package data, and the upload searches it uses (``POST /search/image`` with filters and
``POST /search/audio``). The page itself runs in a browser in ``test_browser.py``."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import create_app
from pipelines.server.limits import ServerLimits
from pipelines.synthetic import generate

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
STATIC = REPO / "pipelines" / "server" / "static"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page")
    docs = root / "docs"
    docs.mkdir()
    for name in ("bicycle_maintenance.md", "coffee_brewing.md"):
        shutil.copy(DATA / "notes" / name, docs / name)
    shutil.copy(DATA / "audio" / "jfk.flac", docs / "jfk.flac")
    sample = generate(5, seed=3, size=96, balanced=True)[0]
    sample.image.save(docs / "shape.png")
    return {"root": root, "docs": docs, "image": docs / "shape.png", "audio": docs / "jfk.flac"}


@pytest.fixture(scope="module")
def engine(corpus: dict[str, Path], tiny_clip_spec: str, tiny_clip_encoder, text_encoder) -> Iterator[Engine]:
    # models.clip_texts: the image upload searches below find text too
    with Engine.open(corpus["root"] / "store", overrides={"models.clip": tiny_clip_spec, "models.clip_texts": True},
                     clip=tiny_clip_encoder, text=text_encoder) as eng:
        assert eng.ingest([corpus["docs"]]).failed == []
        yield eng


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as c:
        yield c


# ---- the page shell ---------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] == "script":
            self.script_text += data.strip()


def test_the_page_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in resp.headers["content-security-policy"] and "http" not in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff" and resp.headers["referrer-policy"] == "no-referrer"
    page = _Tags()
    page.feed(resp.text)
    assert page.script_text == "", "no inline script"
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") or name == "style" for name in attrs), (tag, attrs)  # no inline handlers
        for name in ("src", "href", "action"):
            value = attrs.get(name) or ""
            assert not re.match(r"^(?:[a-z]+:)?//", value), (tag, attrs)  # nothing from elsewhere
    assert ("script", {"src": "static/app.js", "defer": None}) in page.tags
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(("path", "media_type"), [("/static/app.js", "text/javascript; charset=utf-8"),
                                                  ("/static/app.css", "text/css; charset=utf-8")])
def test_the_script_and_style_sheet_are_served(client: TestClient, path: str, media_type: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.headers["content-type"] == media_type
    assert resp.content == (STATIC / Path(path).name).read_bytes()
    assert client.get("/static/other.js").status_code == 404


def test_the_script_never_parses_data_as_html_and_calls_nothing_elsewhere() -> None:
    script = (STATIC / "app.js").read_text()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                  "http://", "https://"):
        assert risky not in script, risky
    css = (STATIC / "app.css").read_text()
    assert "@import" not in css and "url(" not in css


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert {"/ask/stream", "/search/audio"} <= set(paths)


def test_the_static_files_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["pipelines.server"]
    for path in STATIC.iterdir():
        assert any(path.match(pattern) for pattern in patterns), f"{path.name} is not in the package data"
        assert resources.files("pipelines.server").joinpath("static", path.name).read_bytes() == path.read_bytes()


def test_with_keys_the_shell_loads_without_one_and_the_api_does_not(tmp_path: Path, engine: Engine) -> None:
    copy = tmp_path / "store"
    shutil.copytree(engine.root, copy)
    with Engine.open(copy, clip=engine.clip_encoder, text=engine.text_encoder) as eng:
        key = eng.store.catalog.create_api_key("page", "read").key
        with TestClient(create_app(eng)) as c:
            for path in ("/", "/static/app.js", "/static/app.css"):
                assert c.get(path).status_code == 200, path
            assert c.get("/stats").status_code == 401
            assert c.post("/search/audio").status_code == 401
            assert c.get("/stats", headers={"Authorization": f"Bearer {key}"}).status_code == 200


# ---- the upload searches ------------------------------------------------------------------------


def test_an_image_search_takes_the_filters(client: TestClient, corpus: dict[str, Path]) -> None:
    image = corpus["image"].read_bytes()
    plain = client.post("/search/image", files={"image": ("q.png", image, "image/png")}).json()
    assert plain["hits"][0]["source"] == str(corpus["image"])
    only_notes = client.post("/search/image", files={"image": ("q.png", image, "image/png")},
                             data={"source": "*.md", "k": "5"}).json()
    assert only_notes["hits"] and all(h["source"].endswith(".md") for h in only_notes["hits"])
    assert only_notes["query"]["where"] == {"source": "*.md"} and only_notes["query"]["k"] == 5
    text_only = client.post("/search/image", files={"image": ("q.png", image, "image/png")},
                            data={"modality": ["text", "audio"]}).json()
    assert text_only["hits"] and {h["modality"] for h in text_only["hits"]} <= {"text", "audio"}
    assert text_only["query"]["modalities"] == ["text", "audio"]


def test_an_audio_clip_searches_by_its_words(client: TestClient, corpus: dict[str, Path]) -> None:
    clip = corpus["audio"].read_bytes()
    resp = client.post("/search/audio", files={"audio": ("question.flac", clip, "audio/flac")}, data={"k": "3"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"]["audio"] == "question.flac" and "fellow americans" in body["query"]["text"].lower()
    assert body["hits"][0]["source"] == str(corpus["audio"]) and body["hits"][0]["open_url"].endswith("#t=0,11")
    notes = client.post("/search/audio", files={"audio": ("q.flac", clip, "audio/flac")},
                        data={"modality": "text", "text": "bicycle"}).json()
    assert notes["hits"] and {h["modality"] for h in notes["hits"]} == {"text"}
    assert notes["query"]["text"].lower().startswith("bicycle and so, my fellow americans")


def test_audio_uploads_that_cannot_be_used_say_why(engine: Engine, client: TestClient, corpus: dict[str, Path]) -> None:
    resp = client.post("/search/audio", files={"audio": ("notes.flac", b"just some text\n" * 20, "audio/flac")})
    assert resp.status_code == 400 and resp.json()["type"] == "BadUpload"
    assert "notes.flac" in resp.json()["error"] and "not a sound clip" in resp.json()["error"]
    image = client.post("/search/audio", files={"audio": ("shape.png", corpus["image"].read_bytes(), "image/png")})
    assert image.status_code == 400 and "image/png" in image.json()["error"]
    assert client.post("/search/audio", files={"audio": ("e.wav", b"", "audio/wav")}).json()["error"].count("empty") == 1
    with TestClient(create_app(engine, limits=ServerLimits(max_audio_query_s=5))) as short:
        long = short.post("/search/audio", files={"audio": ("jfk.flac", corpus["audio"].read_bytes(), "audio/flac")})
    assert long.status_code == 400 and "lasts 11 s" in long.json()["error"] and "at most 5 s" in long.json()["error"]
    with TestClient(create_app(engine, limits=ServerLimits(max_upload_bytes=1000))) as small:
        big = small.post("/search/audio", files={"audio": ("jfk.flac", corpus["audio"].read_bytes(), "audio/flac")})
    assert big.status_code == 413
