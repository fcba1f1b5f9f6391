"""The offline default answerer: no model generates anything, it picks evidence sentences.

Each sentence of the text evidence is scored against the question: cosine in the
text space (the store's MiniLM encoder) plus a small lexical term (the share of
the question's content words the sentence contains, which rewards exact names and
numbers that embeddings blur). The best few, deduplicated, are returned in order of
relevance, each with the ``[n]`` of its evidence. Images without text contribute
nothing. The text says that it is extracted, not written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from retriever.config import LlmConfig
from retriever.encoders.base import TextEncoder

if TYPE_CHECKING:
    from pipelines.rag import Evidence

__all__ = ["EXTRACTIVE_HEADER", "Candidate", "extractive_answer", "score_sentences", "split_sentences"]

EXTRACTIVE_HEADER = "Extracted from the indexed data (no language model wrote this):"

LEXICAL_WEIGHT = 0.3  # a full lexical match adds about what a moderate cosine gap does
RELATIVE_CUT = 0.8  # further sentences must score at least this share of the best one
DUPLICATE_COSINE = 0.92  # overlapping chunks repeat sentences; treat these as one
MAX_SENTENCE_CHARS = 600

_ABBREVIATIONS = {
    "e.g.",
    "i.e.",
    "etc.",
    "vs.",
    "cf.",
    "al.",
    "dr.",
    "mr.",
    "mrs.",
    "ms.",
    "st.",
    "no.",
    "fig.",
    "figs.",
    "p.",
    "pp.",
    "vol.",
    "ch.",
    "sec.",
    "approx.",
    "inc.",
    "ltd.",
    "jr.",
    "sr.",
}
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[A-Z0-9])")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•▪●◦]|\d{1,3}[.)])\s+")
_BULLET = re.compile(r"\s*[•▪●◦]\s+")
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORD_TEXT = (
    "a an and are as at be been being but by can could did do does for from had has have how i if in "
    "into is it its of on or so such than that the their them then there these they this to was were "
    "what when where which who whom whose why will with would you your about after before said say "
    "says tell me please much many"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def split_sentences(text: str, keep_lines: bool = False) -> list[str]:
    """Split ``text`` into sentences.

    ``keep_lines``: every line (and list item) is at least its own sentence, as in a
    model's answer. Otherwise line breaks are layout (PDF text, transcripts) and are
    joined first; bullet characters still separate items.
    """
    if keep_lines:
        blocks = [_LIST_MARKER.sub("", line) for line in text.splitlines()]
    else:
        joined = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1-\2", text)
        blocks = _BULLET.split(" ".join(joined.split()))
    out: list[str] = []
    for block in blocks:
        block = block.strip()
        if block:
            out.extend(_split_block(block))
    return out


def _split_block(block: str) -> list[str]:
    pieces = [p.strip() for p in _BOUNDARY.split(block) if p.strip()]
    merged: list[str] = []
    for piece in pieces:
        if merged and merged[-1].split()[-1].lower().lstrip("([\"'") in _ABBREVIATIONS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _content_words(text: str) -> set[str]:
    words = set()
    for w in _WORD.findall(text.lower()):
        if w in _STOPWORDS or (len(w) < 2 and not w.isdigit()):
            continue
        words.add(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w)
    return words


@dataclass(frozen=True)
class Candidate:
    """One evidence sentence with its score against the question."""

    n: int
    sentence: str
    score: float
    vector: np.ndarray


def score_sentences(question: str, evidence: Sequence[Evidence], encoder: TextEncoder) -> list[Candidate]:
    """Every usable sentence of the text evidence, scored; best first."""
    rows: list[tuple[int, str]] = []
    for ev in evidence:
        for sentence in split_sentences(ev.hit.text or ""):
            if len(sentence.split()) >= 3 and re.search(r"[^\W\d_]", sentence):
                rows.append((ev.n, sentence[:MAX_SENTENCE_CHARS]))
    if not rows:
        return []
    vecs = np.asarray(encoder.encode_texts([question] + [s for _, s in rows]))
    q, svecs = vecs[0], vecs[1:]
    cosines = svecs @ q
    qwords = _content_words(question)
    out = []
    for (n, sentence), cos, vec in zip(rows, cosines, svecs):
        lexical = len(qwords & _content_words(sentence)) / len(qwords) if qwords else 0.0
        out.append(Candidate(n, sentence, float(cos) + LEXICAL_WEIGHT * lexical, vec))
    out.sort(key=lambda c: -c.score)
    return out


def pick(candidates: Sequence[Candidate], max_sentences: int, min_score: float) -> list[Candidate]:
    """The best ``max_sentences`` above the floors, without near-duplicates."""
    if not candidates or candidates[0].score < min_score:
        return []
    floor = max(min_score, RELATIVE_CUT * candidates[0].score)
    chosen: list[Candidate] = []
    for cand in candidates:
        if len(chosen) >= max_sentences or cand.score < floor:
            break
        if any(_duplicate(cand, c) for c in chosen):
            continue
        chosen.append(cand)
    return chosen


def _duplicate(a: Candidate, b: Candidate) -> bool:
    na, nb = " ".join(_WORD.findall(a.sentence.lower())), " ".join(_WORD.findall(b.sentence.lower()))
    return na in nb or nb in na or float(a.vector @ b.vector) >= DUPLICATE_COSINE


def _with_citation(sentence: str, n: int) -> str:
    sentence = sentence.rstrip()
    if sentence and sentence[-1] in ".!?":
        return f"{sentence[:-1]} [{n}]{sentence[-1]}"
    return f"{sentence} [{n}]"


def extractive_answer(
    question: str, evidence: Sequence[Evidence], encoder: TextEncoder, config: LlmConfig
) -> str | None:
    """The extracted answer text (header + one cited sentence per line), or None if nothing fits."""
    chosen = pick(
        score_sentences(question, evidence, encoder),
        max_sentences=config.extractive_sentences,
        min_score=config.min_text_relevance,
    )
    if not chosen:
        return None
    lines = [EXTRACTIVE_HEADER] + [f"- {_with_citation(c.sentence, c.n)}" for c in chosen]
    return "\n".join(lines)
