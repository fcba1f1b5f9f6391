"""The three systems ``bench/peers.py`` compares, behind one small interface.

Each loads the same weights through its own extension point: the packaged MiniLM and one random
open_clip ViT-B-32 (``clip_weights``). LlamaIndex and txtai are imported only when used, so mmrag
alone runs without the ``peers`` extra.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SYSTEMS = ("mmrag", "llamaindex", "txtai")
CLIP_MODEL = "ViT-B-32"


def clip_weights(cache: Path) -> Path:
    """A randomly initialised ViT-B-32 (seed 0), saved once as safetensors: real compute, no meaning."""
    path = cache / f"{CLIP_MODEL}-random-seed0.safetensors"
    if not path.is_file():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        net = open_clip.create_model(CLIP_MODEL, pretrained=None)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def minilm_path() -> Path:
    from retriever.encoders.text import packaged_minilm_path

    return packaged_minilm_path()


def make_system(spec: str, clip: Path) -> System:
    """``mmrag``, ``mmrag:KEY=VALUE;KEY=VALUE`` (settings), ``llamaindex`` or ``txtai``."""
    name, _, settings = spec.partition(":")
    cls = {"mmrag": Mmrag, "llamaindex": LlamaIndex, "txtai": Txtai}[name]
    return cls(spec, clip, dict(kv.split("=", 1) for kv in settings.split(";") if kv))


class Clip:
    """open_clip ViT-B-32 in float32 with the shared weights, as the peers run it (one model, eager)."""

    def __init__(self, path: Path) -> None:
        import open_clip
        from safetensors.torch import load_file

        self.model = open_clip.create_model(CLIP_MODEL, pretrained=None)
        self.model.load_state_dict(load_file(str(path)))
        self.model.eval()
        self.preprocess = open_clip.image_transform(self.model.visual.image_size, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(CLIP_MODEL)

    def images(self, paths: list[str]) -> np.ndarray:
        import torch
        from PIL import Image

        batch = []
        for p in paths:
            with Image.open(p) as im:
                batch.append(self.preprocess(im.convert("RGB")))
        with torch.inference_mode():
            out = self.model.encode_image(torch.stack(batch))
        return torch.nn.functional.normalize(out, dim=-1).numpy()

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.encode_text(self.tokenizer(texts))
        return torch.nn.functional.normalize(out, dim=-1).numpy()


class System:
    """What the bench does with a system; ``key`` names it in results, ``label`` in the table."""

    kind = ""

    def __init__(self, spec: str, clip: Path, settings: dict[str, str]) -> None:
        self.spec, self.clip_path, self.settings = spec, clip, settings
        self.key = spec
        self.label = spec
        self.text_store: Path | None = None

    def load_models(self) -> None: ...
    def build_images(self, folder: Path, work: Path) -> None: ...
    def image_query(self, text: str, k: int) -> list[str]: ...
    def build_text(self, ds: Any, work: Path) -> None: ...
    def text_query(self, text: str, k: int) -> list[str]: ...
    def vectors(self) -> int: ...
    def save_text(self, folder: Path) -> None: ...
    def open_and_search(self, store: Path, query: str) -> list[str]: ...
    def describe(self) -> str: ...


def _dedupe(ids: list[str], n: int = 100) -> list[str]:
    return list(dict.fromkeys(ids))[:n]


def _body(title: str, text: str) -> str:
    """A document as mmrag's BEIR harness writes it (title, blank line, text)."""
    return f"{title.strip()}\n\n{text.strip()}\n" if title.strip() else f"{text.strip()}\n"


