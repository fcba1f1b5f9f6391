"""LangChain integration: the store as a ``BaseRetriever`` returning ``Document``s.

Example (an LCEL chain that answers from the store with citations)::

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_openai import ChatOpenAI

    from pipelines.engine import Engine
    from pipelines.langchain import MmragRetriever, format_docs

    engine = Engine.open("my-store")
    retriever = MmragRetriever(searcher=engine, k=6, modalities=["pdf", "audio"])
    prompt = ChatPromptTemplate.from_template(
        "Answer only from the evidence and cite it as [n].\\n\\n{context}\\n\\nQuestion: {question}"
    )
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | ChatOpenAI(model="gpt-4o-mini")
        | StrOutputParser()
    )
    print(chain.invoke("Who patented the typewriter?"))

Each document's metadata carries the evidence's address (``citation``, ``locator``)
so a chain can show where an answer came from; images come back as a caption or
their citation, with ``image``/``thumbnail`` paths for a multimodal prompt.
``pipelines.rag.answer.ask`` is the checked path (citations verified after generation);
this adapter is for composing your own chains.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from retriever.types import Hit

__all__ = ["ChatLlamaCpp", "MmragRetriever", "format_docs", "hit_to_document"]

_CAPTION_KEYS = ("caption", "alt", "title", "description")


def hit_to_document(hit: Hit) -> Document:
    """One search hit as a LangChain ``Document`` (text, or a caption for images)."""
    text = (hit.text or "").strip()
    if not text:
        caption = next((str(hit.metadata[k]) for k in _CAPTION_KEYS if hit.metadata.get(k)), None)
        text = (
            f"{hit.kind} {hit.citation}: {caption}"
            if caption
            else f"{hit.modality.value} {hit.kind}: {hit.citation}"
        )
    metadata = {
        "item_id": hit.item_id,
        "modality": hit.modality.value,
        "kind": hit.kind,
        "source": hit.source_uri,
        "source_name": hit.source_name,
        "citation": hit.citation,
        "locator": hit.locator.to_dict(),
        "score": hit.score,
        "scores": dict(hit.scores),
        "thumbnail": hit.thumbnail_path,
        "image": hit.image_path,
        "copies": list(hit.copies),
    }
    return Document(page_content=text, metadata=metadata, id=str(hit.item_id))


def format_docs(docs: Sequence[Document]) -> str:
    """Number documents ``[1]..[n]`` with their citations, for a prompt's context."""
    blocks = []
    for n, doc in enumerate(docs, start=1):
        cite = doc.metadata.get("citation", "")
        blocks.append(f"[{n}] {cite}\n{doc.page_content}".strip())
    return "\n\n".join(blocks)


class MmragRetriever(BaseRetriever):
    """Search an mmrag store (anything with ``search(text=..., k=..., ...)``, e.g. ``Engine``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    searcher: Any
    k: int = Field(default=8, ge=1)
    where: Any = None
    modalities: list[str] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.searcher.search(text=query, k=self.k, modalities=self.modalities, where=self.where)
        return [hit_to_document(h) for h in hits]


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class ChatLlamaCpp(BaseChatModel):
    """A text-only LangChain chat model over llama-cpp-python (e.g. the SmolLM2-135M GGUF).

    The weights load on the first call; calls are serialised (a ``Llama`` is not thread-safe).
    """

    model_path: str
    n_ctx: int = 8192
    n_threads: int | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    _llm: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    def _client(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            from retriever.encoders.device import cpu_count

            threads = self.n_threads or cpu_count()
            self._llm = Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=threads, verbose=False)
        return self._llm

    def _request(self, messages: list[BaseMessage], stop: list[str] | None) -> dict[str, Any]:
        converted = [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]
        return {
            "messages": converted,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": stop,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            out = self._client().create_chat_completion(**self._request(messages, stop))
        usage = out.get("usage") or {}
        message = AIMessage(
            content=out["choices"][0]["message"].get("content") or "",
            usage_metadata={
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", 0)),
                "total_tokens": int(usage.get("total_tokens", 0)),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        with self._lock:
            for event in self._client().create_chat_completion(**self._request(messages, stop), stream=True):
                choices = event.get("choices") or [{}]
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                    if run_manager is not None:
                        run_manager.on_llm_new_token(piece, chunk=chunk)
                    yield chunk
