"""The LangChain retriever adapter inside LCEL chains with fake chat models from langchain_core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from pipelines.engine import Engine
from pipelines.langchain import MmragRetriever, format_docs, hit_to_document
from retriever.types import Hit, Locator, Modality


@pytest.fixture()
def hits(hit_at) -> list[Hit]:
    return [
        hit_at(
            7,
            Locator("/docs/multi_page.pdf", page=1, char_start=0, char_end=120),
            Modality.PDF,
            "chunk",
            score=0.033,
            scores={"text": 0.61, "bm25": 7.2},
            ranks={"text": 1, "bm25": 1},
            text="Patented in 1868 by Christopher Latham Sholes, the typewriter revolutionized communication.",
        ),
        hit_at(
            9,
            Locator("/photos/typewriter.jpg"),
            Modality.IMAGE,
            "photo",
            score=0.031,
            scores={"clip_text": 0.29},
            ranks={"clip_text": 1},
            thumbnail="/store/thumbs/9.jpg",
            image="/photos/typewriter.jpg",
            metadata={"caption": "An old black typewriter on a desk"},
        ),
        hit_at(
            12,
            Locator("/media/talk.mp4", t=83.0),
            Modality.VIDEO,
            "keyframe",
            score=0.030,
            scores={"text": 0.44},
            ranks={"text": 2},
            thumbnail="/store/thumbs/12.jpg",
            image="/store/frames/12.jpg",
        ),
    ]


def test_retriever_returns_documents_with_metadata(fake_searcher, hits):
    searcher = fake_searcher(hits)
    retriever = MmragRetriever(searcher=searcher, k=3, modalities=["pdf", "image"], where={"kind": "chunk"})
    docs = retriever.invoke("who patented the typewriter")
    assert searcher.calls == [
        {
            "text": "who patented the typewriter",
            "k": 3,
            "modalities": ["pdf", "image"],
            "where": {"kind": "chunk"},
        }
    ]
    assert [type(d) for d in docs] == [Document] * 3
    text, photo, frame = docs
    assert text.page_content.startswith("Patented in 1868")
    assert text.metadata["citation"] == "multi_page.pdf p.1"
    assert text.metadata["locator"] == {
        "uri": "/docs/multi_page.pdf",
        "page": 1,
        "char_start": 0,
        "char_end": 120,
    }
    assert text.metadata["modality"] == "pdf" and text.metadata["score"] == pytest.approx(0.033)
    assert text.metadata["item_id"] == 7 and text.id == "7"
    assert text.metadata["copies"] == []
    assert photo.page_content == "photo typewriter.jpg: An old black typewriter on a desk"
    assert photo.metadata["image"] == "/photos/typewriter.jpg"
    assert photo.metadata["thumbnail"] == "/store/thumbs/9.jpg"
    assert frame.page_content == "video keyframe: talk.mp4 @ 01:23"
    assert frame.metadata["locator"] == {"uri": "/media/talk.mp4", "t": 83.0}
    with pytest.raises(ValueError):
        MmragRetriever(searcher=searcher, k=0)


def test_retriever_in_an_lcel_chain_with_a_fake_chat_model(fake_searcher, hits):
    retriever = MmragRetriever(searcher=fake_searcher(hits), k=2)
    prompt = ChatPromptTemplate.from_template(
        "Answer only from the evidence and cite it as [n].\n\n{context}\n\nQuestion: {question}"
    )
    seen: list[str] = []

    def record(value):
        seen.append(value.to_string())
        return value

    model = FakeListChatModel(responses=["Christopher Latham Sholes patented it in 1868 [1]."])
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(record)
        | model
        | StrOutputParser()
    )
    out = chain.invoke("Who patented the typewriter?")
    assert out == "Christopher Latham Sholes patented it in 1868 [1]."
    assert len(seen) == 1
    assert "[1] multi_page.pdf p.1\nPatented in 1868 by Christopher Latham Sholes" in seen[0]
    assert "[2] typewriter.jpg\nphoto typewriter.jpg: An old black typewriter on a desk" in seen[0]
    assert seen[0].rstrip().endswith("Question: Who patented the typewriter?")


def test_retriever_batch_and_format_docs_numbering(fake_searcher, hits):
    retriever = MmragRetriever(searcher=fake_searcher(hits), k=3)
    batches = retriever.batch(["typewriter", "keyframe"])
    assert [len(b) for b in batches] == [3, 3]
    formatted = format_docs([hit_to_document(h) for h in hits])
    assert [line for line in formatted.splitlines() if line.startswith("[")] == [
        "[1] multi_page.pdf p.1",
        "[2] typewriter.jpg",
        "[3] talk.mp4 @ 01:23",
    ]


def test_retriever_over_a_real_store(tmp_path: Path, eval_dir: Path, text_encoder):
    transcripts = eval_dir / "audio" / "transcripts.json"

    notes = tmp_path / "notes"
    notes.mkdir()
    for name, entry in list(json.loads(transcripts.read_text()).items())[:6]:
        (notes / f"{Path(name).stem}.txt").write_text(entry["text"] + "\n", encoding="utf-8")
    with Engine.open(tmp_path / "store", overrides={"models.clip": "none"}, text=text_encoder) as eng:
        report = eng.ingest([str(notes)])
        assert report.failed == []
        retriever = MmragRetriever(searcher=eng, k=2)
        model = FakeListChatModel(responses=["ok"])
        captured: list[list[Document]] = []
        chain = (
            retriever
            | RunnableLambda(lambda docs: captured.append(docs) or format_docs(docs))
            | model
            | StrOutputParser()
        )
        assert chain.invoke("ask not what your country can do for you") == "ok"
    top = captured[0][0]
    assert top.metadata["source_name"] == "jfk.txt"
    assert "country" in top.page_content.lower()
    assert top.metadata["citation"].startswith("jfk.txt")
