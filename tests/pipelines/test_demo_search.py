"""Fusion leaves out text-space candidates that are not about the query (``search.min_text_similarity``),
which is what lets the demo's image queries show their images first (tests/test_demo.py end to end)."""

from __future__ import annotations

import pytest

from retriever.config import SearchConfig
from retriever.errors import ConfigError
from retriever.search import Retriever, Run


def _order(config: SearchConfig, runs: dict[str, Run]) -> list[int]:
    # a text-only store: every run could find every item, so fusion needs no catalog
    return [item for item, _ in Retriever(None, None, None, config).fuse(runs)]  # type: ignore[arg-type]


def test_text_candidates_below_the_floor_do_not_count() -> None:
    runs = {"text": Run([1, 2, 3], {1: 0.62, 2: 0.19, 3: 0.05}), "bm25": Run([3], {3: 4.0})}
    # 2 was found by the text space alone, with a similarity of unrelated text: gone; 3 keeps its BM25 rank
    assert _order(SearchConfig(), runs) == [1, 3]
    assert _order(SearchConfig(min_text_similarity=-1.0, fusion="rrf"), runs) == [3, 1, 2]  # RRF of every rank
    assert _order(SearchConfig(min_text_similarity=-1.0, fusion="score"), runs) == [1, 3, 2]  # 1 and 3 tie: by id


def test_the_floor_is_a_checked_setting() -> None:
    assert SearchConfig().min_text_similarity == 0.2
    with pytest.raises(ConfigError, match="min_text_similarity"):
        SearchConfig(min_text_similarity=1.5)
