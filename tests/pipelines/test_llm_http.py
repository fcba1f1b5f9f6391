"""``ask`` through the real LangChain OpenAI client against a local OpenAI-compatible HTTP server.

The server (stdlib ``http.server`` on 127.0.0.1) records every request and answers
with canned chat completions, plain or streamed as server-sent events.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

from pipelines.rag.answer import Answer, ask
from retriever.config import LlmConfig
from retriever.errors import GenerationError
from retriever.types import Hit, Locator, Modality

pytest.importorskip("langchain_openai")

API_KEY = "sk-test-0123456789-SECRET"
TYPEWRITER = (
    "Patented in 1868 by Christopher Latham Sholes, the typewriter revolutionized written communication "
    "by enabling people to produce legible, professional documents more efficiently than handwriting."
)
REPLY = (
    "The first photo shows {a} [1]. The second photo shows {b} [2]. "
    "The typewriter was patented in 1868 by Christopher Latham Sholes [3]. "
    "Sholes also invented the telephone [9]."
)
USAGE = {"prompt_tokens": 812, "completion_tokens": 41, "total_tokens": 853}


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.requests: list[dict[str, Any]] = []
        self.reply = ""
        self.status = 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        if self.path != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if self.server.status != 200:
            return self._json(
                self.server.status, {"error": {"message": self.server.reply, "type": "server_error"}}
            )
        if body.get("stream"):
            return self._stream(body)
        self._json(
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.server.reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            },
        )

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        text = self.server.reply
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        events = [
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            }
        ]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            for p in pieces
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": USAGE})
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


@pytest.fixture()
def server():
    srv = ChatServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def photos(eval_dir: Path) -> list[tuple[Path, str]]:
    coco = eval_dir / "images" / "coco"
    captions = json.loads((eval_dir / "images" / "captions.json").read_text())
    picked = [(p, captions[p.name][0]) for p in sorted(coco.glob("*.jpg"))[:3] if p.name in captions]
    if len(picked) < 3:
        pytest.skip("COCO photos with captions missing from the evaluation data")
    return picked


def _hits(photos: list[tuple[Path, str]], hit_at: Callable[..., Hit]) -> list[Hit]:
    """The three photos, with a PDF chunk third."""

    def photo(item_id: int, path: Path, caption: str) -> Hit:
        return hit_at(
            item_id,
            Locator(str(path)),
            Modality.IMAGE,
            "photo",
            score=1.0 / item_id,
            scores={"clip_text": 0.31},
            ranks={"clip_text": item_id},
            image=str(path),
            metadata={"caption": caption},
        )

    (a, ca), (b, cb), (c, cc) = photos
    pdf = hit_at(
        3,
        Locator("/docs/multi_page.pdf", page=1),
        Modality.PDF,
        "chunk",
        score=0.3,
        scores={"text": 0.6},
        ranks={"text": 1},
        text=TYPEWRITER,
    )
    return [photo(1, a, ca), photo(2, b, cb), pdf, photo(4, c, cc)]


QUESTION = "What do the photos show, and who patented the typewriter?"


def _config(server: ChatServer, **kw: Any) -> LlmConfig:
    return LlmConfig(
        base_url=server.base_url, api_key=API_KEY, max_images=2, max_image_px=256, max_retries=0, **kw
    )


@pytest.fixture()
def ask_photos(text_encoder, photos, fake_searcher, hit_at) -> Callable[..., Answer]:
    """``ask_photos(config, llm=..., **kw)``: ``ask`` the QUESTION over the photo and PDF hits."""

    def run(config: LlmConfig, llm: str = "openai:test-model", **kw: Any) -> Answer:
        searcher = fake_searcher(_hits(photos, hit_at))
        return ask(searcher, QUESTION, text_encoder=text_encoder, config=config, llm=llm, **kw)

    return run


def _image_parts(request: dict[str, Any]) -> list[str]:
    content = request["body"]["messages"][0]["content"]
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"]


def test_ask_sends_images_and_checks_citations(server, photos, ask_photos):
    from PIL import Image

    server.reply = REPLY.format(a=photos[0][1].rstrip("."), b=photos[1][1].rstrip("."))
    answer = ask_photos(_config(server))

    assert len(server.requests) == 1
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == f"Bearer {API_KEY}"
    body = req["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 512 and body["max_tokens"] == 512
    urls = _image_parts(req)
    assert len(urls) == 2  # max_images: the third photo goes as its caption
    for url, (path, _) in zip(urls, photos[:2]):
        assert url.startswith("data:image/jpeg;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        with Image.open(path) as original:
            assert max(sent.size) == 256
            assert abs(sent.size[0] / sent.size[1] - original.size[0] / original.size[1]) < 0.02
    content = body["messages"][0]["content"]
    assert (
        content[0]["type"] == "text"
        and f"[1] {photos[0][0].name} (image photo, image attached below)" in content[0]["text"]
    )
    last = content[-1]["text"]
    assert "[3] multi_page.pdf p.1" in last and "Christopher Latham Sholes" in last
    assert f"[4] {photos[2][0].name} (image photo)" in last and photos[2][1] in last
    assert last.rstrip().endswith(f"Question: {QUESTION}\nAnswer:")

    assert answer.found and answer.model == "openai:test-model"
    assert answer.invalid_citations == [9]
    assert "[9]" not in answer.text and "telephone." in answer.text
    assert answer.unsupported == ["Sholes also invented the telephone."]
    assert [(c.n, c.item_id) for c in answer.citations] == [(1, 1), (2, 2), (3, 3)]
    assert answer.citations[0].locator == Locator(str(photos[0][0]))
    assert answer.citations[2].locator == Locator("/docs/multi_page.pdf", page=1)
    assert answer.citations[2].citation == "multi_page.pdf p.1"
    assert [e.as_image for e in answer.evidence] == [True, True, False, False]
    assert answer.usage == {"input_tokens": 812, "output_tokens": 41, "total_tokens": 853}
    assert API_KEY not in json.dumps(answer.to_dict())


def test_streaming_delivers_tokens_and_usage(server, ask_photos):
    server.reply = REPLY.format(a="a plate of food", b="a bird")
    tokens: list[str] = []
    answer = ask_photos(_config(server), on_token=tokens.append)
    body = server.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert len(tokens) > 10 and "".join(tokens) == server.reply
    assert answer.invalid_citations == [9] and "[9]" not in answer.text
    assert [c.n for c in answer.citations] == [1, 2, 3]
    assert answer.usage == {"input_tokens": 812, "output_tokens": 41, "total_tokens": 853}


def test_text_only_backend_gets_captions_instead_of_images(server, photos, ask_photos):
    server.reply = "The typewriter was patented by Sholes [3]."
    answer = ask_photos(_config(server, send_images=False))
    content = server.requests[0]["body"]["messages"][0]["content"]
    assert all(p["type"] == "text" for p in content)
    text = "".join(p["text"] for p in content)
    for path, caption in photos:
        assert f"{path.name} (image photo)" in text and f"Caption: {caption}" in text
    assert answer.citations[0].citation == "multi_page.pdf p.1" and answer.unsupported == []


def test_unreachable_server_raises_generation_error_without_the_key(ask_photos):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    config = LlmConfig(base_url=url, api_key=API_KEY, max_retries=0, timeout_s=5)
    with pytest.raises(GenerationError) as info:
        ask_photos(config)
    message = str(info.value)
    assert url in message and "Connection" in message
    assert API_KEY not in message


def test_server_error_echoing_the_key_is_redacted(server, ask_photos):
    server.status = 500
    server.reply = f"internal failure for key {API_KEY}"
    with pytest.raises(GenerationError) as info:
        ask_photos(_config(server))
    message = str(info.value)
    assert server.base_url in message and "internal failure" in message
    assert API_KEY not in message and "***" in message


class OllamaHandler(BaseHTTPRequestHandler):
    """Ollama's /api/chat: newline-delimited JSON chunks, images as base64 strings."""

    server: ChatServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        text = self.server.reply
        for i in range(0, len(text), 9):
            chunk = {
                "model": body["model"],
                "created_at": "2025-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": text[i : i + 9]},
                "done": False,
            }
            self.wfile.write((json.dumps(chunk) + "\n").encode())
        final = {
            "model": body["model"],
            "created_at": "2025-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 700,
            "eval_count": 30,
        }
        self.wfile.write((json.dumps(final) + "\n").encode())


def test_ollama_backend_sends_images_and_streams(ask_photos):
    srv = ChatServer()
    srv.RequestHandlerClass = OllamaHandler
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        srv.reply = "It shows a meal [1]. Sholes patented the typewriter [3]. Bell too [5]."
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        tokens: list[str] = []
        config = LlmConfig(base_url=url, max_images=2, max_image_px=200)
        answer = ask_photos(config, llm="ollama:llava", on_token=tokens.append)
    finally:
        srv.shutdown()
        srv.server_close()
    req = srv.requests[0]
    assert req["path"] == "/api/chat" and req["body"]["model"] == "llava"
    message = req["body"]["messages"][0]
    assert len(message["images"]) == 2
    from PIL import Image

    assert max(Image.open(io.BytesIO(base64.b64decode(message["images"][0]))).size) == 200
    assert "[3] multi_page.pdf p.1" in message["content"]
    assert "".join(tokens) == srv.reply
    assert answer.model == "ollama:llava" and answer.invalid_citations == [5]
    assert [c.n for c in answer.citations] == [1, 2]  # renumbered in order of citation
    assert answer.usage == {"input_tokens": 700, "output_tokens": 30, "total_tokens": 730}
