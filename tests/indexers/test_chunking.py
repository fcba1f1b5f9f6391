"""Chunking: even cuts on sentence boundaries, at most ``max_chars``, every character covered."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from indexers.chunking import chunk_spans
from retriever.config import IngestConfig


def _sentences(n: int, seed: int = 0) -> str:
    words = "protein cells mice tumour receptor signalling dose cohort risk trial expression".split()
    return " ".join(
        " ".join(words[(seed + i * 7 + j) % len(words)] for j in range(6 + (i % 5))).capitalize() + "."
        for i in range(n)
    )


def _check(text: str, spans: list[tuple[int, int]], max_chars: int) -> None:
    assert all(0 < b - a <= max_chars for a, b in spans)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)
    covered = set()
    for a, b in spans:
        covered.update(range(a, b))
    assert all(i in covered or text[i].isspace() for i in range(len(text)))


def test_a_text_just_over_the_limit_is_cut_in_halves_not_into_a_scrap() -> None:
    text = _sentences(40)
    assert 1600 < len(text) < 2400
    spans = chunk_spans(text, 1600, 0)
    _check(text, spans, 1600)
    sizes = [b - a for a, b in spans]
    assert len(spans) == 2 and min(sizes) > 0.6 * max(sizes), sizes
    assert all(text[b - 1] == "." for _, b in spans)  # cut at sentence ends


def test_short_text_is_one_chunk_and_blank_text_none() -> None:
    assert chunk_spans("One sentence.  ", 1000, 150) == [(0, 13)]
    assert chunk_spans(" \n\t ", 1000, 150) == []
    with pytest.raises(ValueError, match="overlap < max_chars"):
        chunk_spans("text", 100, 100)


@pytest.mark.parametrize(("max_chars", "overlap"), [(400, 60), (1000, 150), (1600, 0)])
def test_chunks_of_a_real_document_are_even_and_cover_it(eval_dir: Path, max_chars: int, overlap: int) -> None:
    text = (eval_dir / "pdf" / "groundtruth" / "docling__multi_page.docling.md").read_text(encoding="utf-8")
    spans = chunk_spans(text, max_chars, overlap)
    _check(text, spans, max_chars)
    sizes = [b - a for a, b in spans]
    # about as many chunks as full windows would need (cuts at sentence ends cost some), none a scrap
    assert len(spans) <= math.ceil(1.35 * (len(text) - overlap) / (max_chars - overlap))
    assert min(sizes) >= 0.3 * max_chars, sizes
    if overlap:
        assert all(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))


def test_the_default_chunks_fit_the_scifact_abstracts_in_fewer_items(eval_dir: Path) -> None:
    """The default size gives SciFact's 2,244 abstracts (title + text, 1,516 characters on average)
    about 1.4 chunks each (1,000/150 gave 2.2), with no chunk under 300 characters unless the
    abstract is."""
    cfg = IngestConfig()
    rows = [json.loads(line) for line in
            (eval_dir / "retrieval" / "scifact_beir_subset" / "corpus.jsonl").read_text().splitlines()]
    counts, scraps = 0, 0
    for row in rows:
        body = f"{row['title'].strip()}\n\n{row['text'].strip()}\n"
        spans = chunk_spans(body, cfg.chunk_chars, cfg.chunk_overlap)
        counts += len(spans)
        scraps += sum(1 for a, b in spans if b - a < 300 and len(spans) > 1)
    assert counts / len(rows) < 1.5, counts / len(rows)
    assert scraps <= len(rows) // 100, scraps