class Mmrag(System):
    kind = "mmrag"

    def __init__(self, spec: str, clip: Path, settings: dict[str, str]) -> None:
        super().__init__(spec, clip, settings)
        self.overrides: dict[str, Any] = {"models.clip": f"{CLIP_MODEL}@{clip}", **settings}
        self.label = "mmrag" + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
        self.engines: dict[str, Any] = {}
        self.file_docs: dict[str, str] = {}

    def load_models(self) -> None:
        from retriever.config import Config
        from retriever.encoders import build_clip_encoder, build_text_encoder

        models = Config.load(None, self.overrides, env={}).models
        self.clip, self.text = build_clip_encoder(models), build_text_encoder(models)
        assert self.clip is not None
        self.clip.encode_texts(["load the weights"])
        self.text.encode_texts(["load the weights"])
        self.text.encode_texts(["load the weights", "batch precision too"])
        self.clip.encode_texts(["load the weights", "batch precision too"])

    def _open(self, what: str, root: Path) -> Any:
        from pipelines.engine import Engine

        old = self.engines.pop(what, None)
        if old is not None:
            old.close()
        self.engines[what] = Engine.open(root, overrides=self.overrides, clip=self.clip, text=self.text)
        return self.engines[what]

    def build_images(self, folder: Path, work: Path) -> None:
        report = self._open("images", work / "store").ingest([folder])
        assert not report.failed, report.failed[:3]

    def image_query(self, text: str, k: int) -> list[str]:
        return [h.source_uri for h in self.engines["images"].search(text=text, k=k)]

    def build_text(self, ds: Any, work: Path) -> None:
        from pipelines.eval.retrieval import write_corpus

        self.file_docs = write_corpus(ds, work / "corpus")
        eng = self._open("text", work / "store")
        report = eng.ingest([work / "corpus"])
        assert not report.failed, report.failed[:3]
        self.text_store = work / "store"

    def text_query(self, text: str, k: int) -> list[str]:
        hits = self.engines["text"].search(text=text, k=k)
        return _dedupe([self.file_docs.get(h.source_uri, h.source_uri) for h in hits])

    def vectors(self) -> int:
        return int(self.engines["text"].stats()["spaces"]["text"]["vectors"])

    def save_text(self, folder: Path) -> None:
        for eng in self.engines.values():
            eng.close()  # the child opens the store as a fresh process would
        self.engines = {}

    def open_and_search(self, store: Path, query: str) -> list[str]:
        from pipelines.engine import Engine

        with Engine.open(store, overrides=self.overrides, create=False) as eng:
            return [h.source_uri for h in eng.search(text=query, k=10)]

    def describe(self) -> str:
        from retriever.config import Config

        cfg = Config.load(None, self.overrides, env={})
        ing, s = cfg.ingest, cfg.search
        return (f"chunks {ing.chunk_chars}/{ing.chunk_overlap} chars, clip_texts={cfg.models.clip_texts}, "
                f"fusion {s.fusion} ({s.score_normalisation if s.fusion == 'score' else f'rrf_k {s.rrf_k}'}), "
                f"depth {s.depth}, precision {cfg.models.precision}")


class LlamaIndex(System):
    kind = "llamaindex"

    def __init__(self, spec: str, clip: Path, settings: dict[str, str]) -> None:
        super().__init__(spec, clip, settings)
        self.label = "LlamaIndex"
        self.mode = settings.get("mode", "relative_score")

    def load_models(self) -> None:
        from llama_index.core import Settings
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        Settings.llm = None
        self.embed = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
        self.embed.get_text_embedding("load the weights")
        self.mm = _llama_clip_embedding(Clip(self.clip_path))
        self.mm.get_text_embedding("load the weights")

    def build_images(self, folder: Path, work: Path) -> None:
        from llama_index.core import StorageContext
        from llama_index.core.indices import MultiModalVectorStoreIndex
        from llama_index.core.schema import ImageDocument
        from llama_index.core.vector_stores import SimpleVectorStore

        docs = [ImageDocument(image_path=str(p), metadata={"file_path": str(p)}) for p in sorted(folder.glob("*.jpg"))]
        storage = StorageContext.from_defaults(vector_store=SimpleVectorStore(), image_store=SimpleVectorStore())
        self.image_index = MultiModalVectorStoreIndex.from_documents(
            docs, storage_context=storage, embed_model=self.embed, image_embed_model=self.mm)

    def image_query(self, text: str, k: int) -> list[str]:
        retriever = self.image_index.as_retriever(image_similarity_top_k=k)
        return [n.node.metadata.get("file_path", n.node.node_id) for n in retriever.text_to_image_retrieve(text)]

    def build_text(self, ds: Any, work: Path) -> None:
        from llama_index.core import Document, VectorStoreIndex

        docs = [Document(text=_body(t, x), doc_id=d, metadata={"doc": d}) for d, (t, x) in ds.corpus.items()]
        self.index = VectorStoreIndex.from_documents(docs, embed_model=self.embed)
        self.bm25 = _bm25(self.index.docstore)
        self.retrievers: dict[int, Any] = {}

    def _fusion(self, k: int) -> Any:
        if k not in self.retrievers:
            self.retrievers[k] = _llama_fusion(self.index, self.bm25, k, self.mode)
        return self.retrievers[k]

    def text_query(self, text: str, k: int) -> list[str]:
        self.bm25.similarity_top_k = min(k, len(self.index.docstore.docs))  # one BM25 index for every k
        return _dedupe([n.node.metadata["doc"] for n in self._fusion(k).retrieve(text)])

    def vectors(self) -> int:
        return len(self.index.index_struct.nodes_dict)

    def save_text(self, folder: Path) -> None:
        self.index.storage_context.persist(persist_dir=str(folder))
        self.bm25.persist(str(folder / "bm25"))
        self.text_store = folder

    def open_and_search(self, store: Path, query: str) -> list[str]:
        from llama_index.core import Settings, StorageContext, load_index_from_storage
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.retrievers.bm25 import BM25Retriever

        Settings.llm = None
        embed = HuggingFaceEmbedding(model_name=str(minilm_path()), device="cpu")
        index = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(store)), embed_model=embed)
        bm25 = BM25Retriever.from_persist_dir(str(store / "bm25"))
        return [n.node.metadata["doc"] for n in _llama_fusion(index, bm25, 10, self.mode).retrieve(query)]

    def describe(self) -> str:
        return f"SentenceSplitter defaults, HuggingFaceEmbedding + BM25Retriever, QueryFusionRetriever({self.mode})"


