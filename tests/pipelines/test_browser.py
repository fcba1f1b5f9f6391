"""The search-and-ask web page in headless Chromium, against a real ``mmrag serve`` on loopback.

The store holds public evaluation data (COCO photos, a 5-page PDF, a speech clip cut into short
transcript windows, a short video and a truncated JPEG that fails), ingested with the tiny CLIP
and MiniLM. Screenshots of the main states go to ``$MMRAG_SCREENSHOTS`` (default: a pytest
temporary directory).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-extensions", "--window-size=1280,900", "--mute-audio")
WAIT_S = 30
PHOTOS = 6

if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(f"the browser tests need Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}); "
                "install the Debian packages chromium and chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser tests need selenium (the test extra)")
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from pipelines.testing.serve import start_serve, stop

# ---- the store, the server and the browser ------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(eval_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("browser")
    docs, inbox = root / "docs", root / "inbox"
    docs.mkdir()
    inbox.mkdir()
    photos = sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:PHOTOS]
    for photo in photos:
        shutil.copy(photo, docs / photo.name)
    shutil.copy(eval_dir / "pdf" / "docling__multi_page.pdf", docs / "multi_page.pdf")
    shutil.copy(eval_dir / "audio" / "jfk.flac", docs / "jfk.flac")
    shutil.copy(eval_dir / "video" / "big_buck_bunny_small.mp4", docs / "bunny.mp4")
    for name in ("crazy_ones.txt", "crazy_ones (copy).txt"):  # one file saved twice: one result
        shutil.copy(eval_dir / "pdf" / "groundtruth" / "pypdf__crazyones.txt", docs / name)
    (docs / "broken.jpg").write_bytes(photos[0].read_bytes()[:2000])  # a truncated JPEG: fails, with a reason
    for clip in sorted((eval_dir / "audio").glob("librispeech_*.wav"))[:3]:  # for an ingest job during the tests
        shutil.copy(clip, inbox / clip.name)
    return {"root": root, "docs": docs, "inbox": inbox, "photos": [docs / p.name for p in photos],
            "store": root / "store"}


@pytest.fixture(scope="module")
def store(corpus: dict[str, Any], tiny_clip_spec: str, tiny_clip_encoder, text_encoder) -> Path:
    from pipelines.engine import Engine

    overrides = {"models.clip": tiny_clip_spec, "audio.window_min_s": 3, "audio.window_max_s": 5}
    with Engine.open(corpus["store"], overrides=overrides, clip=tiny_clip_encoder, text=text_encoder) as eng:
        report = eng.ingest([corpus["docs"]])
    assert [Path(f["path"]).name for f in report.to_dict()["failed"]] == ["broken.jpg"], report.to_dict()
    assert report.added == PHOTOS + 5
    return corpus["store"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def server(store: Path, corpus: dict[str, Any]) -> Iterator[str]:
    """``mmrag serve`` on 127.0.0.1 and a free port, ingest allowed under the inbox; its base URL."""
    proc, base = start_serve(store, corpus["root"] / "serve.log", args=["--allow-ingest", str(corpus["inbox"])])
    try:
        httpx.post(f"{base}/search", json={"text": "warm up the models"}, timeout=120).raise_for_status()
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    """``shots(driver, name)``: save a screenshot as NAME.png under $MMRAG_SCREENSHOTS (or a temp dir)."""
    folder = Path(os.environ["MMRAG_SCREENSHOTS"]) if os.environ.get("MMRAG_SCREENSHOTS") \
        else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def save(browser: Any, name: str) -> Path:
        path = folder / f"{name}.png"
        browser.save_screenshot(str(path))
        return path

    return save


@pytest.fixture()
def page(driver: Any, server: str) -> Iterator[Callable[[str], Any]]:
    """``page(path)``: open ``path`` of the server in a fresh state (one window, 1280 px wide)."""
    def open_page(path: str) -> Any:
        driver.get(server + path)
        return driver

    yield open_page
    for handle in driver.window_handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(driver.window_handles[0])
    driver.set_window_size(1280, 900)


# ---- helpers ------------------------------------------------------------------------------------------


def wait(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    def check(d: Any) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:
            return None

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, message=f"waited for {what}")


def cards(driver: Any, where: str = "results") -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f"#{where} > li.card")


def citation(card: WebElement) -> str:
    return card.find_element(By.CSS_SELECTOR, ".citation").text


def results_for(driver: Any, at_least: int = 1) -> list[WebElement]:
    return wait(driver, lambda d: len(cards(d)) >= at_least and cards(d), f"{at_least} result card(s)")


def media_time(driver: Any, card: WebElement) -> float:
    """Play ``card``'s clip inline and return where the player stands once it knows the clip."""
    card.find_element(By.CSS_SELECTOR, "button.play").click()
    script = ("const p = arguments[0].querySelector('audio, video');"
              "return p && p.readyState >= 1 ? p.currentTime : null;")
    return float(wait(driver, lambda d: d.execute_script(script, card), "the player to load its clip"))


