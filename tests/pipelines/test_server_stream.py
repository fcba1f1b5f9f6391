"""``POST /ask/stream``: the answer of ``POST /ask`` as server-sent events, over a store of notes.

The extractive answerer comes whole and is sent in pieces; a chat model (the real LangChain
OpenAI client against a local OpenAI-compatible server that streams slowly) is streamed token
by token, which a real uvicorn server is shown to pass on before the answer is finished.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines.engine import Engine
from pipelines.server.app import create_app
from pipelines.server.streaming import AnswerStream, pieces, sse
from retriever.config import Config
from retriever.store import Store

pytest.importorskip("langchain_openai")

DATA = Path(__file__).resolve().parents[2] / "data"
QUESTION = "When should a bicycle chain be replaced?"
TWO_NOTES = "How do I look after a bicycle chain and brew coffee?"  # two notes are evidence for it
OFF_TOPIC = "Who won the football world cup final in 1998?"
# cites [2] before [1], and [9], which names no evidence: the checked answer drops it and renumbers
REPLY = "Oil the chain after riding in the rain [2]. Brew with water just off the boil [1]. It rusts [9]."


class ChatServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint that streams ``reply`` in 6-character pieces, ``delay`` apart."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.reply, self.status, self.delay, self.calls = REPLY, 200, 0.0, 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1
        if self.server.status != 200 or not body.get("stream"):
            data = json.dumps({"error": {"message": "the model is down", "type": "server_error"}}).encode()
            self.send_response(self.server.status if self.server.status != 200 else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        text = self.server.reply
        for i in range(0, len(text), 6):
            chunk = {**base, "choices": [{"index": 0, "delta": {"content": text[i:i + 6]}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(self.server.delay)
        done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatServer]:
    srv = ChatServer()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, text_encoder) -> Path:
    root = tmp_path_factory.mktemp("stream")
    docs = root / "docs"
    docs.mkdir()
    for name in ("bicycle_maintenance.md", "coffee_brewing.md", "solar_system.md"):
        shutil.copy(DATA / "notes" / name, docs / name)
    with Engine.open(root / "store", overrides={"models.clip": "none"}, text=text_encoder) as eng:
        assert eng.ingest([docs]).failed == []
    return root / "store"


@pytest.fixture(scope="module")
def engine(store: Path, text_encoder) -> Iterator[Engine]:
    with Engine.open(store, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        yield eng


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine)) as c:
        yield c


@pytest.fixture(scope="module")
def chat_engine(store: Path, text_encoder, chat: ChatServer) -> Iterator[Engine]:
    overrides = {"models.clip": "none", "llm.spec": "openai:test-model", "llm.base_url": chat.base_url,
                 "llm.api_key": "sk-test", "llm.max_retries": 0, "llm.timeout_s": 20}
    with Engine.open(store, overrides=overrides, text=text_encoder) as eng:
        yield eng


def events_of(text: str) -> list[tuple[str, Any]]:
    """The (event, data) pairs of a text/event-stream body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        assert set(lines) == {"event", "data"}, block
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def _stream(client: TestClient, body: dict[str, Any], **kw: Any) -> httpx.Response:
    resp = client.post("/ask/stream", json=body, **kw)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    assert resp.headers["cache-control"] == "no-cache"
    return resp


# ---- the extractive answer ------------------------------------------------------------------------


def test_extractive_answer_streams_evidence_pieces_and_the_answer_of_post_ask(client: TestClient) -> None:
    events = events_of(_stream(client, {"question": QUESTION, "k": 5}).text)
    names = [name for name, _ in events]
    assert names[0] == "evidence" and names[-1] == "answer" and set(names[1:-1]) == {"delta"}, names
    assert len(names) > 3, "the whole extractive answer is sent in pieces"
    final = events[-1][1]
    assert final == client.post("/ask", json={"question": QUESTION, "k": 5}).json()
    assert final["found"] and final["citations"]
    assert "".join(data["text"] for name, data in events if name == "delta") == final["text"]
    evidence = events[0][1]["evidence"]
    assert evidence == final["evidence"]  # a whole answer: the evidence is already the checked answer's
    for entry in evidence:
        assert entry["open_url"].startswith(f"/items/{entry['item_id']}/open?v=") and entry["n"] >= 1
    cited = client.get(final["citations"][0]["open_url"].split("#")[0])
    assert cited.status_code == 200 and b"chain" in cited.content


