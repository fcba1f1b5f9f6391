"""The offline default answerer: no model generates anything, it picks evidence sentences.

Each sentence of the text evidence is scored against the question: cosine in the
text space (the store's MiniLM encoder) plus a small lexical term (the share of
the question's content the sentence contains, which rewards exact names and
numbers that embeddings blur). The best few, deduplicated, are returned in order of
relevance, each with the ``[n]`` of its evidence. Images without text contribute
nothing. The text says that it is extracted, not written.

"The question's content" is its terms as BM25 tokenises them (stop words and words
that only frame a question, like *say* or *tell*, removed), each weighted by its
idf in the store, so a term that many items contain counts little. A sentence is
quoted only when its evidence item contains at least half of that content, or when
the sentence alone is a strong match in meaning: an answerer that cannot read has
to see the question's subject in the text, not just one of its words ("What did the
report say about revenue?" must not quote sentences that mention a report).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipelines.rag.evidence import Evidence, Generation, GenerationRequest
from pipelines.rag.prompts import NOT_FOUND_TEXT
from retriever.config import LlmConfig
from retriever.encoders.base import TextEncoder
from retriever.index.bm25 import tokenize

__all__ = [
    "EXTRACTIVE_HEADER",
    "Candidate",
    "ExtractiveBackend",
    "content_coverage",
    "extractive_answer",
    "question_terms",
    "score_sentences",
    "split_sentences",
]

EXTRACTIVE_HEADER = "Extracted from the indexed data (no language model wrote this):"

LEXICAL_WEIGHT = 0.3  # a full lexical match adds about what a moderate cosine gap does
RELATIVE_CUT = 0.8  # further sentences must score at least this share of the best one
DUPLICATE_COSINE = 0.92  # overlapping chunks repeat sentences; treat these as one
MAX_SENTENCE_CHARS = 600
# Quoting needs the evidence item to hold this share of the question's idf-weighted content, or the
# sentence this cosine. Measured with the default MiniLM: the evidence of the tests' known-answer
# questions covers 0.66-1.0 of them, their answer sentences have cosine 0.37-0.80; PDF pages that
# share only "report" with "What did the report say about revenue?" cover 0.30, and sentences about
# some report reach cosine 0.44 at most.
MIN_COVERAGE = 0.5
STRONG_COSINE = 0.5
# words that frame a question rather than say what it is about (BM25 already drops what/did/about)
_FRAMING_TEXT = (
    "say says said saying tell tells told describe describes described explain explains "
    "mention mentions mentioned please"
)

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
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+\S")
# a paper's own reference markers ("[12]", "[3, 4]", "[5-7]"): quoted as they are, they would read
# as citations of this answer's evidence
_REFERENCE = re.compile(r"\s*\[\d{1,4}(?:\s*[,;\u2013-]\s*\d{1,4})*\]")


def split_sentences(text: str, keep_lines: bool = False) -> list[str]:
    """Split ``text`` into sentences.

    ``keep_lines``: every line (and list item) is at least its own sentence, as in a
    model's answer. Otherwise line breaks are layout (PDF text, transcripts) and are
    joined first; bullet characters still separate items.
    """
    if keep_lines:
        blocks = [_LIST_MARKER.sub("", line) for line in text.splitlines()]
    else:
        blocks = [b for part in _heading_blocks(text) for b in _layout_blocks(part)]
    out: list[str] = []
    for block in blocks:
        block = block.strip()
        if block:
            out.extend(_split_block(block))
    return out


def _heading_blocks(text: str) -> list[str]:
    """``text`` cut before and after each Markdown heading line (a title is not part of a sentence)."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if _HEADING.match(line):
            blocks += ["\n".join(current), line.strip()]
            current = []
        else:
            current.append(line)
    return [b for b in [*blocks, "\n".join(current)] if b.strip()]


def _layout_blocks(text: str) -> list[str]:
    """Layout line breaks joined (a word hyphenated across lines kept whole); bullets split items."""
    joined = re.sub(r"(\w)-\s*\n\s*(\w)", r"\1-\2", text)
    return _BULLET.split(" ".join(joined.split()))


def _split_block(block: str) -> list[str]:
    pieces = [p.strip() for p in _BOUNDARY.split(block) if p.strip()]
    merged: list[str] = []
    for piece in pieces:
        if merged and merged[-1].split()[-1].lower().lstrip("([\"'") in _ABBREVIATIONS:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