def _bm25(docstore: Any, k: int = 10) -> Any:
    from llama_index.retrievers.bm25 import BM25Retriever

    return BM25Retriever.from_defaults(docstore=docstore, similarity_top_k=k)


def _llama_fusion(index: Any, bm25: Any, k: int, mode: str) -> Any:
    from llama_index.core.retrievers import QueryFusionRetriever

    bm25.similarity_top_k = min(k, bm25.similarity_top_k)
    return QueryFusionRetriever([index.as_retriever(similarity_top_k=k), bm25], similarity_top_k=k, num_queries=1,
                                mode=mode, use_async=False)


def _llama_clip_embedding(clip: Clip) -> Any:
    """A LlamaIndex ``MultiModalEmbedding`` over the shared CLIP (its extension point for image models)."""
    from llama_index.core.embeddings import MultiModalEmbedding

    class SharedClip(MultiModalEmbedding):
        def _get_text_embedding(self, text: str) -> list[float]:
            return clip.texts([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return clip.texts(texts).tolist()

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._get_text_embedding(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_text_embedding(query)

        def _get_image_embedding(self, img_file_path: Any) -> list[float]:
            return clip.images([str(img_file_path)])[0].tolist()

        def _get_image_embeddings(self, img_file_paths: list[Any]) -> list[list[float]]:
            return clip.images([str(p) for p in img_file_paths]).tolist()

        async def _aget_image_embedding(self, img_file_path: Any) -> list[float]:
            return self._get_image_embedding(img_file_path)

    return SharedClip(model_name=f"{CLIP_MODEL}-shared", embed_batch_size=32)


class Txtai(System):
    kind = "txtai"

    def __init__(self, spec: str, clip: Path, settings: dict[str, str]) -> None:
        super().__init__(spec, clip, settings)
        self.label = "txtai"

    def _config(self) -> dict[str, Any]:
        return {"path": str(minilm_path()), "method": "sentence-transformers", "hybrid": True, "content": True}

    def load_models(self) -> None:
        from txtai import Embeddings

        self.clip = Clip(self.clip_path)
        warm = Embeddings(self._config())
        warm.index([("w", "load the weights", None)])

    def build_images(self, folder: Path, work: Path) -> None:
        from txtai import Embeddings

        clip = self.clip

        def transform(data: list[Any]) -> np.ndarray:
            # txtai's "external" vectors: one function for documents (image paths) and queries (text)
            paths = [x for x in data if isinstance(x, str) and x.endswith(".jpg") and Path(x).is_file()]
            if len(paths) == len(data):
                return clip.images(paths)
            return clip.texts([str(x) for x in data])

        self.images = Embeddings({"method": "external", "transform": transform, "content": False, "batch": 32})
        self.images.index([(str(p), str(p), None) for p in sorted(folder.glob("*.jpg"))])

    def image_query(self, text: str, k: int) -> list[str]:
        return [str(r[0]) for r in self.images.search(text, k)]

    def build_text(self, ds: Any, work: Path) -> None:
        from txtai import Embeddings

        self.embeddings = Embeddings(self._config())
        self.embeddings.index([(d, _body(t, x), None) for d, (t, x) in ds.corpus.items()])

    def text_query(self, text: str, k: int) -> list[str]:
        return _dedupe([r["id"] for r in self.embeddings.search(text, k)])

    def vectors(self) -> int:
        return int(self.embeddings.count())

    def save_text(self, folder: Path) -> None:
        self.embeddings.save(str(folder))
        self.text_store = folder

    def open_and_search(self, store: Path, query: str) -> list[str]:
        from txtai import Embeddings

        emb = Embeddings()
        emb.load(str(store))
        return [r["id"] for r in emb.search(query, 10)]

    def describe(self) -> str:
        return "Embeddings(hybrid=True, content=True), txtai's default fusion"


def depth_for(vectors: int, documents: int, want: int = 100) -> int:
    """Items to ask for so that about ``want`` distinct documents come back."""
    return max(want, math.ceil(want * vectors / max(1, documents)))
