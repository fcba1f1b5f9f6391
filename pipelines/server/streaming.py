"""``POST /ask/stream``: the answer of ``POST /ask`` as server-sent events, sent while it is made.

The events, each ``event: NAME`` and one line of JSON ``data``:

* ``evidence`` ``{"evidence": [...]}``: the numbered evidence (as in ``POST /ask``, with its URLs)
  that the ``[n]`` of the text that follows cite: what a streaming model was given, or, when the
  answer comes whole (the extractive answerer, "not found"), the checked answer's evidence;
* ``delta`` ``{"text": "..."}``: the next piece of the answer text, as the model writes it (an
  answer that comes whole is sent in pieces too);
* ``answer``: the body of ``POST /ask`` (the checked text, renumbered citations and evidence), last;
  it replaces what the deltas built;
* ``error`` ``{"error", "type", "status"}``: the answer failed after the stream began, last.

The answer is made in a thread of its own and its events wait in a queue. The response starts
only once the first event is there, so a failure before it (the search, the model's first reply)
is an ordinary JSON error with its status. When the client goes away, the model is stopped at
its next token.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipelines.engine import Engine
from pipelines.rag.evidence import Evidence
from pipelines.server.errors import ApiError, status_of
from pipelines.server.links import Links
from retriever.errors import MmragError

__all__ = ["EVENT_STREAM", "AnswerStream", "answer_work", "pieces", "sse"]

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
PIECE_CHARS = 48  # an answer that comes whole is sent in pieces of about this many characters
_WORDS = re.compile(r"\S+\s*|\s+")

Event = tuple[str, Any]  # (name, data); name "failure" carries the exception


def sse(event: str, data: Any) -> bytes:
    """One server-sent event: its name and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut after whitespace; a short text stays whole."""
    if len(text) <= size:
        if text:
            yield text
        return
    current = ""
    for word in _WORDS.findall(text):
        if current and len(current) + len(word) > size:
            yield current
            current = ""
        current += word
    if current:
        yield current


class _Abandoned(Exception):
    """The client went away: the answer is not wanted any more."""


def _error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ApiError):
        return {"error": exc.message, "type": type(exc).__name__, "status": exc.status}
    if isinstance(exc, MmragError):
        return {"error": str(exc) or type(exc).__name__, "type": type(exc).__name__, "status": status_of(exc)}
    log.error("the streamed answer failed", exc_info=exc)
    return {"error": f"internal error ({type(exc).__name__}); the server log has the details",
            "type": "InternalError", "status": 500}


class AnswerStream:
    """One answer made in a thread; its events wait in a queue for the response to send them."""

    def __init__(self) -> None:
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._closed = threading.Event()

    def put(self, event: str, data: Any) -> None:
        """Queue an event; raises (in the answering thread) once the client has gone away."""
        if self._closed.is_set():
            raise _Abandoned
        self._events.put((event, data))

    def start(self, work: Callable[[AnswerStream], dict[str, Any]]) -> Event:
        """Run ``work`` (which returns the final answer) in a thread; the first event once it is there.

        A failure before any event is raised here, to be answered as an ordinary JSON error.
        """
        threading.Thread(target=self._run, args=(work,), name="ask-stream", daemon=True).start()
        first = self._events.get()
        assert first is not None  # the thread queues its result or failure before the end
        if first[0] == "failure":
            self._closed.set()
            raise first[1]
        return first

    def _run(self, work: Callable[[AnswerStream], dict[str, Any]]) -> None:
        try:
            self._events.put(("answer", work(self)))
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - every failure is reported to the client or raised
            self._events.put(("failure", exc))
        finally:
            self._events.put(None)

    def events(self, first: Event) -> Iterator[bytes]:
        """The encoded events, from ``first`` to the answer or the error (a sync iterator: Starlette
        reads it in its thread pool). Closing it tells the answering thread to stop."""
        item: Event | None = first
        try:
            while item is not None:
                name, data = item
                yield sse("error", _error_body(data)) if name == "failure" else sse(name, data)
                item = self._events.get()
        finally:
            self._closed.set()


def answer_work(engine: Engine, root: str, question: str, *, k: int, modalities: Sequence[str] | None,
                where: dict[str, Any]) -> Callable[[AnswerStream], dict[str, Any]]:
    """The answering of one question, sending its evidence and text to a stream as they come."""

    def work(stream: AnswerStream) -> dict[str, Any]:
        def on_evidence(evidence: Sequence[Evidence]) -> None:
            links = Links(engine, root, (ev.hit.source_uri for ev in evidence))
            stream.put("evidence", {"evidence": [links.evidence(ev) for ev in evidence]})

        def on_token(text: str) -> None:
            for piece in pieces(text):
                stream.put("delta", {"text": piece})

        answer = engine.ask(question, k=k, where=where, modalities=modalities, on_token=on_token,
                            on_evidence=on_evidence)
        uris = [ev.hit.source_uri for ev in answer.evidence] + [c.source for c in answer.citations]
        return Links(engine, root, uris).answer(answer)

    return work