def test_not_found_is_streamed_as_such(client: TestClient) -> None:
    events = events_of(_stream(client, {"question": OFF_TOPIC}).text)
    assert events[0] == ("evidence", {"evidence": []})
    final = events[-1]
    assert final[0] == "answer" and final[1]["found"] is False and final[1]["citations"] == []
    assert "".join(d["text"] for n, d in events if n == "delta") == "Not found in the indexed data."


def test_filters_apply_to_the_streamed_answer(client: TestClient) -> None:
    everything = events_of(_stream(client, {"question": TWO_NOTES}).text)[-1][1]
    assert {Path(ev["source"]).name for ev in everything["evidence"]} == {"bicycle_maintenance.md", "coffee_brewing.md"}
    final = events_of(_stream(client, {"question": TWO_NOTES, "where": {"source": "*coffee*"}}).text)[-1][1]
    assert [Path(ev["source"]).name for ev in final["evidence"]] == ["coffee_brewing.md"], final["evidence"]


@pytest.mark.parametrize(("body", "words"), [
    ({"question": "   "}, ["question", "not only whitespace"]),
    ({"question": "x" * 2001}, ["at most 2000 characters"]),
    ({"question": QUESTION, "k": 0}, ["'k'"]),
    ({"question": QUESTION, "stream": True}, ["'stream'", "not accepted"]),
])
def test_bad_requests_are_json_errors_before_any_event(client: TestClient, body: dict, words: list[str]) -> None:
    resp = client.post("/ask/stream", json=body)
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/json", resp.text
    for word in words:
        assert word in resp.json()["error"], resp.json()


