"""Fixtures for the tests of pipelines/: canned hits and a fake searcher that serves them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from retriever.types import Hit, Locator, Modality


class FakeSearcher:
    """Serves ``hits`` (at most ``k`` of them) for any query and records each call's arguments."""

    def __init__(self, hits: Sequence[Hit]) -> None:
        self.hits = list(hits)
        self.calls: list[dict[str, Any]] = []

    def search(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        self.calls.append({"text": text, "k": k, "modalities": modalities, "where": where})
        return self.hits[:k]


@pytest.fixture()
def fake_searcher() -> Callable[[Sequence[Hit]], FakeSearcher]:
    """``fake_searcher(hits)``: a searcher (as ``ask`` and ``MmragRetriever`` take one) over canned hits."""
    return FakeSearcher


def build_hit(
    item_id: int,
    locator: Locator,
    modality: Modality,
    kind: str,
    *,
    score: float,
    scores: Mapping[str, float],
    ranks: Mapping[str, int],
    text: str | None = None,
    thumbnail: str | None = None,
    image: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Hit:
    """A hit on ``locator``'s source; the source name is the file name of its uri."""
    return Hit(
        item_id=item_id,
        score=score,
        scores=scores,
        ranks=ranks,
        modality=modality,
        kind=kind,
        source_uri=locator.uri,
        source_name=Path(locator.uri).name,
        locator=locator,
        text=text,
        thumbnail_path=thumbnail,
        image_path=image,
        metadata=metadata or {},
    )


@pytest.fixture()
def hit_at() -> Callable[..., Hit]:
    """``hit_at(item_id, locator, modality, kind, score=, scores=, ranks=, ...)``: one canned hit."""
    return build_hit


@pytest.fixture(scope="module")
def client(engine: Any) -> Iterator[Any]:
    """A test client of the HTTP service over the module's ``engine`` fixture."""
    from fastapi.testclient import TestClient

    from pipelines.server.app import create_app

    with TestClient(create_app(engine)) as c:
        yield c


JOB_WAIT_S = 60.0


def _finished_job(client: Any, started: Any, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ingest job that ``started`` (a 202 answer of POST /ingest) began, once it has finished."""
    import time

    assert started.status_code == 202, started.text
    url = started.json()["url"]
    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        resp = client.get(url, headers=headers or {})
        assert resp.status_code == 200, resp.text
        job = resp.json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, f"ingest job still {job['status']} after {JOB_WAIT_S} s: {job}"
        time.sleep(0.05)


@pytest.fixture
def finished_job() -> Callable[..., dict[str, Any]]:
    """``finished_job(client, resp, headers=None)``: the job POST /ingest started, polled until it ends."""
    return _finished_job
