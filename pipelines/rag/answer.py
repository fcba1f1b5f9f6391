"""Grounded generation: retrieve evidence, number it, ask a model, check its citations.

Flow of :func:`ask`: search (one fused list) -> keep the hits that are relevant
enough (see :func:`select_relevant`) -> number them ``[1]..[n]`` (images as image
parts when the backend takes them) -> generate (extractive by default, or a
LangChain chat model) -> :func:`check_citations` removes citations of evidence
that was not given and flags sentences without a citation -> the cited evidence
is renumbered ``[1], [2], ...`` in order of first citation (text, citations and
evidence alike; uncited evidence follows). With no relevant evidence the answer is
an explicit "not found" and no model is called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.rag import prompts
from pipelines.rag.citations import (
    CitationCheck,
    check_citations,
    citation_order,
    is_not_found,
    renumber_citations,
)
from pipelines.rag.evidence import (
    Answer,
    Citation,
    Evidence,
    EvidencePack,
    Generation,
    GenerationRequest,
    Searcher,
)
from pipelines.rag.extractive import question_terms
from pipelines.rag.llms import Backend, resolve_backend
from retriever.config import LlmConfig
from retriever.encoders.base import TextEncoder
from retriever.errors import QueryError
from retriever.types import Hit

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

__all__ = [
    "Answer",
    "Citation",
    "CitationCheck",
    "Evidence",
    "EvidencePack",
    "Searcher",
    "ask",
    "build_evidence",
    "check_citations",
    "select_relevant",
    "term_weights",
]


# ---- relevance and the evidence pack ------------------------------------------------


def select_relevant(
    question: str, hits: Sequence[Hit], text_encoder: TextEncoder, config: LlmConfig
) -> list[Hit]:
    """The hits worth showing a model, in fused order.

    A hit with text counts when the cosine between the question and its text in
    the MiniLM text space reaches ``config.min_text_relevance``; a visual hit also
    counts when its CLIP score reaches ``config.min_image_relevance``. Fused RRF
    scores are rank-based, so they cannot say "nothing here is relevant"; these
    raw similarities can.
    """
    textual = [h for h in hits if (h.text or "").strip()]
    sims: dict[int, float] = {}
    if textual:
        vecs = text_encoder.encode_texts([question] + [h.text or "" for h in textual])
        q, rows = np.asarray(vecs[0]), np.asarray(vecs[1:])
        sims = {id(h): float(s) for h, s in zip(textual, rows @ q)}
    kept = []
    for hit in hits:
        text_ok = sims.get(id(hit), -1.0) >= config.min_text_relevance
        clip = max((hit.scores[r] for r in ("clip_text", "clip_image") if r in hit.scores), default=None)
        image_ok = hit.image_path is not None and clip is not None and clip >= config.min_image_relevance
        if text_ok or image_ok:
            kept.append(hit)
    return kept


def build_evidence(hits: Sequence[Hit], *, images: bool, config: LlmConfig) -> EvidencePack:
    """Number ``hits`` as ``[1]..[n]``; the first ``max_images`` readable images become image parts."""
    evidence: list[Evidence] = []
    data_urls: dict[int, str] = {}
    for n, hit in enumerate(hits, start=1):
        url = None
        if images and hit.image_path and len(data_urls) < config.max_images:
            url = prompts.image_data_url(hit.image_path, config.max_image_px)
        if url is not None:
            data_urls[n] = url
        evidence.append(Evidence(n=n, hit=hit, as_image=url is not None))
    return EvidencePack(evidence=evidence, images=data_urls)


# ---- the ask flow ---------------------------------------------------------------------


def ask(
    searcher: Searcher,
    question: str,
    *,
    text_encoder: TextEncoder,
    config: LlmConfig,
    k: int = 8,
    where: Mapping[str, Any] | None = None,
    modalities: Sequence[str] | None = None,
    llm: str | BaseChatModel | None = None,
    prompt: str | None = None,
    on_token: Callable[[str], None] | None = None,
    on_evidence: Callable[[Sequence[Evidence]], None] | None = None,
) -> Answer:
    """Answer ``question`` from the store's evidence, with checked citations.

    ``llm``: a spec (``extractive``, ``openai:MODEL``, ``ollama:MODEL``, ``llamacpp[:PATH]``)
    or a LangChain chat model; default ``config.spec``. ``prompt``: a template (or template
    file) overriding ``config.prompt``. ``on_token`` receives the answer text as it is
    produced: a chat model's raw text, with the numbers it was given; ``Answer.text`` is the
    checked version, numbered in order of citation. The extractive answer comes whole, as
    ``Answer.text``. ``on_evidence`` receives the numbered evidence that the text passed to
    ``on_token`` cites, before that text: the evidence as given to a streaming model, else the
    checked answer's (``Answer.evidence``).
    """
    if not isinstance(question, str) or not question.strip():
        raise QueryError(f"ask needs a non-empty question string, got {question!r}")
    if k < 1:
        raise QueryError(f"ask needs k >= 1, got {k}")
    question = question.strip()  # the settings in ``config`` were checked by LlmConfig itself
    backend = resolve_backend(llm, config)
    template = None if backend.extractive else prompts.resolve_template(prompt, config.prompt)
    hits = searcher.search(text=question, k=k, modalities=modalities, where=where)
    relevant = select_relevant(question, hits, text_encoder, config)
    pack = build_evidence(relevant, images=backend.accepts_images, config=config)
    if relevant:
        weights = term_weights(searcher, question) if backend.extractive else None
        request = GenerationRequest(question, pack, config, text_encoder, template, weights)
        if on_evidence is not None and backend.streams:
            on_evidence(pack.evidence)
        generation = backend.generate(request, on_token if backend.streams else None)
    else:  # nothing relevant: the answer is "not found" and no model is called
        generation = Generation(prompts.NOT_FOUND_TEXT, None)
    answer = _checked(question, generation, pack, backend)
    if not (relevant and backend.streams):  # what was not streamed comes whole: the checked answer
        if on_evidence is not None:
            on_evidence(answer.evidence)
        if on_token is not None:
            on_token(answer.text)
    return answer


def term_weights(searcher: Searcher, question: str) -> dict[str, float] | None:
    """The idf of the question's terms in the searcher's store (an ``Engine``); None for other searchers."""
    store = getattr(searcher, "store", None)
    if store is None or not callable(getattr(store, "bm25", None)):
        return None
    return store.bm25().index.idf(question_terms(question))


def _checked(question: str, generation: Generation, pack: EvidencePack, backend: Backend) -> Answer:
    """The checked answer, its evidence renumbered: cited evidence ``[1]..[m]`` in order of first citation."""
    model, usage, extractive = backend.name, generation.usage, backend.extractive
    check = check_citations(generation.text, len(pack.evidence))
    if is_not_found(check.text) or not check.text:
        text = check.text or prompts.NOT_FOUND_TEXT
        return Answer(question, text, [], pack.evidence, [], check.invalid, False, model, usage, extractive)
    text, evidence = _renumbered(check, pack.evidence)
    return Answer(
        question=question,
        text=text,
        citations=[_citation(ev) for ev in evidence[: len(check.cited)]],
        evidence=evidence,
        unsupported=check.unsupported,
        invalid_citations=check.invalid,
        found=True,
        model=model,
        usage=usage,
        extractive=extractive,
    )


def _renumbered(check: CitationCheck, evidence: Sequence[Evidence]) -> tuple[str, list[Evidence]]:
    """The answer text and evidence with the numbers a reader sees: cited first, in order, no gaps."""
    mapping = citation_order(check.cited, len(evidence))
    moved = [replace(ev, n=mapping[ev.n]) for ev in evidence]
    return renumber_citations(check.text, mapping), sorted(moved, key=lambda ev: ev.n)


def _citation(ev: Evidence) -> Citation:
    hit = ev.hit
    return Citation(
        n=ev.n, item_id=hit.item_id, citation=hit.citation, locator=hit.locator, source=hit.source_uri
    )