def span_start(text: str) -> float:
    """The start of a citation like ``jfk.flac @ 00:08–00:11``, in seconds."""
    minutes, seconds = re.search(r"@ (\d+):(\d+)", text).groups()  # type: ignore[union-attr]
    return int(minutes) * 60 + int(seconds)


def opened_window_url(driver: Any, click: Callable[[], None], fragment: str) -> str:
    """Click something that opens a new tab; the tab's URL once it carries ``fragment``."""
    before = set(driver.window_handles)
    click()
    new = wait(driver, lambda d: set(d.window_handles) - before, "a new tab")
    driver.switch_to.window(new.pop())
    url = wait(driver, lambda d: fragment in d.current_url and d.current_url, f"a URL with {fragment}")
    driver.close()
    driver.switch_to.window(driver.window_handles[0])
    return url


ACCESSIBLE_NAMES = """
const named = (el) => (el.labels && el.labels.length) || el.getAttribute('aria-label')
    || el.getAttribute('aria-labelledby') || (el.tagName === 'BUTTON' && el.textContent.trim());
const unnamed = [...document.querySelectorAll('input, button, select, textarea')].filter((el) => !named(el));
const noAlt = [...document.querySelectorAll('img')].filter((img) => !img.hidden && !img.alt);
return unnamed.map((el) => el.outerHTML.slice(0, 80)).concat(noAlt.map((img) => img.outerHTML.slice(0, 80)));
"""


# ---- the tests --------------------------------------------------------------------------------------


def test_a_url_query_runs_on_load_with_thumbnails_and_highlighted_snippets(page, shots) -> None:
    driver = page("/?q=fellow+americans+document&k=20")
    found = results_for(driver, 10)
    assert driver.find_element(By.ID, "q").get_attribute("value") == "fellow americans document"
    assert "20 results" in driver.find_element(By.ID, "search-status").text
    loaded = ("return [...document.querySelectorAll('#results img')]"
              ".filter((img) => img.complete && img.naturalWidth > 0).length")
    wait(driver, lambda d: d.execute_script(loaded) >= 3, "three thumbnails to load")
    for card in found:
        images = card.find_elements(By.CSS_SELECTOR, ".thumb img")
        if images:
            assert images[0].get_attribute("alt") == citation(card)
    kinds = {card.find_element(By.CSS_SELECTOR, ".badge").text.lower() for card in found}
    assert {"image · photo", "audio · window", "video · keyframe", "pdf · page", "pdf · chunk"} <= kinds, kinds
    marks = [m.text.lower() for m in driver.find_elements(By.CSS_SELECTOR, "#results .snippet mark")]
    assert {"fellow", "americans"} <= set(marks), marks
    assert citation(found[0]) == "jfk.flac @ 00:00–00:08"  # the order of the API's fused list
    api = httpx.get(driver.current_url.replace("/?", "/search?")).json()["hits"]
    assert [citation(c) for c in found] == [h["citation"] for h in api]
    details = found[0].find_element(By.CSS_SELECTOR, "details.scores")
    details.click()
    assert "BM25" in details.text and "#1" in details.text and "fused" in found[0].get_attribute("title")
    assert driver.execute_script(ACCESSIBLE_NAMES) == []
    shots(driver, "results")
    driver.execute_script("arguments[0].scrollIntoView()", found[6])
    shots(driver, "results-more")
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe  # no failed request, no script error, no Content-Security-Policy violation


def test_slash_focuses_the_box_and_enter_searches(page) -> None:
    driver = page("/")
    driver.find_element(By.TAG_NAME, "body").send_keys("/")
    box = driver.switch_to.active_element
    assert box.get_attribute("id") == "q"
    box.send_keys("word processing tools", Keys.ENTER)
    wait(driver, lambda d: "q=word+processing+tools" in d.current_url, "the query in the URL")
    first = results_for(driver)[0]
    assert citation(first).startswith("multi_page.pdf p.")


