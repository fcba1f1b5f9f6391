"""Fixtures for the tests of pipelines/: a fake searcher that serves canned hits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from retriever.types import Hit


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
