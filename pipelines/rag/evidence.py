"""The values that flow through grounded generation: numbered evidence, what a backend is asked
and what it produced, and the checked answer with its citations.

This module imports nothing else from ``pipelines.rag``: prompts, the extractive answerer, the
citation checker, the backends and the ``ask`` flow all build on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from retriever.config import LlmConfig
from retriever.encoders.base import TextEncoder
from retriever.types import Hit, Locator

__all__ = [
    "Answer",
    "Citation",
    "Evidence",
    "EvidencePack",
    "Generation",
    "GenerationRequest",
    "Searcher",
]


class Searcher(Protocol):
    """Anything that searches the store (``Engine`` does)."""

    def search(
        self,
        text: str | None = None,
        *,
        k: int = 10,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]: ...


@dataclass(frozen=True)
class Evidence:
    """One numbered piece of evidence ``[n]``; ``as_image``: sent to the model as an image."""

    n: int
    hit: Hit
    as_image: bool

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "as_image": self.as_image, **self.hit.to_dict()}


@dataclass(frozen=True)
class EvidencePack:
    """The numbered evidence and the data URLs of the images among it (by number)."""

    evidence: list[Evidence]
    images: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything a backend may use to answer ``question`` from ``pack``.

    ``template``: the prompt template (chat backends); ``term_weights``: the idf of the
    question's terms in the store (the extractive answerer; None weighs every term alike).
    """

    question: str
    pack: EvidencePack
    config: LlmConfig
    text_encoder: TextEncoder
    template: str | None = None
    term_weights: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Generation:
    """What a backend produced: the raw answer text (numbered as the evidence it was given) and
    token usage when reported."""

    text: str
    usage: dict[str, Any] | None


@dataclass(frozen=True)
class Citation:
    """A valid ``[n]`` of the answer, resolved to the evidence it points at."""

    n: int
    item_id: int
    citation: str
    locator: Locator
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "item_id": self.item_id,
            "citation": self.citation,
            "locator": self.locator.to_dict(),
            "source": self.source,
        }


@dataclass(frozen=True)
class Answer:
    """A checked answer: every ``[n]`` left in ``text`` refers to ``evidence``."""

    question: str
    text: str
    citations: list[Citation]
    evidence: list[Evidence]
    unsupported: list[str]
    invalid_citations: list[int]
    found: bool
    model: str
    usage: dict[str, Any] | None
    extractive: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "text": self.text,
            "found": self.found,
            "model": self.model,
            "extractive": self.extractive,
            "usage": self.usage,
            "citations": [c.to_dict() for c in self.citations],
            "unsupported": list(self.unsupported),
            "invalid_citations": list(self.invalid_citations),
            "evidence": [e.to_dict() for e in self.evidence],
        }