def test_a_pdf_hit_opens_the_pdf_at_its_page(page) -> None:
    driver = page("/?q=word+processing+tools&modality=pdf")
    found = results_for(driver)
    assert driver.find_element(By.CSS_SELECTOR, "input[value='pdf']").is_selected()
    assert all(c.find_element(By.CSS_SELECTOR, ".badge").text.lower().startswith("pdf") for c in found)
    link = next(a for c in found for a in c.find_elements(By.CSS_SELECTOR, "a.open")
                if a.text.startswith("Open page") and a.text != "Open page 1")
    number = int(link.text.split()[-1])
    url = opened_window_url(driver, link.click, f"#page={number}")
    assert re.search(rf"/items/\d+/open\?v=[0-9a-f]{{16}}#page={number}$", url), url


def test_a_passage_in_two_files_is_one_result_that_names_the_other(page, shots) -> None:
    driver = page("/?q=misfits+rebels+troublemakers&modality=text")
    found = [c for c in results_for(driver) if "crazy_ones" in c.find_element(By.CSS_SELECTOR, ".citation").text]
    assert len(found) == 1, [c.text for c in found]
    citation = found[0].find_element(By.CSS_SELECTOR, ".citation").text
    other = "crazy_ones (copy).txt" if citation.startswith("crazy_ones.txt") else "crazy_ones.txt"
    assert found[0].find_element(By.CSS_SELECTOR, ".copies").text == f"Also in: {other}"
    shots(driver, "copies")


def test_an_audio_hit_plays_from_the_start_of_its_span(page) -> None:
    driver = page("/?q=ask+what+you+can+do+for+your+country&modality=audio")
    found = results_for(driver, 2)
    late = next(c for c in found if citation(c) == "jfk.flac @ 00:08–00:11")
    assert late.find_element(By.CSS_SELECTOR, "button.play").text == "Play from 00:08"
    at = media_time(driver, late)
    assert 8.0 <= at < 9.0, at


def test_an_uploaded_photo_finds_that_photo_first(page, corpus) -> None:
    driver = page("/")
    photo = corpus["photos"][2]
    driver.find_element(By.ID, "image-file").send_keys(str(photo))
    wait(driver, lambda d: cards(d) and citation(cards(d)[0]) == photo.name, f"{photo.name} as the first result")
    assert photo.name in driver.find_element(By.ID, "media-name").text
    assert driver.find_element(By.ID, "media-preview").get_attribute("src").startswith("blob:")


DISPATCH_FILE = """
const [kind, name, type, b64, target] = arguments;
const data = new DataTransfer();
data.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type}));
const init = {bubbles: true, cancelable: true};
document.querySelector(target).dispatchEvent(kind === 'paste'
  ? new ClipboardEvent('paste', {...init, clipboardData: data})
  : new DragEvent('drop', {...init, dataTransfer: data}));
"""


def _dispatch_file(driver: Any, kind: str, path: Path, media_type: str, target: str) -> None:
    driver.execute_script(DISPATCH_FILE, kind, path.name, media_type, base64.b64encode(path.read_bytes()).decode(),
                          target)


def test_a_pasted_photo_finds_that_photo_first(page, corpus) -> None:
    driver = page("/")
    photo = corpus["photos"][4]
    _dispatch_file(driver, "paste", photo, "image/jpeg", "body")
    wait(driver, lambda d: cards(d) and citation(cards(d)[0]) == photo.name, f"{photo.name} as the first result")


def test_a_dropped_audio_clip_searches_by_its_words(page, corpus) -> None:
    driver = page("/")
    _dispatch_file(driver, "drop", corpus["docs"] / "jfk.flac", "audio/flac", "#search-form")
    status = wait(driver, lambda d: "heard:" in d.find_element(By.ID, "search-status").text
                  and d.find_element(By.ID, "search-status").text, "the words heard in the clip", 60)
    assert "fellow americans" in status.lower()
    assert citation(results_for(driver)[0]).startswith("jfk.flac @ ")
    assert "Audio clip: jfk.flac" in driver.find_element(By.ID, "media-name").text


def test_ask_streams_an_answer_whose_citations_open_the_evidence(page, shots) -> None:
    driver = page("/")
    box = driver.find_element(By.ID, "question")
    box.send_keys("What did the president ask his fellow Americans?", Keys.ENTER)
    cite = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#answer-text a.cite"), "a cited answer")[0]
    answer = driver.find_element(By.ID, "answer-text").text
    assert "fellow Americans ask not" in answer and "[1]" in answer
    assert "Answered by extractive" in driver.find_element(By.ID, "answer-note").text
    number = cite.get_attribute("data-n")
    cite.click()
    assert driver.switch_to.active_element.get_attribute("id") == f"ev-{number}"
    card = driver.find_element(By.ID, f"ev-{number}")
    assert citation(card).startswith("jfk.flac @ ")
    shots(driver, "ask")
    assert abs(media_time(driver, card) - span_start(citation(card))) < 1.0