@lru_cache(maxsize=1)
def _framing() -> frozenset[str]:
    return frozenset(tokenize(_FRAMING_TEXT))


def question_terms(question: str) -> list[str]:
    """The question's content terms, as the store's BM25 index tokenises text (stemmed)."""
    return [t for t in dict.fromkeys(tokenize(question)) if t not in _framing()]


def content_coverage(terms: Sequence[str], weights: Mapping[str, float] | None, text: str) -> float:
    """The share of ``terms`` that ``text`` contains, each term weighted (default: all alike)."""
    if not terms:
        return 0.0
    weight = {t: (weights or {}).get(t, 1.0) for t in terms}
    total = sum(weight.values())
    if total <= 0:
        return 0.0
    present = set(tokenize(text))
    return sum(w for t, w in weight.items() if t in present) / total


@dataclass(frozen=True)
class Candidate:
    """One evidence sentence with its score against the question."""

    n: int
    sentence: str
    score: float
    vector: np.ndarray
    cosine: float = 0.0


def score_sentences(
    question: str,
    evidence: Sequence[Evidence],
    encoder: TextEncoder,
    weights: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """Every usable sentence of the text evidence, scored; best first.

    ``weights``: the question terms' idf in the store (see :func:`question_terms`).
    """
    rows = [(ev.n, _REFERENCE.sub("", s)[:MAX_SENTENCE_CHARS]) for ev in evidence
            for s in split_sentences(ev.hit.text or "") if _is_statement(s)]
    if not rows:
        return []
    vecs = np.asarray(encoder.encode_texts([question] + [s for _, s in rows]))
    q, svecs = vecs[0], vecs[1:]
    terms = question_terms(question)
    out = []
    for (n, sentence), cos, vec in zip(rows, svecs @ q, svecs):
        lexical = content_coverage(terms, weights, sentence)
        out.append(Candidate(n, sentence, float(cos) + LEXICAL_WEIGHT * lexical, vec, float(cos)))
    out.sort(key=lambda c: -c.score)
    return out


def _is_statement(sentence: str) -> bool:
    """A sentence worth quoting: three words or more, some letters, not a heading."""
    words = len(sentence.split())
    return words >= 3 and bool(re.search(r"[^\W\d_]", sentence)) and not _HEADING.match(sentence)


def quotable(
    question: str,
    evidence: Sequence[Evidence],
    candidates: Sequence[Candidate],
    weights: Mapping[str, float] | None,
) -> list[Candidate]:
    """The candidates whose evidence holds most of the question's content, or that closely match it."""
    terms = question_terms(question)
    covered = {ev.n for ev in evidence if content_coverage(terms, weights, ev.hit.text or "") >= MIN_COVERAGE}
    return [c for c in candidates if c.n in covered or c.cosine >= STRONG_COSINE]


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
    question: str,
    evidence: Sequence[Evidence],
    encoder: TextEncoder,
    config: LlmConfig,
    weights: Mapping[str, float] | None = None,
) -> str | None:
    """The extracted answer text (header + one cited sentence per line), or None if nothing fits.

    ``weights``: idf of the question's terms in the store (default: every term alike).
    """
    candidates = score_sentences(question, evidence, encoder, weights)
    chosen = pick(
        quotable(question, evidence, candidates, weights),
        max_sentences=config.extractive_sentences,
        min_score=config.min_text_relevance,
    )
    if not chosen:
        return None
    lines = [EXTRACTIVE_HEADER] + [f"- {_with_citation(c.sentence, c.n)}" for c in chosen]
    return "\n".join(lines)


@dataclass(frozen=True)
class ExtractiveBackend:
    """The offline default backend: the answer is picked from the evidence, nothing is generated.

    It does not stream: ``ask`` passes the checked answer to ``on_token`` whole.
    """

    name: str = "extractive"
    accepts_images: bool = False
    extractive: bool = True
    streams: bool = False

    def generate(self, request: GenerationRequest, on_token: Callable[[str], None] | None = None) -> Generation:
        """The extracted answer (see :func:`extractive_answer`), or the "not found" text."""
        text = extractive_answer(request.question, request.pack.evidence, request.text_encoder,
                                 request.config, request.term_weights)
        return Generation(NOT_FOUND_TEXT if text is None else text, None)