def test_the_schema_documents_the_event_stream(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/ask/stream"]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
    for event in ("`evidence`", "`delta`", "`answer`", "`error`"):
        assert event in operation["responses"]["200"]["description"]
    assert {"401", "403", "422", "429", "503"} <= set(operation["responses"])
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("AskBody")


# ---- a chat model that streams ------------------------------------------------------------------


def test_a_chat_model_streams_tokens_numbered_as_the_evidence_event(chat: ChatServer, chat_engine: Engine) -> None:
    chat.reply, chat.status, chat.delay = REPLY, 200, 0.0
    with TestClient(create_app(chat_engine)) as c:
        events = events_of(_stream(c, {"question": TWO_NOTES, "k": 5}).text)
    names = [name for name, _ in events]
    assert names[0] == "evidence" and names[-1] == "answer" and names.count("evidence") == 1, names
    assert len(events[0][1]["evidence"]) == 2
    raw = "".join(data["text"] for name, data in events if name == "delta")
    assert raw == REPLY  # the model's own words and numbers, token by token
    given = {ev["n"]: ev["item_id"] for ev in events[0][1]["evidence"]}
    final = events[-1][1]
    assert final["model"] == "openai:test-model" and final["found"]
    assert final["text"].startswith("Oil the chain after riding in the rain [1]. Brew with water just off the boil [2].")
    assert "[9]" not in final["text"] and final["invalid_citations"] == [9]
    assert [c["item_id"] for c in final["citations"]] == [given[2], given[1]]  # renumbered in order of citation


def test_a_failing_model_ends_the_stream_with_an_error_event(chat: ChatServer, chat_engine: Engine) -> None:
    chat.status = 500
    try:
        with TestClient(create_app(chat_engine)) as c:
            events = events_of(_stream(c, {"question": QUESTION}).text)
    finally:
        chat.status = 200
    assert events[0][0] == "evidence" and events[-1][0] == "error", events
    error = events[-1][1]
    assert error["status"] == 502 and error["type"] == "GenerationError" and "the model is down" in error["error"]
    assert "sk-test" not in json.dumps(events)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_server_sends_tokens_before_the_answer_is_finished(chat: ChatServer, chat_engine: Engine) -> None:
    import uvicorn

    chat.reply, chat.status, chat.delay = REPLY, 200, 0.08  # about 1.2 s for the whole reply
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(chat_engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        arrivals: list[tuple[str, float]] = []
        with httpx.stream("POST", f"http://127.0.0.1:{port}/ask/stream", json={"question": QUESTION},
                          timeout=30) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("event: "):
                    arrivals.append((line[7:], time.monotonic()))
    finally:
        chat.delay = 0.0
        server.should_exit = True
        thread.join(10)
    first_delta = next(t for name, t in arrivals if name == "delta")
    answer = next(t for name, t in arrivals if name == "answer")
    assert answer - first_delta > 0.6, arrivals  # the tokens came as the model wrote them


# ---- keys and limits --------------------------------------------------------------------------------


def test_the_stream_needs_a_read_key_once_the_store_has_keys(tmp_path: Path, store: Path, text_encoder) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    with Engine.open(copy, overrides={"models.clip": "none"}, text=text_encoder) as eng:
        key = eng.store.catalog.create_api_key("reader", "read").key
        with TestClient(create_app(eng)) as c:
            refused = c.post("/ask/stream", json={"question": QUESTION})
            assert refused.status_code == 401 and refused.json()["type"] == "Unauthorized"
            wrong = c.post("/ask/stream", json={"question": QUESTION}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
            ok = _stream(c, {"question": QUESTION}, headers={"Authorization": f"Bearer {key}"})
            assert events_of(ok.text)[-1][0] == "answer" and key not in ok.text


def test_streamed_asks_count_against_the_concurrent_ask_limit(tmp_path: Path) -> None:
    import asyncio

    from pipelines.server.auth import AccessMiddleware
    from pipelines.server.limits import ServerLimits

    release = asyncio.Event()
    sent: list[dict[str, Any]] = []

    class NoKeys:
        def has_active_api_keys(self) -> bool:
            return False

    async def slow_stream(scope, receive, send) -> None:  # a stream still sending its events
        await release.wait()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def scenario() -> None:
        middleware = AccessMiddleware(slow_stream, NoKeys, ServerLimits(max_concurrent_asks=1))  # type: ignore[arg-type]
        scope = {"type": "http", "method": "POST", "path": "/ask/stream", "headers": [], "client": ("1.2.3.4", 1)}
        first = asyncio.create_task(middleware(scope, None, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        await middleware({**scope, "path": "/ask"}, None, send)  # type: ignore[arg-type]
        release.set()
        await first

    asyncio.run(scenario())
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]


# ---- the stream's parts ---------------------------------------------------------------------------


def test_pieces_and_events() -> None:
    text = "Extracted from the indexed data:\n- The chain stretches over time [1].\n- Oil it [2]."
    parts = list(pieces(text, size=16))
    assert "".join(parts) == text and len(parts) > 3 and all(len(p) <= 20 for p in parts)
    assert list(pieces("short")) == ["short"] and list(pieces("")) == []
    assert sse("delta", {"text": "é\n"}) == 'event: delta\ndata: {"text": "é\\n"}\n\n'.encode()


def test_a_client_that_goes_away_stops_the_answer() -> None:
    produced: list[int] = []
    done = threading.Event()

    def work(stream: AnswerStream) -> dict[str, Any]:
        try:
            for i in range(200):
                stream.put("delta", {"text": str(i)})
                produced.append(i)
                time.sleep(0.005)
            return {}
        finally:
            done.set()

    stream = AnswerStream()
    events = stream.events(stream.start(work))
    next(events)
    events.close()  # what Starlette does when the client disconnects
    assert done.wait(5) and len(produced) < 200


def test_a_failure_before_the_first_event_is_raised() -> None:
    def work(stream: AnswerStream) -> dict[str, Any]:
        raise ValueError("no store")

    with pytest.raises(ValueError, match="no store"):
        AnswerStream().start(work)


def test_an_empty_store_streams_not_found(tmp_path: Path, text_encoder) -> None:
    Store(tmp_path / "store", Config.load(tmp_path / "store", {"models.clip": "none"}), create=True).close()
    with Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder) as eng, \
            TestClient(create_app(eng)) as c:
        events = events_of(_stream(c, {"question": QUESTION}).text)
    assert events[-1][0] == "answer" and events[-1][1]["found"] is False