def test_a_question_the_data_cannot_answer_says_not_found(page) -> None:
    driver = page("/")
    driver.find_element(By.ID, "question").send_keys("Who won the football world cup final in 1998?", Keys.ENTER)
    shown = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#answer.not-found .not-found-text"),
                 "the not-found answer")
    assert shown[0].text == "Not found in the indexed data."
    assert not driver.find_elements(By.CSS_SELECTOR, "#answer-text a.cite")


def test_store_status_shows_counts_failures_and_ingest_progress(page, server, corpus, shots) -> None:
    driver = page("/")
    status = wait(driver, lambda d: "Failed sources (1)" in d.find_element(By.ID, "store-status").text
                  and d.find_element(By.ID, "store-status"), "the store status")
    text = status.text
    assert "broken.jpg" in text and "truncated" in text
    counts = {row.find_element(By.TAG_NAME, "th").text: int(row.find_element(By.TAG_NAME, "td").text)
              for row in status.find_elements(By.CSS_SELECTOR, "table.counts tr")}
    assert counts["image"] == PHOTOS and counts["audio"] >= 2 and counts["video"] >= 1 and counts["pdf"] >= 5
    started = httpx.post(f"{server}/ingest", json={"paths": [str(corpus["inbox"])]}, timeout=30)
    assert started.status_code == 202, started.text
    driver.find_element(By.ID, "refresh-status").click()
    wait(driver, lambda d: re.search(r"Ingest running|Last ingest: done", d.find_element(By.ID, "jobs").text),
         "the ingest job in the status")
    shots(driver, "status")
    wait(driver, lambda d: "Last ingest: done" in d.find_element(By.ID, "jobs").text, "the ingest to finish", 90)
    wait(driver, lambda d: "3 of 3 files done" in d.find_element(By.ID, "jobs").text, "the job's progress")
    driver.find_element(By.ID, "refresh-status").click()
    wait(driver, lambda d: re.search(rf"audio\s+{counts['audio'] + 3}\b", d.find_element(By.ID, "store-status").text),
         "three more audio items")


def test_the_page_fits_a_phone_screen(page, shots) -> None:
    driver = page("/")
    driver.set_window_size(390, 844)
    driver.get(driver.current_url + "?q=fellow+americans")
    found = results_for(driver, 3)
    width = driver.execute_script("return window.innerWidth")
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    assert all(c.rect["x"] >= 0 and c.rect["x"] + c.rect["width"] <= width for c in found[:3])
    shots(driver, "phone")


def test_with_keys_the_page_asks_for_one_and_says_when_it_is_wrong(page, driver, store, shots) -> None:
    made = _cli("keys", "create", "--store", str(store), "--name", "browser", "--scope", "read")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    try:
        page("/?q=fellow+americans")  # the page shell loads without a key
        dialog = wait(driver, lambda d: d.find_element(By.ID, "key-dialog").get_attribute("open") is not None
                      and d.find_element(By.ID, "key-dialog"), "the key prompt")
        assert "needs an API key" in dialog.text
        shots(driver, "key-prompt")
        field = driver.find_element(By.ID, "api-key")
        field.send_keys("mmrag_" + "x" * 43, Keys.ENTER)
        message = wait(driver, lambda d: "not accepted" in d.find_element(By.ID, "key-message").text
                       and d.find_element(By.ID, "key-message").text, "the wrong-key message")
        assert "unknown or revoked" in message and dialog.get_attribute("open") is not None
        shots(driver, "wrong-key")
        field.send_keys(key, Keys.ENTER)
        results_for(driver, 3)
        assert dialog.get_attribute("open") is None
        assert driver.execute_script("return sessionStorage.getItem('mmrag.api-key')") == key
        signed = ("return [...document.querySelectorAll('#results img')]"
                  ".filter((i) => /[?&]sig=/.test(i.src) && i.complete && i.naturalWidth > 0).length")
        wait(driver, lambda d: d.execute_script(signed) >= 1, "thumbnails through links signed for the key")
        late = next(c for c in cards(driver) if citation(c) == "jfk.flac @ 00:08–00:11")
        assert 8.0 <= media_time(driver, late) < 9.0
        src = late.find_element(By.CSS_SELECTOR, "audio, video").get_attribute("src")
        assert "sig=" in src and not src.startswith("blob:"), src  # streamed from the server, not a blob
        shots(driver, "with-key")
    finally:
        _cli("keys", "revoke", "--store", str(store), "browser")
        driver.execute_script("sessionStorage.clear()")
